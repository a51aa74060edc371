"""Gradio demo for mevqa — built in issue 7 ("Gradio demo and LangChain agent").

Until then this entry point only says so; `mevqa ask` is the way to question a clip today.
"""

import sys

if __name__ == "__main__":
    print(
        "error: app.py — the Gradio demo is not built yet (issue 7); use `mevqa ask CLIP QUESTION --model M`",
        file=sys.stderr,
    )
    sys.exit(2)
