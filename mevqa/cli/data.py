"""`mevqa data synth|convert|validate|stats`: MEGC files and SynthME clips."""

from __future__ import annotations

import argparse

from mevqa.cli._args import add_settings, load_settings
from mevqa.config import DataSpec
from mevqa.errors import InputError


def _no_v2_with_long(a: argparse.Namespace) -> None:
    if a.long and a.v2:
        raise InputError("--v2 — is for short-clip ME-VQA QA; --long videos have no v2 questions")


def cmd_synth(a: argparse.Namespace) -> int:
    _no_v2_with_long(a)
    if a.long:
        return _synth_long(a)
    from mevqa.data.synth import synthesize

    fps = 200.0 if a.fps is None else a.fps
    out = synthesize(
        a.out, a.subjects, a.clips_per_subject, fps, a.size, a.seed, a.video, a.test_fraction, v2=a.v2
    )
    print(f"wrote {out}/frames, annotations.csv, train.jsonl, test.jsonl")
    return 0


def _synth_long(a: argparse.Namespace) -> int:
    import json

    from mevqa.data.synth_long import synthesize_long

    fps = 30.0 if a.fps is None else a.fps  # long videos default to CAS(ME)^3's rate; SAMM's is --fps 200
    out = synthesize_long(
        a.out,
        a.subjects,
        a.videos_per_subject,
        a.seconds,
        fps,
        identity=a.identity,
        seed=a.seed,
        test_fraction=a.test_fraction,
        frames=a.frames_folders,
    )
    videos = json.loads((out / "videos.json").read_text())["videos"]
    media = "frames/<video>/img<N>.jpg" if a.frames_folders else "videos/<video>.mp4"
    print(f"wrote {out}/{media}, annotations.csv, blinks.csv, videos.json")
    micro, macro = sum(v["micro"] for v in videos), sum(v["macro"] for v in videos)
    blinks, frames = sum(v["blinks"] for v in videos), sum(v["frames"] for v in videos)
    print(
        f"{len(videos)} video{'s' * (len(videos) != 1)} ({frames} frames at {fps:g} fps, {a.identity}): "
        f"{micro + macro} events "
        f"({micro} micro, {macro} macro), {blinks} unannotated blinks"
    )
    return 0


def _print_list(title: str, items: list[str], limit: int = 10) -> None:
    if items:
        print(f"{title} ({len(items)}):")
        for it in items[:limit]:
            print(f"  {it}")
        if len(items) > limit:
            print(f"  ... and {len(items) - limit} more")


def cmd_validate(a: argparse.Namespace) -> int:
    from mevqa.data.megc import read_jsonl, validate

    spec = load_settings(a, DataSpec, "data validate", lambda _: {"data": a.file})
    rows = read_jsonl(spec.data)
    v = validate(rows, spec.root, spec.clip_pattern)
    datasets = sorted({d for d, _ in v.counts})
    types = sorted({t for _, t in v.counts})
    print(f"{a.file}: {len(rows)} rows, {v.clips} clips")
    print(f"{'question type':<14}" + "".join(f"{d:>10}" for d in datasets))
    for t in types:
        print(f"{t:<14}" + "".join(f"{v.counts[(d, t)]:>10}" for d in datasets))
    _print_list("duplicate ids", v.duplicate_ids)
    _print_list("unknown question templates", v.unknown_questions)
    _print_list("answers outside the label sets", v.bad_answers)
    _print_list(f"clips missing under {spec.root}", v.missing_clips)
    if not v.ok:
        raise InputError(f"{a.file} — invalid (see above)")
    print("valid" + ("" if spec.root else " (clips not checked: pass --root)"))
    return 0


def cmd_stats(a: argparse.Namespace) -> int:
    from mevqa.data.megc import label_stats, read_jsonl

    for qtype, by_ds in sorted(label_stats(read_jsonl(a.file)).items()):
        print(f"== {qtype}")
        for ds, counts in sorted(by_ds.items()):
            total = sum(counts.values())
            labels = ", ".join(f"{k} {n} ({100 * n / total:.0f}%)" for k, n in counts.most_common())
            print(f"  {ds} [{total}]: {labels}")
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from mevqa.data.convert import convert
    from mevqa.data.megc import write_jsonl

    _no_v2_with_long(a)
    if a.long:
        from mevqa.data.longvideo import convert_long

        for what, path in convert_long(a.annotations, a.out, a.dataset, fps=a.fps, seed=a.seed).items():
            print(f"wrote {path} ({what})")
        return 0
    rows = convert(a.annotations, a.dataset, seed=a.seed, v2=a.v2)
    write_jsonl(a.out, rows)
    clips = len({r["image_id"] for r in rows})
    print(f"wrote {a.out}: {len(rows)} questions about {clips} clips")
    return 0


_V2_HELP = (
    "MEGC 2026 ME-VQA-v2 QA: an analysis question (one of the three v2 phrasings, per clip) in place of the "
    "combined one, answered in mevqa's own wording (the official v2 answers' wording is not public)"
)


def _add_synth(data: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = data.add_parser(
        "synth",
        parents=[common],
        help="generate SynthME micro-expression clips + MEGC-style QA (or --long videos)",
        description="Procedural face clips with AU-driven micro-movements (onset-apex-offset); with --long, "
        "long videos holding micro- and macro-expressions among blinks, head drift and a lighting change.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subjects", type=int, default=4, help="identities (default: 4)")
    p.add_argument("--clips-per-subject", type=int, default=5, help="clips per identity (default: 5)")
    p.add_argument(
        "--fps", type=float, default=None, help="frame rate (default: 200 like CASME II / SAMM; --long: 30)"
    )
    p.add_argument("--size", type=int, default=224, help="frame side in pixels (default: 224)")
    p.add_argument("--seed", type=int, default=0, help="same seed gives identical files")
    p.add_argument("--video", action="store_true", help="also write videos/<clip>.mp4")
    p.add_argument(
        "--test-fraction", type=float, default=0.25, help="share of subjects held out (default: 0.25)"
    )
    p.add_argument("--long", action="store_true", help="long videos (ME-STR / ME-LVQA) instead of clips")
    p.add_argument("--v2", action="store_true", help=_V2_HELP)
    p.add_argument("--seconds", type=float, default=60.0, help="--long: length of each video (default: 60)")
    p.add_argument("--videos-per-subject", type=int, default=2, help="--long: videos each (default: 2)")
    p.add_argument(
        "--identity",
        choices=("procedural", "photo"),
        default="photo",
        help="--long: the astronaut photo with AU warps, or the painted face (default: photo)",
    )
    p.add_argument(
        "--frames-folders", action="store_true", help="--long: frames/<video>/img<N>.jpg instead of mp4"
    )
    p.set_defaults(func=cmd_synth)


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    data = sub.add_parser("data", parents=[common], help="MEGC files and SynthME clips").add_subparsers(
        dest="sub", required=True
    )
    _add_synth(data, common)

    p = data.add_parser("convert", parents=[common], help="annotation sheet (xlsx/csv) -> MEGC QA JSONL")
    p.add_argument("--dataset", required=True, help="casme2, samm, casme3, smic or synthme")
    p.add_argument("--annotations", required=True, help="the dataset's coding sheet (.xlsx or .csv)")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--seed", type=int, default=0, help="seed for the absent AU of the 'no' question")
    p.add_argument(
        "--long",
        action="store_true",
        help="a long-video sheet (CAS(ME)3 / SAMM long videos, CAS(ME)2, SynthME long): --out is a folder "
        "that gets str_gold.csv (ME-STR), lvqa.jsonl (ME-LVQA questions) and events.jsonl (per-event rows)",
    )
    p.add_argument(
        "--fps", type=float, help="with --long: frame rate, for sheets without a micro/macro column"
    )
    p.add_argument("--v2", action="store_true", help=_V2_HELP)
    p.set_defaults(func=cmd_convert)

    p = data.add_parser(
        "validate", parents=[common], help="check a MEGC JSONL file (templates, labels, ids, clips)"
    )
    p.add_argument("file", help="train or test JSONL")
    add_settings(p, DataSpec, skip=("data",))  # with --root, every row's clip is checked too
    p.set_defaults(func=cmd_validate)

    p = data.add_parser("stats", parents=[common], help="label distributions of a MEGC JSONL file")
    p.add_argument("file", help="MEGC JSONL (train or test)")
    p.set_defaults(func=cmd_stats)
