"""Summary of scripts/vs-lmms-eval.sh: the input check, identical answers, and the timing table (markdown).

Usage: summarize.py OUT TEST.jsonl
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find_key(obj, key: str):
    """The first value of `key` anywhere in a nested JSON object (mevqa's metrics.json layout may move)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            if (hit := find_key(v, key)) is not None:
                return hit
    return None


def mevqa_answers(run: Path) -> dict[str, str]:
    return {r["id"]: (r.get("answer") or "").strip() for r in read_jsonl(run / "predictions.jsonl")}


def lmms_answers(run: Path, ids: list[str]) -> dict[str, str]:
    files = sorted(run.glob("*/*_samples_*.jsonl"))
    if not files:
        raise SystemExit(f"{run}: no lmms-eval samples file")
    out = {}
    for s in read_jsonl(files[-1]):
        resp = s.get("filtered_resps", s.get("resps"))
        while isinstance(resp, list):
            resp = resp[0] if resp else ""
        out[ids[s["doc_id"]]] = str(resp).strip()
    return out


def same(a: dict[str, str], b: dict[str, str], ids: list[str]) -> tuple[int, list[str]]:
    diff = [i for i in ids if i not in a or i not in b or a[i] != b[i]]
    return len(ids) - len(diff), diff


def input_check(out: Path, ids: list[str]) -> list[str]:
    lines = []
    ref_path = out / "check" / "mevqa_inputs.jsonl"
    if not ref_path.exists():
        return ["input check: no mevqa record"]
    ref = {r["id"]: r for r in read_jsonl(ref_path)}
    for path in sorted(
        out.glob("check/lmms_inputs_b*.jsonl"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1])
    ):
        got = {r["id"]: r for r in read_jsonl(path)}
        tok = sum(i in ref and i in got and ref[i]["input_ids"] == got[i]["input_ids"] for i in ids)
        grid = sum(i in ref and i in got and ref[i]["grids"] == got[i]["grids"] for i in ids)
        pix = sum(i in ref and i in got and ref[i]["images"] == got[i]["images"] for i in ids)
        b = path.stem.rsplit("_b", 1)[1]
        lines.append(
            f"model inputs, lmms-eval batch {b} vs mevqa: prompt tokens {tok}/{len(ids)}, "
            f"image grids {grid}/{len(ids)}, pixel_values {pix}/{len(ids)} identical"
        )
        bad = [i for i in ids if not (i in ref and i in got and ref[i] == got[i])]
        if bad:
            i = bad[0]
            a, g = ref.get(i, {}), got.get(i, {})
            lines.append(
                f"  first difference: {i}: {len(a.get('input_ids', []))} vs "
                f"{len(g.get('input_ids', []))} tokens, "
                f"grids {a.get('grids', [])[:1]} vs {g.get('grids', [])[:1]}"
            )
    return lines


def seconds(path: Path) -> float:
    """/usr/bin/time -f %e -o FILE: the last line is the elapsed time."""
    return float(path.read_text().strip().splitlines()[-1])


def mevqa_answering(run: Path) -> float:
    s = find_key(json.loads((run / "metrics.json").read_text()), "answering_seconds")
    if s is None:  # the summary line: "... this run answered 48 in 1.35 s of answering, ..."
        s = re.search(r"answered(?: this run)?(?: \d+)? in ([\d.]+) s", Path(f"{run}.log").read_text()).group(
            1
        )
    return float(s)


def main() -> int:
    out, test = Path(sys.argv[1]), Path(sys.argv[2])
    rows_in = read_jsonl(test)
    ids = [r["id"] for r in rows_in]
    n = len(ids)
    runs = out / "runs"
    rows: dict[tuple[str, int], list[tuple[float, float]]] = {}
    answers: dict[str, dict[str, str]] = {}
    per_run = []
    wrappers: set[str] = set()
    for t in sorted(runs.glob("*_r*.time")):
        name = t.name[: -len(".time")]
        tool, b, r = re.fullmatch(r"(mevqa|lmms)_b(\d+)_r(\d+)", name).groups()
        run = runs / name
        e2e = seconds(t)
        if tool == "mevqa":
            ans, answered = mevqa_answering(run), n
            answers[name] = mevqa_answers(run)
        else:
            timing = json.loads((runs / f"{name}.timing.json").read_text())
            ans, answered = timing["answering_seconds"], timing["questions"]
            wrappers.add(timing.get("wrapper", "?"))
            answers[name] = lmms_answers(run, ids)
        if answered != n:
            print(f"warning: {name} answered {answered} of {n} questions")
        label = "mevqa" if tool == "mevqa" else "lmms-eval 0.7.3"
        rows.setdefault((label, int(b)), []).append((e2e, ans))
        per_run.append((int(r), label, int(b), e2e, ans))

    print(
        f"# mevqa vs lmms-eval: {n} questions, {len({r.get('image_id') for r in rows_in})} clips, 8 frames, "
        "16 new tokens, greedy, bfloat16, one torch thread\n"
    )
    load = [
        (runs / f"load_{w}").read_text().strip() for w in ("before", "after") if (runs / f"load_{w}").exists()
    ]
    if load:
        print(f"load average (1, 5, 15 min) before the timed runs: {load[0]}; after: {load[-1]}\n")
    if wrappers:
        print(f"lmms-eval's model wrapper: {', '.join(sorted(wrappers))}")
    for line in input_check(out, ids):
        print(line)

    ref_name = next((k for k in sorted(answers) if k.startswith("mevqa")), None)
    check_runs = {"mevqa check": out / "check" / "mevqa"}
    for p in sorted(out.glob("check/lmms_b*")):
        if p.is_dir():
            check_runs[f"lmms-eval check {p.name.rsplit('_', 1)[1]}"] = p
    for k, p in check_runs.items():
        try:
            answers[k] = mevqa_answers(p) if k.startswith("mevqa") else lmms_answers(p, ids)
        except (OSError, SystemExit):
            pass
    if ref_name:
        ref = answers[ref_name]
        worst = n
        for k in sorted(answers):
            if k == ref_name:
                continue
            ok, diff = same(ref, answers[k], ids)
            worst = min(worst, ok)
            extra = (
                f" (first different: {diff[0]}: {ref.get(diff[0])!r} vs {answers[k].get(diff[0])!r})"
                if diff
                else ""
            )
            print(f"answers {k} vs {ref_name}: {ok}/{n} identical{extra}")
        print(f"\n**{worst}/{n} identical** answers question by question (the worst pair above)\n")

    def med(v: list[float]) -> float:
        return statistics.median(v)

    stats = {k: (med([e for e, _ in v]), med([a for _, a in v]), len(v)) for k, v in rows.items()}
    m = next((v for k, v in stats.items() if k[0] == "mevqa"), None)
    print(
        "| tool | batch | runs | end-to-end s | q/s end to end | answering s | answering q/s "
        "| mevqa/this q/s, end to end | mevqa/this q/s, answering |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (label, b), (e, a, k) in sorted(stats.items(), key=lambda kv: (kv[0][0] != "mevqa", kv[0][1])):
        r1 = f"{e / m[0]:.2f}×" if m else "–"
        r2 = f"{a / m[1]:.2f}×" if m else "–"
        if label == "mevqa":
            r1 = r2 = "1"
        print(f"| {label} | {b} | {k} | {e:.2f} | {n / e:.1f} | {a:.2f} | {n / a:.1f} | {r1} | {r2} |")
    lm = [(k, v) for k, v in stats.items() if k[0] != "mevqa"]
    if m and lm:
        (_, be), ve = min(lm, key=lambda kv: kv[1][0])
        (_, ba), va = min(lm, key=lambda kv: kv[1][1])
        print(
            f"\nmevqa vs lmms-eval at its best batch size (medians): {ve[0] / m[0]:.2f}× end to end "
            f"(lmms-eval batch {be}), {va[1] / m[1]:.2f}× answering (lmms-eval batch {ba})"
        )
    print("\nEvery run (in the order run):\n")
    print("| repeat | tool | batch | end-to-end s | answering s |")
    print("|---:|---|---:|---:|---:|")
    order = {"mevqa": 0, "lmms-eval 0.7.3": 1}
    for r, label, b, e, a in sorted(per_run, key=lambda x: (x[0], order[x[1]], x[2])):
        print(f"| {r} | {label} | {b} | {e:.2f} | {a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
