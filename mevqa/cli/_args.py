"""Flags generated from the settings dataclasses, and the one YAML + flags merge every command uses.

`add_settings(parser, EvalConfig)` gives one flag per field, recursing into the nested specs: the name
from the field (`max_new_tokens` -> `--max-new-tokens`, with the spec's prefix: `LoraSpec.r` ->
`--lora-r`), the type from its annotation, choices and help from the dataclass (the `Attributes:`
docstring). A bool that defaults to true becomes `--no-<name>`. Flags default to "not given", so
`--config` YAML values stand unless a flag overrides them.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

from mevqa.config import attribute_docs, expand, from_dict, hints, load_yaml, merge

DEST = "setting:"  # argparse dest prefix marking a generated flag; the rest is the dotted field path
T = TypeVar("T")


def _base(t: Any) -> Any:
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(t) and len(args) == 1 else t


def _default_text(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else None
    if default in (None, "", (), False) or f.metadata.get("required"):
        return ""
    return f" (default: {default})" if not isinstance(default, bool) else ""


def _flag(parser: argparse._ActionsContainer, cls: type, f: dataclasses.Field, path: str) -> None:
    t = _base(hints(cls)[f.name])
    name = (getattr(cls, "FLAG_PREFIX", "") + f.name).replace("_", "-")
    kw: dict[str, Any] = {"dest": DEST + path, "default": argparse.SUPPRESS}
    kw["help"] = attribute_docs(cls).get(f.name, "") + _default_text(f)
    if t is bool:
        if f.default is True:
            kw["help"] = "turn off: " + kw["help"]
            parser.add_argument(f"--no-{name}", action="store_false", **kw)
        else:
            parser.add_argument(f"--{name}", *f.metadata.get("aliases", ()), action="store_true", **kw)
        return
    if typing.get_origin(t) is tuple:
        kw.update(action="append", metavar=f.name.upper().rstrip("S"))
    else:
        kw.update(type=t, metavar=f.name.upper())
    if "choices" in f.metadata:
        kw.update(choices=f.metadata["choices"], metavar=None)
    parser.add_argument(f"--{name}", *f.metadata.get("aliases", ()), **kw)


def add_settings(
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), section: str = ""
) -> None:
    """Flags for every field of `cls` and of the specs it holds, except the dotted paths in `skip`."""
    group = parser.add_argument_group(
        f"{section.rstrip('.') or cls.__name__} settings", (cls.__doc__ or "").split("\n")[0]
    )
    for f in dataclasses.fields(cls):
        path = section + f.name
        if path in skip:
            continue
        t = hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            add_settings(parser, t, skip, path + ".")
        else:
            _flag(group, cls, f, path)


def given(ns: argparse.Namespace) -> dict[str, Any]:
    """The generated flags given on the command line, as a nested dict."""
    out: dict[str, Any] = {}
    for key, value in vars(ns).items():
        if key.startswith(DEST):
            *sections, name = key[len(DEST) :].split(".")
            node = out
            for s in sections:
                node = node.setdefault(s, {})
            node[name] = value
    return out


def load_settings(ns: argparse.Namespace, cls: type[T], command: str, defaults: Any = None) -> T:
    """`cls` from `defaults(values)` < the --config YAML < the flags given; errors name the source."""
    config = getattr(ns, "config", None)
    values = merge(expand(cls, load_yaml(config)) if config else {}, expand(cls, given(ns)))
    if defaults:
        values = merge(expand(cls, defaults(values)), values)
    return from_dict(cls, values, config or f"mevqa {command}")


def adapter_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The frame settings and prompt an adapter recorded (`mevqa.yaml`): the defaults of the commands that
    answer with it. A served adapter NAME is traced to its folder through the server's model list."""
    import os

    from mevqa.models.adapters import recorded_settings

    model, server = values.get("model", {}), values.get("server", {})
    adapter = model.get("adapter")
    if adapter and model.get("backend") == "openai" and server.get("base_url") and not os.path.isdir(adapter):
        from mevqa.backends.openai_server import served_folder

        api_key = server.get("api_key") or os.environ.get("MEVQA_API_KEY")
        adapter = served_folder(server["base_url"][0], adapter, api_key) or adapter
    return recorded_settings(adapter)
