"""Long videos (ME-STR, ME-LVQA): expression intervals, annotation sheets and the questions built on them.

An `Interval` is one expression event in a long video, in the video's own frame numbers (0-based indices
for video files, file numbers for frame folders), inclusive at both ends. ME-STR predictions and gold are
interval files (CSV or JSONL, `read_intervals` / `write_intervals`); the datasets' long-video sheets
(`read_sheet`) give one event list per video, from which `lvqa_rows` asks the six ME-LVQA questions,
`event_rows` the short-clip ME-VQA questions of each event and `str_gold` the ME-STR ground truth.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import zipfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mevqa.data.convert import _csv_table, _key, _xlsx_table
from mevqa.data.qa import AU, ClipLabel, build_rows, parse_au_codes
from mevqa.errors import InputError
from mevqa.facs import FINE_TO_COARSE, normalise_label
from mevqa.io import atomic_write
from mevqa.prompts import (
    Q_LVQA_AUS,
    Q_LVQA_COUNT_ALL,
    Q_LVQA_COUNT_MACRO,
    Q_LVQA_COUNT_MICRO,
    Q_LVQA_TYPE,
    classify,
)

TYPES = ("micro", "macro")
TYPE_ANSWERS = {"micro": "micro-expression", "macro": "macro-expression"}
MICRO_MAX_SECONDS = 0.5  # MEGC: an expression up to 0.5 s is a micro-expression, a longer one macro
CSV_COLUMNS = ("subject", "video", "onset", "offset", "emotion", "apex", "type", "score", "aus")


@dataclass(frozen=True)
class Interval:
    """One expression event: frames onset..offset inclusive of `video`.

    `type` is "micro" or "macro"; `aus` are the event's action units (sheets carry them, ME-STR files
    need not); `score` is a spotter's confidence.
    """

    video: str
    onset: int
    offset: int
    apex: int | None = None
    type: str | None = None
    emotion: str | None = None
    subject: str | None = None
    score: float | None = None
    aus: tuple[AU, ...] = field(default_factory=tuple)

    @property
    def length(self) -> int:
        return max(0, self.offset - self.onset + 1)


def event_type(text: object) -> str | None:
    """The type (micro or macro) as files write it: micro-expression, ME, MaE, `Micro - 1/2`, ..."""
    t = str(text or "").strip().lower()
    if not t:
        return None
    if t in ("me", "mic") or "micro" in t:
        return "micro"
    if t in ("mae", "mac") or "macro" in t:
        return "macro"
    raise ValueError(f"type {text!r} is neither micro nor macro")


def type_from_length(frames: int, fps: float) -> str:
    return "micro" if frames / fps <= MICRO_MAX_SECONDS + 1e-9 else "macro"


def _int(value: object, name: str) -> int:
    t = str(value).strip()
    if re.fullmatch(r"-?\d+(\.0+)?", t):
        return int(float(t))
    raise ValueError(f"{name} {value!r} is not a frame number")


def _frame_or_none(value: object) -> int | None:
    """Apex/offset cells: blank, 0 or negative mean "not annotated" in the datasets' sheets."""
    if value is None or str(value).strip() in ("", "nan", "None", "/", "-"):
        return None
    n = _int(value, "frame")
    return n if n > 0 else None


def _subject(value: object) -> str | None:
    t = str(value).strip() if value is not None else ""
    return t.removesuffix(".0") if t.isdigit() or re.fullmatch(r"\d+\.0", t) else (t or None)


def as_interval(x: Interval | Mapping) -> Interval:
    """An Interval from an Interval or a dict with the same keys (`aus` as codes like `4+R12`)."""
    if isinstance(x, Interval):
        return x
    get = x.get
    if get("video") in (None, "") or get("onset") is None or get("offset") is None:
        raise ValueError("needs video, onset and offset")
    onset, offset = _int(get("onset"), "onset"), _int(get("offset"), "offset")
    if onset < 0 or offset < onset:
        raise ValueError(f"onset {onset}, offset {offset} — need 0 <= onset <= offset")
    score, emotion = get("score"), str(get("emotion") or "").strip()
    return Interval(
        video=str(get("video")).strip(),
        onset=onset,
        offset=offset,
        apex=_frame_or_none(get("apex")),
        type=event_type(get("type")),
        emotion=emotion or None,
        subject=_subject(get("subject")),
        score=float(score) if score not in (None, "") else None,
        aus=_aus(get("aus")),
    )


def _aus(value: object) -> tuple[AU, ...]:
    """AUs from codes (`4+R12`), a list of codes, or AU objects."""
    if not value:
        return ()
    if isinstance(value, tuple | list):
        if all(isinstance(a, AU) for a in value):
            return tuple(value)
        value = "+".join(str(a) for a in value)
    return tuple(parse_au_codes(str(value)))


def as_intervals(items: list) -> list[Interval]:
    try:
        return [as_interval(x) for x in items]
    except (ValueError, InputError) as e:
        raise InputError(f"interval — {e}") from None


# ---------------------------------------------------------------- ME-STR interval files
def _rows_csv(path: Path) -> list[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [_key(h) for h in next(reader, [])]
        missing = [c for c in ("video", "onset", "offset") if c not in header]
        if missing:
            raise InputError(
                f"{path} — missing column(s): {', '.join(missing)} (header: subject,video,onset,...)"
            )
        return [(reader.line_num, dict(zip(header, r))) for r in reader if any(c.strip() for c in r)]


def _rows_jsonl(path: Path) -> list[tuple[int, dict]]:
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n} — malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{n} — expected a JSON object, got {type(row).__name__}")
            out.append((n, row))
    return out


def read_intervals(path: str | Path) -> list[Interval]:
    """ME-STR intervals from CSV (`subject,video,onset,offset,emotion` [+ apex,type,score,aus]) or JSONL.

    File order is kept: the organisers' STRS evaluator depends on it. A bad row names file:line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} — no such file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise InputError(f"{path} — expected a .csv or .jsonl interval file")
    try:
        rows = _rows_csv(path) if suffix == ".csv" else _rows_jsonl(path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path} — not a readable {suffix} file ({str(e)[:80]})") from None
    out = []
    for line, row in rows:
        try:
            out.append(as_interval(row))
        except (ValueError, InputError) as e:
            raise InputError(f"{path}:{line} — {e}") from None
    return out


def _csv_cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, tuple):
        return "+".join(a.code() for a in v)
    return str(v)


def write_intervals(path: str | Path, intervals: list[Interval]) -> Path:
    """CSV (by suffix) or JSONL, written atomically; `read_intervals` reads either back unchanged."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for iv in intervals:
            w.writerow([_csv_cell(getattr(iv, c)) for c in CSV_COLUMNS])
        return atomic_write(path, buf.getvalue())
    lines = []
    for iv in intervals:
        d = {k: v for k, v in asdict(iv).items() if v is not None and k != "aus"}
        if iv.aus:
            d["aus"] = _csv_cell(iv.aus)
        lines.append(json.dumps(d, ensure_ascii=False) + "\n")
    return atomic_write(path, "".join(lines))


# ---------------------------------------------------------------- dataset long-video sheets
# field -> accepted headers (compared lowercase without spaces/underscores/hyphens), first match wins
SHEET_COLUMNS: dict[str, tuple[str, ...]] = {
    "subject": ("subject", "sub", "participant"),
    "video": ("video", "videoname", "videocode", "filename", "file", "clip"),
    "onset": ("onsetframe", "onset"),
    "apex": ("apexframe", "apex"),
    "offset": ("offsetframe", "offset"),
    "aus": ("actionunits", "actionunit", "aus", "au"),
    "emotion": ("estimatedemotion", "emotion", "emotiontype"),
    "type": ("type", "expressiontype", "eventtype"),
}
# CAS(ME)² `CAS(ME)^2code_final.xlsx` has no header row: participant, video_event (`anger1_1`), onset,
# apex, offset, AUs, estimated emotion, expression type, self-reported emotion
CASME2_POSITIONS = ("subject", "video", "onset", "apex", "offset", "aus", "emotion", "type")


def _table(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise InputError(f"{path} — no such file")
    suffix = path.suffix.lower()
    if suffix not in (".xlsx", ".xlsm", ".csv"):
        hint = " (save the .xls as .xlsx)" if suffix == ".xls" else ""
        raise InputError(f"{path} — expected an .xlsx or .csv sheet{hint}")
    try:
        table = _xlsx_table(path) if suffix != ".csv" else _csv_table(path)
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path} — not a readable {suffix} sheet ({str(e)[:80]})") from None
    return [[c.removesuffix(".0") if re.fullmatch(r"-?\d+\.0", c) else c for c in r] for r in table]


def _header(table: list[list[str]]) -> tuple[int, dict[str, int]] | None:
    """(row index, field -> column) of the first row naming onset and offset (SAMM has a preamble)."""
    for i, row in enumerate(table[:30]):
        keys = [_key(c) for c in row]
        found = {
            f: next((keys.index(a) for a in names if a in keys), None) for f, names in SHEET_COLUMNS.items()
        }
        if found["onset"] is not None and found["offset"] is not None and found["video"] is not None:
            cols = {f: c for f, c in found.items() if c is not None}
            if "inducementcode" in keys:  # SAMM long videos: Filename is the event (006_1_2), video 006_1
                cols["samm_event"] = cols["video"]
            return i, cols
    return None


def _sheet_records(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(sheet row number, field -> cell) for every event row."""
    table = _table(path)
    head = _header(table)
    if head is None:
        if not table or max(len(r) for r in table) < len(CASME2_POSITIONS):
            raise InputError(
                f"{path} — no header row naming video/filename, onset and offset, and not the CAS(ME)² "
                "layout (8 columns without a header)"
            )
        start, cols = -1, {f: i for i, f in enumerate(CASME2_POSITIONS)}
        cols["casme2_event"] = cols["video"]
    else:
        start, cols = head
    out = []
    for n, row in enumerate(table[start + 1 :], start=start + 2):
        if not any(row):
            continue
        rec = {f: (row[c] if c < len(row) else "") for f, c in cols.items()}
        if "samm_event" in cols:
            rec["video"] = "_".join(rec["video"].split("_")[:2])
        if "casme2_event" in cols:
            rec["video"] = re.sub(r"_\d+$", "", rec["video"])  # anger1_1 = event 1 of video anger1
        out.append((n, rec))
    return out


def _event(rec: dict[str, str], fps: float | None) -> Interval:
    if not rec.get("video", "").strip():
        raise ValueError("no video name")
    onset = _int(rec.get("onset", ""), "onset")
    apex = _frame_or_none(rec.get("apex"))
    offset = _frame_or_none(rec.get("offset")) or apex  # CAS(ME)² writes offset 0 when only the apex is known
    if offset is None:
        raise ValueError(f"offset {rec.get('offset')!r} is not a frame number")
    if offset < onset:
        raise ValueError(f"offset {offset} comes before onset {onset}")
    kind = event_type(rec.get("type"))
    if kind is None and fps:
        kind = type_from_length(offset - onset + 1, fps)
    emotion = normalise_label(rec.get("emotion", "")) or None
    aus = tuple(parse_au_codes(rec["aus"])) if rec.get("aus") else ()
    return Interval(
        rec["video"].strip(), onset, offset, apex, kind, emotion, _subject(rec.get("subject")), None, aus
    )


def _join_subjects(events: list[Interval], join: bool | None) -> list[Interval]:
    """`subject_video` ids when the sheet reuses a video name under several subjects (CAS(ME)³ `a1`)."""
    if join is None:
        subjects: dict[str, set] = defaultdict(set)
        for e in events:
            subjects[e.video].add(e.subject)
        join = any(len(s) > 1 for s in subjects.values())
    if not join:
        return events
    return [replace(e, video=f"{e.subject}_{e.video}") if e.subject else e for e in events]


def read_sheet(
    path: str | Path, fps: float | None = None, join_subject: bool | None = None
) -> dict[str, list[Interval]]:
    """A long-video annotation sheet (.csv / .xlsx) -> video -> its events sorted by onset.

    Layouts: SynthME long CSV (`subject, video, onset, apex, offset, aus, emotion, type`), CAS(ME)³ and
    SAMM long-video sheets (header names vary: Filename/Video, Action Units/AU, Estimated Emotion/Emotion;
    SAMM's preamble rows are skipped and its event names `006_1_2` give video `006_1`) and CAS(ME)²'s
    headerless `code_final` layout. Apex 0 or blank is None. Without a type column the type comes from
    the duration at `fps` (<= 0.5 s micro); with neither it stays None. `join_subject` (None: when names
    repeat across subjects) makes video ids `subject_video`. A bad row names file:row.
    """
    path = Path(path)
    events = []
    for n, rec in _sheet_records(path):
        try:
            events.append(_event(rec, fps))
        except (ValueError, InputError) as e:
            raise InputError(f"{path}:{n} — {e}") from None
    by_video: dict[str, list[Interval]] = defaultdict(list)
    for e in _join_subjects(events, join_subject):
        by_video[e.video].append(e)
    return {v: sorted(evs, key=lambda e: (e.onset, e.offset)) for v, evs in sorted(by_video.items())}


# ---------------------------------------------------------------- questions and gold built from events
def _au_inventory(events: list[Interval]) -> str:
    numbers = sorted({a.number for e in events for a in e.aus})
    return ", ".join(AU(n).name for n in numbers)


def lvqa_answer(question: str, events: list[Interval]) -> str:
    """The answer to an ME-LVQA question from a video's events (the gold ones for a file, the spotted ones
    for a prediction), in the test files' format. A type question past the last event gets the commoner
    type of the events (macro when there are none)."""
    events = sorted(events, key=lambda e: (e.onset, e.offset))
    qtype, n = classify(question)
    if qtype == "lvqa_count_all":
        return str(len(events))
    if qtype in ("lvqa_count_micro", "lvqa_count_macro"):
        return str(sum(e.type == qtype.rsplit("_", 1)[1] for e in events))
    if qtype == "lvqa_aus":
        return _au_inventory(events)
    if qtype == "lvqa_type" and n is not None:
        if int(n) <= len(events):
            return TYPE_ANSWERS[events[int(n) - 1].type]
        micro = sum(e.type == "micro" for e in events)
        return TYPE_ANSWERS["micro" if micro > len(events) - micro else "macro"]
    raise InputError(f"{question!r} — not an ME-LVQA question")


def lvqa_rows(
    video: str,
    events: list[Interval],
    video_id_prefix: str,
    n_questions_for_type: int = 2,
    rng: random.Random | None = None,
) -> list[dict]:
    """The ME-LVQA questions of one long video, in the test files' order and answer format.

    Counts (all, micro, macro), the AU inventory (FACS names, ascending AU number), then the type of
    `n_questions_for_type` distinct events drawn at random (fewer when the video has fewer events), events
    numbered 1.. in time order. Ids are `{video_id_prefix}_{video}_{k}` like `casme3_test_dzw_a1_1`.
    """
    events = sorted(events, key=lambda e: (e.onset, e.offset))
    untyped = [e for e in events if e.type not in TYPES]
    if untyped:
        raise InputError(
            f"video {video} — event at frame {untyped[0].onset} has no micro/macro type (give fps)"
        )
    rng = rng or random.Random(f"{video_id_prefix}:{video}")
    qs = [Q_LVQA_COUNT_ALL, Q_LVQA_COUNT_MICRO, Q_LVQA_COUNT_MACRO, Q_LVQA_AUS]
    qs += [
        Q_LVQA_TYPE.format(n=n)
        for n in rng.sample(range(1, len(events) + 1), min(n_questions_for_type, len(events)))
    ]
    qa = [(q, lvqa_answer(q, events)) for q in qs]
    return [
        {"video_id": f"{video_id_prefix}_{video}_{k}", "video": video, "question": q, "answer": a}
        for k, (q, a) in enumerate(qa, start=1)
    ]


def event_rows(
    video: str, events: list[Interval], dataset: str, video_path: str | None = None, seed: int = 0
) -> list[dict]:
    """Short-clip ME-VQA training rows for each event of a long video (`qa.build_rows`, the same seven
    templates as the short-clip files), with the event's `onset_frame`/`apex_frame`/`offset_frame`.

    The long video's path goes in `filename` (what `resolve_clip` finds under the data root) and each
    event gets its own `image_id` (`{video}_ev{k}`, k in time order), so every event is its own clip for
    the frame cache; a `video` field would make all events of a video one clip. Events whose emotion is
    not a fine label (others, blank) are left out, as the MEGC files leave "others" out.
    """
    rows = []
    for k, e in enumerate(sorted(events, key=lambda e: (e.onset, e.offset)), start=1):
        if e.emotion not in FINE_TO_COARSE:
            continue
        label = ClipLabel(
            dataset=dataset,
            subject=e.subject or "",
            filename=video_path or video,
            image_id=f"{video}_ev{k}",
            emotion=e.emotion,
            aus=e.aus,
            onset=e.onset,
            apex=e.apex,
            offset=e.offset,
        )
        rows += build_rows(label, seed)
    return rows


def str_gold(events_by_video: Mapping[str, list[Interval]]) -> list[Interval]:
    """ME-STR ground truth: every event, its `video` set to its key, ordered by subject, video, onset."""
    out = [replace(e, video=v) for v, evs in events_by_video.items() for e in evs]
    return sorted(out, key=lambda e: (e.subject or "", e.video, e.onset, e.offset))


def convert_long(
    sheet: str | Path,
    out: str | Path,
    dataset: str,
    prefix: str | None = None,
    fps: float | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """A long-video annotation sheet -> the files the long-video tasks and training read, in `out`:
    `str_gold.csv` (ME-STR intervals), `lvqa.jsonl` (the six ME-LVQA test templates per video, answered),
    `events.jsonl` (per-event short-clip ME-VQA rows: `mevqa train` trains on the events of long videos)."""
    from mevqa.data.megc import write_jsonl

    out = Path(out)
    events = read_sheet(sheet, fps=fps)
    prefix = prefix or f"{dataset}_test"
    lvqa = [r for v, evs in events.items() for r in lvqa_rows(v, evs, prefix)]
    per_event = [r for v, evs in events.items() for r in event_rows(v, evs, dataset, seed=seed)]
    return {
        "str_gold": write_intervals(out / "str_gold.csv", str_gold(events)),
        "lvqa": write_jsonl(out / "lvqa.jsonl", lvqa),
        "events": write_jsonl(out / "events.jsonl", per_event),
    }
