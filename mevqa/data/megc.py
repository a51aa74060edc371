"""MEGC ME-VQA files: read and validate train/test JSONL, resolve each row to its clip, write submissions.

Rows stay plain dicts, so every field a file carries (onset_frame, offset_frame, ...) travels on to
predictions untouched. Two shapes exist: train rows (`id, dataset, image_id, subject, filename,
question, answer`) and test rows (`video_id, video, question, answer`).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mevqa.errors import InputError
from mevqa.facs import AU_NAMES, COARSE_LABELS, FINE_LABELS, LABEL_SETS
from mevqa.io import atomic_write
from mevqa.prompts import classify
from mevqa.video import VIDEO_EXTS

# fields that, when present, must be text (ids may be numbers): a null or a number is named, not crashed on
TEXT_FIELDS = ("question", "video", "image_id", "filename", "dataset")


def _row(line: str, where: str, required: tuple[str, ...]) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where} — malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise InputError(f"{where} — JSON nested too deeply") from None
    if not isinstance(row, dict):
        raise InputError(f"{where} — expected a JSON object, got {type(row).__name__}")
    missing = [k for k in required if k not in row]
    if "id" not in row and "video_id" not in row:
        missing.insert(0, "id or video_id")
    if missing:
        raise InputError(f"{where} — missing field(s): {', '.join(missing)}")
    for k in ("id", "video_id"):
        if k in row and not isinstance(row[k], str | int):
            raise InputError(f"{where} — {k} must be a string or a number, got {json.dumps(row[k])[:40]}")
    for k in TEXT_FIELDS:
        if k in row and not isinstance(row[k], str):
            raise InputError(f"{where} — {k} must be text, got {json.dumps(row[k])[:40]}")
    if "subject" in row:  # one real file writes subject as an int, the other as a string
        row["subject"] = str(row["subject"])
    return row


def read_jsonl(path: str | Path, required: tuple[str, ...] = ("question",)) -> list[dict]:
    """All rows of a JSONL file; a malformed line or a row without its key fields names file:line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} — no such file")
    try:
        with path.open(encoding="utf-8") as f:
            return [_row(line, f"{path}:{n}", required) for n, line in enumerate(f, start=1) if line.strip()]
    except UnicodeDecodeError as e:
        raise InputError(f"{path} — not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write atomically (temp file + rename): a crash never leaves half a file."""
    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def row_id(row: dict) -> str:
    return str(row["id"] if "id" in row else row["video_id"])


def row_dataset(row: dict) -> str:
    """The `dataset` field, else the video_id prefix (`samm_test_SAMM-1_1` -> samm)."""
    if row.get("dataset"):
        return str(row["dataset"])
    m = re.match(r"([a-z0-9]+?)_test_", str(row.get("video_id", "")))
    return m.group(1) if m else "unknown"


def clip_key(row: dict) -> str:
    """Rows with the same key ask about the same clip (the test sets ask 5 questions per clip)."""
    if "video" in row:
        return str(row["video"])
    name = row.get("image_id") or f"{row.get('subject', '')}/{row.get('filename', '')}"
    return f"{row.get('dataset', '')}/{name}"


def is_test_rows(rows: list[dict]) -> bool:
    return bool(rows) and all("video_id" in r for r in rows)


def submission_name(dataset: str, v2: bool = False) -> str:
    return f"me_vqa_{dataset}{'_v2' if v2 else ''}_test_pred.jsonl"


def is_v2_rows(rows: list[dict]) -> bool:
    """ME-VQA-v2 rows: some question is a v2 analysis request. Read from the questions, not the file name,
    so a renamed copy of a v2 test file still gets the `_v2` submission name."""
    return any(classify(str(r.get("question", "")))[0] == "analysis" for r in rows)


def write_submissions(rows: list[dict], answers: dict[str, str], out_dir: str | Path) -> list[Path]:
    """One `me_vqa_<dataset>_test_pred.jsonl` per dataset (`me_vqa_<dataset>_v2_test_pred.jsonl` for
    ME-VQA-v2 rows, see `is_v2_rows`): same rows, same order, `answer` filled."""
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_ds[row_dataset(r)].append({**r, "answer": answers.get(row_id(r), "")})
    return [write_jsonl(Path(out_dir) / submission_name(ds, is_v2_rows(rs)), rs) for ds, rs in by_ds.items()]


# ---------------------------------------------------------------- clip resolution
def _candidates(row: dict, root: Path, pattern: str | None) -> list[Path]:
    if pattern:
        fields = {k: str(v) for k, v in row.items()}
        try:
            return [root / pattern.format(**fields)]
        except KeyError as e:
            raise InputError(f"--clip-pattern {pattern!r} — row {row_id(row)} has no field {e}") from None
        except (IndexError, ValueError) as e:
            raise InputError(f"--clip-pattern {pattern!r} — not a pattern of {{field}} names ({e})") from None
    if "video" in row:  # test rows: SAMM-1/, CAS-1/
        return [root / row["video"]]
    ds, subj, name = row.get("dataset", ""), str(row.get("subject", "")), str(row.get("filename", ""))
    image_id = str(row.get("image_id", name))
    subj_dirs = [subj]
    if subj.isdigit():  # SAMM: subject "6" lives in folder 006
        subj_dirs.insert(0, f"{int(subj):03d}")
    out = []
    for base in (root, root / ds):
        out += [base / s / name for s in subj_dirs] + [base / name, base / image_id, base / "frames" / name]
    return out


def _existing(path: Path) -> Path | None:
    if path.is_dir() or (path.is_file() and path.suffix.lower() in VIDEO_EXTS):
        return path
    for ext in sorted(VIDEO_EXTS):  # a video file of the same stem
        if (p := path.with_name(path.name + ext)).is_file():
            return p
    return None


def resolve_clip(row: dict, root: str | Path, pattern: str | None = None) -> Path:
    """The clip folder or video for `row` under `root`, trying the real dataset layouts in turn."""
    cands = _candidates(row, Path(root), pattern)
    for c in cands:
        if (hit := _existing(c)) is not None:
            return hit
    tried = ", ".join(str(c) for c in cands[:3])
    raise InputError(
        f"row {row_id(row)} — clip not found under {root} (tried {tried}{', ...' if len(cands) > 3 else ''})"
    )


# ---------------------------------------------------------------- validation
COMBINED_RE = re.compile(
    r"the action units? present (?:is|are): (?P<aus>.+?)\. therefore, the fine-grained expression class is "
    r"(?P<fine>[a-z]+), and the coarse expression class is (?P<coarse>[a-z]+)\.?"
)
AU_NAME_SET = set(AU_NAMES.values())


def answer_in_label_set(qtype: str, answer: str) -> bool:
    """Whether `answer` is a well-formed answer for `qtype`; a v2 analysis answer is any non-empty text
    (its official wording is not public, so there is no form to hold it to)."""
    a = answer.strip().lower()
    if qtype == "analysis":
        return bool(a)
    if qtype in LABEL_SETS:
        return a in LABEL_SETS[qtype]
    if qtype in ("au_list", "lvqa_aus"):  # ME-LVQA's AU inventory is a list of AU names too
        return all(x.strip() in AU_NAME_SET for x in a.split(","))
    if qtype.startswith("lvqa_count"):
        return a.isdigit()
    if qtype == "lvqa_type":
        return a in ("micro-expression", "macro-expression")
    if qtype == "combined":
        m = COMBINED_RE.fullmatch(a)
        return (
            bool(m)
            and m["fine"] in FINE_LABELS
            and m["coarse"] in COARSE_LABELS
            and all(x.strip() in AU_NAME_SET for x in m["aus"].split(","))
        )
    return False


@dataclass
class Validation:
    counts: Counter = field(default_factory=Counter)  # (dataset, question type) -> rows
    duplicate_ids: list[str] = field(default_factory=list)
    unknown_questions: list[str] = field(default_factory=list)
    bad_answers: list[str] = field(default_factory=list)
    missing_clips: list[str] = field(default_factory=list)
    clips: int = 0

    @property
    def ok(self) -> bool:
        return not (self.duplicate_ids or self.unknown_questions or self.bad_answers or self.missing_clips)


def validate(rows: list[dict], root: str | Path | None = None, pattern: str | None = None) -> Validation:
    """Check ids, templates, label sets and (with `root`) that every clip exists."""
    v = Validation()
    seen: Counter = Counter(row_id(r) for r in rows)
    v.duplicate_ids = sorted(i for i, n in seen.items() if n > 1)
    for r in rows:
        qtype, _ = classify(r["question"])
        v.counts[(row_dataset(r), qtype)] += 1
        if qtype == "free":
            v.unknown_questions.append(f"{row_id(r)}: {r['question']!r}")
        elif r.get("answer") and not answer_in_label_set(qtype, str(r["answer"])):
            v.bad_answers.append(f"{row_id(r)} ({qtype}): {r['answer']!r}")
    keys = {clip_key(r): r for r in rows}
    v.clips = len(keys)
    if root is not None:
        for key, r in keys.items():
            try:
                resolve_clip(r, root, pattern)
            except InputError:
                v.missing_clips.append(key)
    return v


def label_stats(rows: list[dict]) -> dict[str, dict[str, Counter]]:
    """question type -> dataset -> answer label counts (AU lists count each AU name)."""
    stats: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for r in rows:
        qtype, _ = classify(r["question"])
        ans = str(r.get("answer", "")).strip().lower()
        if not ans:
            continue
        if qtype == "au_list":
            labels = [x.strip() for x in ans.split(",")]
        elif qtype == "combined":
            m = COMBINED_RE.fullmatch(ans)
            labels = [m["fine"]] if m else ["(unparsed)"]
        elif qtype == "analysis":  # free text: count the fine class where it is stated, as mevqa writes it
            m = re.search(r"fine-grained expression class is ([a-z]+)", ans)
            labels = [m[1]] if m else ["(free text)"]
        else:
            labels = [ans]
        for lab in labels:
            stats[qtype][row_dataset(r)][lab] += 1
    return stats
