"""Converters: a sheet reconstructed from the shipped training QA converts back to that QA."""

from __future__ import annotations

import csv
from collections import defaultdict

import pytest
from helpers import cli
from openpyxl import Workbook

from mevqa.data.convert import convert
from mevqa.data.megc import read_jsonl
from mevqa.data.qa import AU, parse_au_codes
from mevqa.errors import InputError
from mevqa.facs import AU_NAMES
from mevqa.prompts import classify

NAME_TO_AU = {v: k for k, v in AU_NAMES.items()}
CASME2_HEADER = [
    "Subject",
    "Filename",
    "OnsetFrame",
    "ApexFrame",
    "OffsetFrame",
    "Action Units",
    "Estimated Emotion",
]
SAMM_HEADER = [
    "Subject",
    "Filename",
    "Inducement Code",
    "Onset Frame",
    "Apex Frame",
    "Offset Frame",
    "Duration",
    "Type",
    "Action Units",
    "Notes",
    "Estimated Emotion",
]


def reconstruct_sheet(rows: list[dict], dataset: str) -> list[list[str]]:
    """The coding sheet these QA rows imply, written the way the real sheets write it."""
    clips = defaultdict(list)
    for r in rows:
        if r["dataset"] == dataset:
            clips[r["image_id"]].append(r)
    table = []
    for qs in clips.values():
        by_type = {classify(r["question"])[0]: r for r in qs}
        aus = [NAME_TO_AU[n.strip()] for n in by_type["au_list"]["answer"].split(",")]
        side = {}
        if "au_side" in by_type:
            side[NAME_TO_AU[classify(by_type["au_side"]["question"])[1]]] = by_type["au_side"]["answer"][
                0
            ].upper()
        codes = "+".join(f"{side.get(n, '')}{n}" for n in aus)
        r0, emotion = qs[0], by_type["fine"]["answer"].capitalize()
        if dataset == "casme2":
            table.append(
                [r0["subject"].removeprefix("sub").lstrip("0"), r0["filename"], "", "", "", codes, emotion]
            )
        else:
            table.append(
                [
                    f"{int(r0['subject']):03d}",
                    r0["filename"],
                    "1",
                    "",
                    "",
                    "",
                    "",
                    "Micro - 1/2",
                    codes,
                    "",
                    emotion,
                ]
            )
    table.append(table[0][:-1] + ["Others"])  # left out of the QA, as the organisers did
    return table


def check_round_trip(original: list[dict], rebuilt: list[dict]) -> None:
    orig = {r["id"]: r for r in original}
    assert [r["id"] for r in rebuilt] == list(orig)
    aus_of = {r["image_id"]: r["answer"] for r in original if classify(r["question"])[0] == "au_list"}
    for r in rebuilt:
        o = orig[r["id"]]
        qtype, au = classify(r["question"])
        assert qtype == classify(o["question"])[0]
        assert r["answer"] == o["answer"], r["id"]
        if qtype == "au_presence":  # which AU is named was drawn at random by the organisers
            present = {x.strip() for x in aus_of[r["image_id"]].split(",")}
            assert (au in present) == (r["answer"] == "yes"), r["id"]
        else:
            assert r["question"] == o["question"], r["id"]


def test_casme2_round_trip_from_csv(megc_dir, tmp_path):
    original = read_jsonl(megc_dir / "train_casme2.jsonl")
    sheet = tmp_path / "CASME2-coding.csv"
    with sheet.open("w", newline="") as f:
        csv.writer(f).writerows([CASME2_HEADER, *reconstruct_sheet(original, "casme2")])
    check_round_trip(original, convert(sheet, "casme2"))


def test_samm_round_trip_from_xlsx(megc_dir, tmp_path):
    original = [r for r in read_jsonl(megc_dir / "train_samm_smic.jsonl") if r["dataset"] == "samm"]
    wb = Workbook()
    for row in [SAMM_HEADER, *reconstruct_sheet(original, "samm")]:
        wb.active.append(row)
    wb.save(tmp_path / "SAMM_Micro_FACS_Codes.xlsx")
    check_round_trip(original, convert(tmp_path / "SAMM_Micro_FACS_Codes.xlsx", "samm"))


def test_smic_coarse_only(megc_dir, tmp_path):
    original = [r for r in read_jsonl(megc_dir / "train_samm_smic.jsonl") if r["dataset"] == "smic"]
    sheet = tmp_path / "smic.csv"
    with sheet.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Subject", "Filename", "Emotion"])
        w.writerows([r["subject"], r["filename"], r["answer"]] for r in original)
    assert convert(sheet, "smic") == original


def test_cli_convert_and_no_question_is_seeded(megc_dir, tmp_path):
    original = read_jsonl(megc_dir / "train_casme2.jsonl")
    sheet = tmp_path / "c.csv"
    with sheet.open("w", newline="") as f:
        csv.writer(f).writerows([CASME2_HEADER, *reconstruct_sheet(original, "casme2")])
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (a, b):
        r = cli("data", "convert", "--dataset", "casme2", "--annotations", str(sheet), "--out", str(out))
        assert r.returncode == 0 and "911 questions about 145 clips" in r.stdout, r.stderr
    assert a.read_bytes() == b.read_bytes()


def test_au_code_forms():
    assert parse_au_codes("4+7") == [AU(4), AU(7)]
    assert parse_au_codes("R12") == [AU(12, "R")]
    assert parse_au_codes("L1+L2") == [AU(1, "L"), AU(2, "L")]
    assert parse_au_codes("AU4") == [AU(4)]
    assert parse_au_codes("AU 1 + AU2") == [AU(1), AU(2)]
    with pytest.raises(InputError, match="cannot read"):
        parse_au_codes("4+x7y")


def test_unknown_dataset_and_missing_column(tmp_path):
    sheet = tmp_path / "s.csv"
    sheet.write_text("Subject,Filename,Estimated Emotion\n1,EP01,happiness\n")
    with pytest.raises(InputError, match="unknown dataset"):
        convert(sheet, "ckplus")
    with pytest.raises(InputError, match=r"missing column\(s\): aus"):
        convert(sheet, "casme2")
    r = cli(
        "data", "convert", "--dataset", "casme2", "--annotations", str(sheet), "--out", str(tmp_path / "o")
    )
    assert r.returncode == 2 and r.stderr.startswith("error: --annotations") and "aus" in r.stderr
