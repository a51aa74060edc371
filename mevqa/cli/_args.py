"""Flags generated from the settings dataclasses, and the one YAML + flags merge every command uses.

`add_settings(parser, EvalConfig)` gives one flag per field, recursing into the nested specs: the name
from the field (`max_new_tokens` -> `--max-new-tokens`, with the spec's prefix: `LoraSpec.r` ->
`--lora-r`), the type and choices from its annotation (`Literal[...]`), the help from the dataclass (the
`Attributes:` docstrings). A bool that defaults to true becomes `--no-<name>`. A job's `PACKED` sections
give flags only to the fields they name; the rest of such a section is one `--<section>-args k=v,...`
flag. Flags default to "not given", so `--config` YAML values stand unless a flag overrides them.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any, Literal, TypeVar

from mevqa.config import attribute_docs, expand, from_dict, hints, load_yaml, merge
from mevqa.errors import InputError

DEST = "setting:"  # argparse dest prefix marking a generated flag; the rest is the dotted field path
# short metavars keep a flag and its help on one line of --help
METAVARS = {int: "N", float: "X", "data": "FILE", "eval_data": "FILE", "spot_recipe": "FILE", "out": "DIR"}
T = TypeVar("T")


def _base(t: Any) -> Any:
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(t) and len(args) == 1 else t


def _field_default(f: dataclasses.Field, holder: Any = None) -> Any:
    """`f`'s default: its value in `holder` (the default instance of the section that holds it: spot's
    face section crops by default where FaceConfig's own default is none), else its own."""
    if holder is not None:
        return getattr(holder, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _default_text(f: dataclasses.Field, default: Any) -> str:
    if default in (None, "", (), False) or f.metadata.get("required"):
        return ""
    return f" (default: {default})" if not isinstance(default, bool) else ""


def flag_name(cls: type, name: str) -> str:
    return "--" + (getattr(cls, "FLAG_PREFIX", "") + name).replace("_", "-")


def _flag(
    parser: argparse._ActionsContainer, cls: type, f: dataclasses.Field, path: str, default: Any
) -> None:
    t = _base(hints(cls)[f.name])
    name = flag_name(cls, f.name)
    kw: dict[str, Any] = {"dest": DEST + path, "default": argparse.SUPPRESS}
    kw["help"] = attribute_docs(cls).get(f.name, "") + _default_text(f, default)
    if t is bool:
        if f.default is True:  # the flag's shape is the class's, whichever section holds it
            kw["help"] = "turn off: " + kw["help"]
            parser.add_argument("--no-" + name[2:], action="store_false", **kw)
        else:
            parser.add_argument(name, *f.metadata.get("aliases", ()), action="store_true", **kw)
        return
    if typing.get_origin(t) is tuple:
        kw.update(action="append", metavar=f.name.upper().rstrip("S"))
    elif typing.get_origin(t) is Literal:
        kw.update(choices=typing.get_args(t))
    else:
        kw.update(type=t, metavar=METAVARS.get(t, METAVARS.get(f.name, f.name.upper())))
    parser.add_argument(name, *f.metadata.get("aliases", ()), **kw)


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    section: str = "",
    packed: dict[str, tuple[str, ...]] | None = None,
    holder: Any = None,
) -> None:
    """Flags for every field of `cls` and of the specs it holds, except the dotted paths in `skip`; the
    sections in `packed` (default: `cls.PACKED`) as described in the module docstring. `holder`: the
    section's default instance, whose values the help shows as defaults."""
    packed = getattr(cls, "PACKED", {}) if packed is None else packed
    if not section:
        parser.set_defaults(settings_class=cls)  # main() names flags in this command's errors
    group = parser.add_argument_group(f"{section.rstrip('.') or cls.__name__} settings")
    keep = packed.get(section.rstrip("."))
    if keep is not None:
        _pairs_flag(group, cls, section.rstrip("."), keep)
    for f in dataclasses.fields(cls):
        path = section + f.name
        if path in skip or (keep is not None and f.name not in keep):
            continue
        t, default = hints(cls)[f.name], _field_default(f, holder)
        if dataclasses.is_dataclass(t):
            add_settings(parser, t, skip, path + ".", packed, default)
        else:
            _flag(group, cls, f, path, default)


def _pairs_flag(group: argparse._ActionsContainer, cls: type, path: str, keep: tuple[str, ...]) -> None:
    names = [f.name for f in dataclasses.fields(cls) if f.name not in keep]
    group.add_argument(
        f"--{path.split('.')[-1]}-args",
        dest=DEST + path,
        action="append",
        type=_pairs_parser(cls, names),
        default=argparse.SUPPRESS,
        metavar="K=V,...",
        help=f"more {path} settings (or in --config under {path}:): {', '.join(names)}",
    )


def _pairs_parser(cls: type, names: list[str]) -> Any:
    """`k=v,k=v` -> a dict of typed values for the fields `names` of `cls` (argparse's `type=`)."""

    def parse(text: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pair in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in names:
                raise argparse.ArgumentTypeError(f"{pair!r} — give k=v pairs, k one of: {', '.join(names)}")
            out[key] = _typed(_base(hints(cls)[key]), value.strip(), key)
        return out

    return parse


def _typed(t: Any, value: str, key: str) -> Any:
    if value.lower() in ("none", "null"):
        return None
    if t is bool:
        if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise argparse.ArgumentTypeError(f"{key}={value} — expected true or false")
        return value.lower() in ("true", "yes", "1")
    if typing.get_origin(t) is tuple:
        return tuple(value.split(";"))
    if t in (int, float):
        try:
            return t(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}={value} — expected {t.__name__}") from None
    return value


def given(ns: argparse.Namespace) -> dict[str, Any]:
    """The generated flags given on the command line, as a nested dict."""
    out: dict[str, Any] = {}
    for key, value in vars(ns).items():
        if not key.startswith(DEST):
            continue
        path = key[len(DEST) :].split(".")
        if isinstance(value, list) and value and isinstance(value[0], dict):  # a --<section>-args flag
            node = out
            for s in path:
                node = node.setdefault(s, {})
            for pairs in value:
                node.update(pairs)
            continue
        node = out
        for s in path[:-1]:
            node = node.setdefault(s, {})
        node[path[-1]] = value
    return out


def load_settings(
    ns: argparse.Namespace, cls: type[T], command: str, defaults: Any = None, nest: Any = None
) -> T:
    """`cls` from `defaults(values)` < the --config YAML (reshaped by `nest`) < the flags given; errors
    name the source, and the flag where a flag sets the setting."""
    config = getattr(ns, "config", None)
    yaml_values = load_yaml(config) if config else {}
    yaml_values = nest(yaml_values) if nest else yaml_values
    values = merge(expand(cls, yaml_values), expand(cls, given(ns)))
    if defaults:
        values = merge(expand(cls, defaults(values)), values)
    try:
        return from_dict(cls, values, config or f"mevqa {command}")
    except InputError as e:
        raise InputError(with_flag(str(e), cls)) from None


def with_flag(message: str, cls: type | None) -> str:
    """`mevqa eval: model.model — required` -> `... model.model (--model) — required`, and each setting
    the message names in backticks gets its flag too: the library names settings (the app shows its errors
    to people who never typed a flag); the CLI adds the flags."""
    if cls is None:
        return message
    # the subject: a dotted path (`lora.r = 0`, `model.model DIR — ...`) or a name right before ` = `/` — `
    subject = r"[a-z_]+(?:\.[a-z_]+)+(?= = | — | (?!\(--)\S)|[a-z_]+(?= = | — )"
    m = re.match(rf"^((?:[^:]*: )?)({subject})", message)
    if m and (flag := _flag_of(cls, m.group(2))):
        message = f"{m.group(1)}{m.group(2)} ({flag}){message[m.end(2) :]}"

    def named(b: re.Match) -> str:
        flag = _flag_of(cls, b.group(1))
        return f"{b.group(0)} ({flag})" if flag else b.group(0)

    return re.sub(r"`([a-z_]+(?:\.[a-z_]+)*)`(?! \(--)", named, message)


def _flag_of(cls: type, path: str) -> str | None:
    owner, packed = cls, getattr(cls, "PACKED", {})
    *sections, name = path.split(".")
    if not sections and name not in hints(cls):
        return None
    for s in sections:
        owner = hints(owner).get(s)
        if owner is None or not dataclasses.is_dataclass(owner):
            return None
    section = ".".join(sections)
    if section in packed and name not in packed[section]:
        return f"--{sections[-1]}-args {name}=..."
    return flag_name(owner, name) if name in hints(owner) else None
