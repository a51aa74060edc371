"""Every command's flags: each has help, each reaches the setting it names, each setting is reachable, and a
YAML section is a mapping (`gen: 64` is an error, not whichever field comes first)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing

import pytest
from helpers import cli

from mevqa.cli import build_parser
from mevqa.cli._args import DEST, given, load_settings
from mevqa.cli.app import PER_CLIP
from mevqa.config import (
    CV_PER_FOLD,
    AppConfig,
    AskConfig,
    CVConfig,
    DataSpec,
    EvalConfig,
    SpotJob,
    TrainConfig,
    VLLMSpec,
    from_dict,
    hints,
)
from mevqa.errors import InputError

REQUIRED = ["--data", "d", "--out", "o", "--model", "m"]
# command -> (settings class, the arguments it needs besides the flag under test)
SETTINGS: dict[str, tuple[type, list[str]]] = {
    "ask": (AskConfig, ["c", "q", "--model", "m"]),
    "chat": (AskConfig, ["c", "--model", "m"]),
    "app": (AppConfig, ["--model", "m"]),
    "eval": (EvalConfig, REQUIRED),
    "train": (TrainConfig, REQUIRED),
    "cv": (CVConfig, REQUIRED),
    "spot": (SpotJob, ["--out", "o"]),
    "serve": (VLLMSpec, ["--model", "m"]),
    "data validate": (DataSpec, ["f.jsonl"]),
}


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every command and subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


ALL = [p for p, _ in parsers(build_parser())]


def blank_help_lines(text: str) -> list[str]:
    """Option or argument lines of `--help` with no help: no text after the name and no indented text
    below it. (argparse puts 2+ spaces between a name and its help; names never hold two spaces.)"""
    lines = text.splitlines()
    bad = []
    for i, line in enumerate(lines):
        if not re.match(r"^  \S", line) or re.search(r"\S\s{2,}\S", line):
            continue
        below = lines[i + 1] if i + 1 < len(lines) else ""
        if not re.match(r"^\s{3,}\S", below):  # a continuation, not the next option (2 spaces)
            bad.append(line.strip())
    return bad


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) or "mevqa" for p in ALL])
def test_help_has_no_blank_line(path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    r = cli(*path, "--help")
    assert r.returncode == 0 and r.stdout, r.stderr
    assert blank_help_lines(r.stdout) == [], r.stdout


def test_every_command_with_settings_is_walked():
    """Fail closed: a new command with generated flags must join SETTINGS (and so the tests below)."""
    with_settings = {
        " ".join(p)
        for p, parser in parsers(build_parser())
        if any(a.dest.startswith(DEST) for a in parser._actions)
    }
    assert with_settings == set(SETTINGS)


def leaves(cls, prefix=""):
    for f in dataclasses.fields(cls):
        t = hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            yield from leaves(t, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def sample(t) -> tuple[str, typing.Any]:
    """A command-line value for a setting of type `t`, and the value it must arrive as."""
    base = (
        next((a for a in typing.get_args(t) if a is not type(None)), t)
        if type(None) in typing.get_args(t)
        else t
    )
    if typing.get_origin(base) is typing.Literal:
        return str(typing.get_args(base)[-1]), typing.get_args(base)[-1]
    if typing.get_origin(base) is tuple:
        return "x", ("x",)
    return {int: ("3", 3), float: ("0.5", 0.5), str: ("{dataset}", "{dataset}"), bool: ("true", True)}[base]


def settings_of(command: str, argv: list[str]):
    cls, need = SETTINGS[command]
    ns = build_parser().parse_args([*command.split(), *need, *argv])
    if command == "serve":  # serve's flags are VLLMSpec's, under vllm.
        return from_dict(VLLMSpec, given(ns).get("vllm", {}), "mevqa serve")
    if command == "data validate":
        return load_settings(ns, cls, command, lambda _: {"data": "f.jsonl"})
    return load_settings(ns, cls, command)


def at(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def flag_argv(parser: argparse.ArgumentParser, path: str, cls: type, f: dataclasses.Field):
    """The argv that sets `path` (its own flag, or k=v in its section's --X-args), or None."""
    t = hints(cls)[f.name]
    for a in parser._actions:
        if a.dest == DEST + path:
            if a.nargs == 0:
                return [a.option_strings[0]], a.const
            text, want = sample(t)
            return [a.option_strings[0], text], want
    section, name = path.rsplit(".", 1) if "." in path else ("", path)
    for a in parser._actions:
        if a.dest == DEST + section and a.type is not None:  # a --<section>-args flag
            text, want = sample(t)
            return [a.option_strings[0], f"{name}={text}"], want
    return None


def owner(cls, path):
    *sections, _ = path.split(".")
    for s in sections:
        cls = hints(cls)[s]
    return cls


@pytest.mark.parametrize("command", list(SETTINGS))
def test_every_flag_reaches_its_setting(command):
    """Each setting is set by its flag (or its section's --X-args), and arrives with the value given."""
    cls, _ = SETTINGS[command]
    sub = dict(parsers(build_parser()))[tuple(command.split())]
    prefix = "vllm." if command == "serve" else ""
    skipped = {f"train.{k}" for k in CV_PER_FOLD} if command == "cv" else set()
    skipped |= set(PER_CLIP) if command == "app" else set()  # the app's clips are uploads
    for path, f in leaves(cls):
        if command == "data validate" and path == "data":
            continue  # the positional FILE
        found = flag_argv(sub, prefix + path, owner(cls, path), f)
        if path in skipped:
            assert found is None, f"{command}: {path} is decided per fold, yet has a flag"
            continue
        assert found is not None, f"{command}: no flag reaches {path}"
        argv, want = found
        try:
            cfg = settings_of(command, argv)
        except InputError as e:  # a rule refused the sample value: it reached the check, by name
            assert path.split(".")[-1] in str(e), (argv, e)
            continue
        got = at(cfg, path)
        assert (got[-1:] if isinstance(want, tuple) else got) == want, (command, argv, got)


def test_cv_has_full_help_and_refuses_what_it_decides_per_fold(monkeypatch):
    """cv holds a training recipe: its help is complete, and the settings each fold sets are not flags."""
    monkeypatch.setenv("COLUMNS", "80")
    text = cli("cv", "--help").stdout
    assert "--lr X" in text and "peak learning rate" in text
    for flag in ("--eval-data", "--eval-every", "--eval-limit", "--resume", "--overwrite"):
        r = cli("cv", *REQUIRED, flag, "3")
        assert r.returncode == 2 and "unrecognized arguments" in r.stderr, flag


def test_cv_takes_a_flat_training_recipe(tmp_path):
    y = tmp_path / "recipe.yaml"
    y.write_text("model: m\nlr: 0.002\nframes: {input: flow}\nfolds: loso\n")
    ns = build_parser().parse_args(["cv", "--config", str(y), "--data", "d", "--out", "o"])
    cfg = load_settings(ns, CVConfig, "cv", nest=CVConfig.nest)
    assert (cfg.folds, cfg.train.lr, cfg.train.frames.input, cfg.train.model.model) == (
        "loso",
        0.002,
        "flow",
        "m",
    )


@pytest.mark.parametrize(
    "section,value",
    [("gen", 64), ("vllm", 2), ("frames", 4), ("server", "http://h/v1"), ("lora", 8)],
)
def test_a_scalar_section_is_an_error(section, value):
    """Only `model: ID` is shorthand; any other scalar section would set whichever field comes first."""
    cls = TrainConfig if section == "lora" else EvalConfig
    with pytest.raises(
        InputError, match=rf"c.yaml: {section} = .* — a section of settings: give a mapping of"
    ):
        from_dict(cls, {"data": "d", "out": "o", "model": "m", section: value}, "c.yaml")


def test_model_id_is_the_one_shorthand():
    assert from_dict(EvalConfig, {"data": "d", "out": "o", "model": "m"}).model.model == "m"
    assert from_dict(TrainConfig, {"data": "d", "out": "o", "model": "m"}).model.model == "m"


def test_training_holds_only_a_checkpoint():
    """Backend, adapter and 4-bit are answering settings: train has no such flags, and YAML is refused."""
    with pytest.raises(InputError, match=r"unknown key\(s\) model.adapter"):
        from_dict(TrainConfig, {"data": "d", "out": "o", "model": {"model": "m", "adapter": "a"}})
    r = cli("train", *REQUIRED, "--backend", "openai")
    assert r.returncode == 2 and "unrecognized arguments: --backend" in r.stderr


def test_library_errors_name_the_setting_and_the_cli_adds_the_flag():
    with pytest.raises(InputError) as e:
        from_dict(EvalConfig, {"data": "d", "out": "o"}, "app")
    assert str(e.value) == "app: model.model — required"  # what the app shows: no flag spelling
    ns = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    with pytest.raises(InputError, match=r"^mevqa train: model.model \(--model\) — required$"):
        load_settings(ns, TrainConfig, "train")
    ns = build_parser().parse_args(["eval", *REQUIRED, "--server-args", "retries=-1"])
    with pytest.raises(InputError, match=r"server.retries \(--server-args retries=...\) = -1"):
        load_settings(ns, EvalConfig, "eval")


def test_packed_flags_refuse_unknown_keys_in_one_line():
    r = cli("ask", "c", "q", "--model", "m", "--server-args", "retrys=3")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "'retrys=3' — give k=v pairs, k one of: api_key, concurrency, retries" in r.stderr


def test_ask_help_is_short(monkeypatch):
    """The rare knobs (server, vLLM engine, face tracker, 4-bit details) are one flag per section."""
    monkeypatch.setenv("COLUMNS", "80")
    assert len(cli("ask", "--help").stdout.splitlines()) <= 107  # half of its 215 lines with a flag each


def test_the_cli_spells_the_flag_of_every_setting_a_library_error_names():
    from mevqa.cli._args import with_flag

    library = "out of memory answering 8 questions at once — lower `batch_size` (try 4) or `frames.frames`"
    assert with_flag(library, EvalConfig) == (
        "out of memory answering 8 questions at once — lower `batch_size` (--batch-size) (try 4) or "
        "`frames.frames` (--frames)"
    )
    assert with_flag("`server.base_url` http://h — nothing answers", AskConfig).count("(--base-url)") == 1
    packed = with_flag("x — set `server.retries`", AskConfig)
    assert packed.endswith("`server.retries` (--server-args retries=...)")
    assert with_flag("d — no such file", EvalConfig) == "d — no such file"  # no setting named: unchanged


def test_help_shows_the_default_of_the_section_that_holds_a_setting(monkeypatch):
    """spot crops the face by default (SpotConfig holds FaceConfig(mode="crop")) where ask does not:
    spot's help said `(default: none)` from FaceConfig's own default."""
    monkeypatch.setenv("COLUMNS", "200")

    def face_line(command: str) -> str:  # the flag's line and its help below it, up to the next flag
        text = cli(command, "--help").stdout
        return re.search(r"--face-mode.*?(?=\n  -)", text, re.S).group(0)

    assert "(default: crop)" in face_line("spot") and "(default: none)" in face_line("ask")
