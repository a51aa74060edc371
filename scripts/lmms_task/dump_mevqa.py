"""`mevqa eval` recording the model inputs of every question (scripts/vs-lmms-eval.sh, input check).

Runs mevqa's own CLI with TransformersBackend.prepare wrapped: for each question, the prompt token ids the
model is given (a clip's shared prefix followed by the question's suffix, or its own row of a plain
batch, without padding), the image grids and a SHA-256 of each image's pixel_values, as run_lmms.py
records them for lmms-eval. Never used in a timed run.

Usage: .venv/bin/python dump_mevqa.py DUMP.jsonl [mevqa eval arguments]
"""

from __future__ import annotations

import hashlib
import json
import sys


def _hashes(pix, grids) -> list[str]:
    out, row = [], 0
    for t, h, w in grids:
        k = t * h * w
        out.append(hashlib.sha256(pix[row : row + k].float().numpy().tobytes()).hexdigest()[:16])
        row += k
    return out


def main() -> int:
    path, args = sys.argv[1], sys.argv[2:]
    from mevqa.backends.hf import TransformersBackend
    from mevqa.cli import main as mevqa_main

    prepare = TransformersBackend.prepare

    def recording_prepare(self, requests, gen):
        prepared = prepare(self, requests, gen)
        n = prepared.samples
        n_images = [sum(not isinstance(p, str) for p in r.messages[-1].parts) for r in prepared.requests]
        with open(path, "a") as f:
            for job in prepared.jobs:
                x = job.inputs
                grids = x["image_grid_thw"].tolist() if "image_grid_thw" in x else []
                hashes = _hashes(x["pixel_values"], grids) if grids else []
                if job.suffixes:  # one clip: the prefix (all its images) once, then each question's suffix
                    prefix = x["input_ids"][0][x["attention_mask"][0].bool()].tolist()
                    rows = [(i, prefix + list(s), grids, hashes) for i, s in zip(job.rows, job.suffixes)]
                else:  # a plain batch: a padded row and its own images each
                    rows, img = [], 0
                    for b, i in enumerate(job.rows):
                        k = n_images[i // n]
                        ids = x["input_ids"][b][x["attention_mask"][b].bool()].tolist()
                        rows.append((i, ids, grids[img : img + k], hashes[img : img + k]))
                        img += k
                for i, ids, g, h in rows:
                    if i % n == 0:
                        rec = {
                            "id": prepared.requests[i // n].id,
                            "input_ids": ids,
                            "grids": g,
                            "images": h,
                            "pixel_dtype": str(x["pixel_values"].dtype) if grids else None,
                        }
                        f.write(json.dumps(rec) + "\n")
        return prepared

    TransformersBackend.prepare = recording_prepare
    return mevqa_main(["eval", *args])


if __name__ == "__main__":
    sys.exit(main())
