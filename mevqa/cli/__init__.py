"""`mevqa <command>`: parse, call, print. Each command's parser sits next to its handler in this package;
the work lives in the modules they call."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import warnings

from mevqa import __version__, process
from mevqa.cli import app, ask, bench, cv, data, eval, models, serve, spot, train
from mevqa.cli._args import with_flag
from mevqa.errors import MevqaError

COMMANDS = (ask, data, eval, spot, train, cv, models, serve, bench, app)


def one_line(text: str, keep: str = "") -> str:
    """`text` with its control characters escaped: a path holding a newline or an escape sequence split the
    error line in two or reached the terminal raw. `keep`: the ones left as they are."""
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def for_terminal(text: str) -> str:
    """A model's text as printed by ask and chat: its lines and tabs kept, any other control character
    (an escape sequence a model or a served endpoint produced) escaped."""
    return one_line(text, keep="\n\t")


class Parser(argparse.ArgumentParser):
    """A usage mistake is one line naming the command, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # -v works before or after the command (`mevqa -v eval ...` and `mevqa eval ... -v`)
    common = Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log progress and library messages",
    )
    parser = Parser(prog="mevqa", description="Micro-expression visual question answering.", parents=[common])
    parser.add_argument("--version", action="version", version=f"mevqa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parsers(sub, common)
    return parser


def _quiet_libraries() -> None:
    """Library warnings are hidden (shown with -v); mevqa's own warnings go through logging and show."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.simplefilter("ignore")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "no optional CPU kernels" on every import
    if "transformers" not in sys.modules:
        # read when transformers is first imported: a command that never loads a model (data, score,
        # spot) is spared its ~1 s import just to quiet it
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return
    from transformers.utils import logging as hf_logging  # an in-process caller imported it already

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    console = argv is None  # the command line's call, not an in-process caller's: the process exits next
    if console:
        process.defer_collection()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # point at the help that lists the command's flags, not at the list of commands
        parser.prog = f"mevqa {args.command}"
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    verbose = getattr(args, "verbose", False)
    level = logging.INFO if verbose else logging.WARNING
    # force: in-process callers (tests, the demo) call main() repeatedly with other streams
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    # scoped to this command: in-process callers (tests, the demo) keep library warnings of their own
    with warnings.catch_warnings():
        if verbose:
            logging.captureWarnings(True)
        else:
            _quiet_libraries()
        code = _run(args, freeze=console)
    return process.exit_now(code) if console else code


def _run(args: argparse.Namespace, freeze: bool) -> int:
    try:
        return args.func(args)
    except MevqaError as e:
        print(f"error: {one_line(with_flag(str(e), getattr(args, 'settings_class', None)))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mevqa ... | head`: the reader left; say nothing more, as `cat` would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if freeze:  # the command line's call: the process exits next (the usual way, when exit_now cannot)
            # Python's last garbage collection walks every object torch, transformers and a loaded model
            # made (~1.5 s after the work is done, measured on a tiny model); frozen objects are skipped,
            # and the process's memory goes back to the system with it all the same
            gc.freeze()
