"""Dataset annotation sheets (xlsx / csv, their real column names) -> MEGC QA JSONL.

Each dataset writes subjects, AUs and emotions its own way; `DATASETS` holds those differences as data,
and every sheet goes through the one QA builder (`qa.build_rows`) that SynthME uses too.
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mevqa.data.qa import ClipLabel, build_rows, parse_au_codes
from mevqa.errors import InputError
from mevqa.facs import COARSE_LABELS, FINE_LABELS, normalise_label

# field -> accepted column names (compared lowercase without spaces/underscores)
COLUMNS: dict[str, tuple[str, ...]] = {
    "subject": ("subject", "sub"),
    "filename": ("filename", "clip", "video", "episode"),
    "onset": ("onsetframe", "onset"),
    "apex": ("apexframe", "apex"),
    "offset": ("offsetframe", "offset"),
    "aus": ("actionunits", "actionunit", "aus", "au"),
    "emotion": ("estimatedemotion", "emotion", "objectiveclass", "emotiontype"),
}


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset's sheet maps onto the MEGC files."""

    subject: Callable[[str], str]  # sheet subject -> the `subject` field
    image_id: Callable[[str, str], str]  # (subject, filename) -> `image_id`
    emotions: tuple[str, ...]  # fine labels kept; anything else ("others") is left out
    needs_aus: bool = True  # SMIC has no AU coding: coarse question only


def _int_or(s: str, fmt: str) -> str:
    return fmt.format(int(s)) if s.isdigit() else s


DATASETS: dict[str, DatasetSpec] = {
    "casme2": DatasetSpec(
        lambda s: _int_or(s.removeprefix("sub"), "sub{:02d}"),
        lambda s, f: f"{s}_{f}",
        ("happiness", "disgust", "repression", "surprise"),
    ),
    "samm": DatasetSpec(
        lambda s: _int_or(s, "{}"),
        lambda s, f: f,
        ("anger", "contempt", "disgust", "fear", "sadness", "happiness", "surprise"),
    ),
    "casme3": DatasetSpec(
        lambda s: s, lambda s, f: f"{s}_{f}", ("anger", "disgust", "fear", "sadness", "happiness", "surprise")
    ),
    "smic": DatasetSpec(
        lambda s: _int_or(s.lstrip("sS"), "s{:02d}"), lambda s, f: f, COARSE_LABELS, needs_aus=False
    ),
    "synthme": DatasetSpec(lambda s: s, lambda s, f: f, FINE_LABELS),
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def _xlsx_table(path: Path) -> list[list[str]]:
    from openpyxl import load_workbook  # openpyxl only for xlsx sheets

    ws = load_workbook(path, read_only=True, data_only=True).worksheets[0]
    return [["" if c is None else str(c).strip() for c in row] for row in ws.iter_rows(values_only=True)]


def _csv_table(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return [[c.strip() for c in row] for row in csv.reader(f)]


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:120]


def read_sheet(path: str | Path) -> list[dict[str, str]]:
    """Rows of the first worksheet of an xlsx, or of a csv, as header -> cell text."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--annotations {path} — no such file")
    if path.suffix.lower() not in (".xlsx", ".xlsm", ".csv"):
        raise InputError(f"--annotations {path} — expected an .xlsx or .csv sheet")
    try:
        table = _xlsx_table(path) if path.suffix.lower() != ".csv" else _csv_table(path)
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(
            f"--annotations {path} — not a readable {path.suffix} sheet ({_first_line(e)})"
        ) from None
    table = [r for r in table if any(r)]
    if not table:
        raise InputError(f"--annotations {path} — the sheet is empty")
    header = table[0]
    return [dict(zip(header, (c.removesuffix(".0") for c in r))) for r in table[1:]]


def _columns(rows: list[dict[str, str]], path: Path, spec: DatasetSpec) -> dict[str, str | None]:
    """Field -> actual header in this sheet; a required column that is missing is an error."""
    headers = {_key(h): h for h in rows[0]} if rows else {}
    found = {f: next((headers[a] for a in aliases if a in headers), None) for f, aliases in COLUMNS.items()}
    required = ["subject", "filename", "emotion"] + (["aus"] if spec.needs_aus else [])
    missing = [f for f in required if found[f] is None]
    if missing:
        names = "; ".join(f"{f} (one of: {', '.join(COLUMNS[f])})" for f in missing)
        raise InputError(f"--annotations {path} — missing column(s): {names}")
    return found


def _frame(text: str | None) -> int | None:
    return int(float(text)) if text and re.fullmatch(r"\d+(\.0+)?", text) else None


def sheet_labels(path: str | Path, dataset: str) -> list[ClipLabel]:
    """One ClipLabel per kept sheet row (rows whose emotion is outside the dataset's labels are skipped)."""
    if dataset not in DATASETS:
        raise InputError(f"--dataset {dataset!r} — unknown dataset; choose one of {', '.join(DATASETS)}")
    spec, path = DATASETS[dataset], Path(path)
    rows = read_sheet(path)
    col = _columns(rows, path, spec)
    labels = []
    for r in rows:
        emotion = normalise_label(r[col["emotion"]])
        if emotion not in spec.emotions:
            continue
        subject = spec.subject(r[col["subject"]])
        filename = r[col["filename"]]
        aus = tuple(parse_au_codes(r[col["aus"]])) if spec.needs_aus else ()
        frames = {k: _frame(r.get(col[k] or "")) for k in ("onset", "apex", "offset")}
        image_id = spec.image_id(subject, filename)
        labels.append(
            ClipLabel(
                dataset, subject, filename, image_id, emotion, aus, **frames, coarse_only=not spec.needs_aus
            )
        )
    return labels


def convert(path: str | Path, dataset: str, seed: int = 0, v2: bool = False) -> list[dict]:
    """MEGC QA rows for every usable clip of the sheet (SMIC: the coarse question only); `v2`: an
    ME-VQA-v2 analysis question in mevqa's own answer wording in place of the combined one."""
    return [row for lab in sheet_labels(path, dataset) for row in build_rows(lab, seed, v2)]
