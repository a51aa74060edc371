"""What the command line does to its own Python process: the garbage collector waits out start-up, and the
exit skips the interpreter's teardown. In-process callers (tests, the demo, the app) get neither: both are
started only by `mevqa.cli.main()` called as the command line.

Measured on `mevqa eval` of 150 questions with the tiny model (eval/BENCHMARKS.md §10): about 6 s from
process start to exit, of which ~1 s was the collector walking start-up's objects and ~0.25 s the teardown.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from pathlib import Path

# Importing torch and transformers and loading a model make millions of objects that live as long as the
# process. At the default thresholds (a collection every 700 new objects, a full one as the heap grows by a
# quarter) the collector walks them again and again while they are made. During start-up it runs every
# million new objects instead: never fully off, so a command that never reaches `started()` still collects.
STARTUP_THRESHOLDS = (1_000_000, 1000, 1000)
_usual: tuple[int, int, int] | None = None


def defer_collection() -> None:
    """Collect rarely until `started()` (the command line's start)."""
    global _usual
    if _usual is None:
        _usual = gc.get_threshold()
        gc.set_threshold(*STARTUP_THRESHOLDS)


def started() -> None:
    """Start-up is over (a model or backend is loaded): what it made is frozen, so no collection walks it
    again, and the usual thresholds return. Does nothing when collection was not deferred."""
    global _usual
    if _usual is not None:
        gc.freeze()
        gc.set_threshold(*_usual)
        _usual = None


def _children() -> list[str] | None:
    """This process's child processes (Linux's /proc); None where that cannot be read."""
    try:
        return [c for t in Path("/proc/self/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return None


def exit_now(code: int) -> int:
    """Exit with `code` without Python's teardown (freeing every module, tensor and model one by one, ~0.25 s
    after the work is done); the system takes the memory back at once. Only when nothing else needs the
    teardown: the atexit handlers run first (logging's flush, temporary folders' removal, multiprocessing's
    clean-up), and a process with live child processes (a vLLM engine) or threads of its own that are not
    daemons returns `code` and exits the usual way."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others or _children() != []:
        return code
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left (`| head`), a stream already closed
            pass
    os._exit(code)
