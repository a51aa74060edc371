"""`mevqa app` (also `python app.py`): the Gradio app, with the model settings of `mevqa ask` and `chat`."""

from __future__ import annotations

import argparse
import os
from typing import Any

from mevqa.cli._args import add_settings, load_settings
from mevqa.config import AppConfig
from mevqa.errors import InputError

# AskConfig settings about one clip given on the command line: the app's clips are uploaded, its events
# chosen on the page (a flag the app would ignore is no flag of it)
PER_CLIP = ("onset", "apex", "offset", "event")


def app_settings(a: argparse.Namespace) -> tuple[AppConfig, str | None]:
    """The model settings as ask and chat resolve them (flags over an adapter's recorded settings, a
    served adapter NAME traced to its folder), and the page's notice when no model was given: then the
    app runs on the demo's tiny model. A --base-url alone means a served model."""
    from mevqa.app import default_model
    from mevqa.backends.base import adapter_defaults

    notice: list[str] = []

    def defaults(values: dict[str, Any]) -> dict[str, Any]:
        model, served = dict(values.get("model", {})), bool(values.get("server", {}).get("base_url"))
        if served:
            model.setdefault("backend", "openai")
        if not model.get("model"):
            if served:
                raise InputError("--model — with --base-url, name the served model")
            base, adapter, what = default_model()
            model = {"model": base, "adapter": adapter} | {k: v for k, v in model.items() if k != "model"}
            notice.append(f"No checkpoint given — running on {what}.")
        return {**adapter_defaults({**values, "model": model}), "model": model}

    cfg = load_settings(a, AppConfig, "app", defaults)
    return cfg, (notice[0] if notice else None)


def cmd_app(a: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from mevqa.app import build_demo, launch, parse_auth

    auth = parse_auth(a.auth or os.environ.get("MEVQA_AUTH"))  # before a model loads
    cfg, notice = app_settings(a)
    launch(build_demo(cfg, cfg.limits, a.work_dir, notice), a.host, a.port, auth, cfg.limits)
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "app",
        usage="mevqa app [--model MODEL] [options]",
        parents=[common],
        help="the Gradio app: upload a clip, see what the model sees, chat about it",
        description="Serve the web app on HOST:PORT. It takes the model settings of `mevqa ask` (an "
        "adapter's recorded frame settings and prompt are the page's defaults); without --model it runs on "
        "the demo's tiny model.",
    )
    g = p.add_argument_group("app settings")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    g.add_argument("--port", type=int, default=7860, metavar="N", help="default: 7860")
    g.add_argument(
        "--auth", metavar="USER:PASS", help="user:pass login (default: $MEVQA_AUTH; none if unset)"
    )
    g.add_argument(
        "--work-dir",
        metavar="DIR",
        help="folder for unpacked uploads (default: a temporary one, removed on exit)",
    )
    add_settings(p, AppConfig, skip=PER_CLIP)
    p.set_defaults(func=cmd_app)
