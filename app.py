"""`python app.py [flags]` is `mevqa app [flags]`: the Gradio app (mevqa/app.py; flags: mevqa/cli/app.py)."""

import sys

from mevqa.cli import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
