"""`python -m lmms_eval` with two measurements added and nothing else changed (scripts/vs-lmms-eval.sh).

- $MEVQA_LMMS_TIMING: a JSON file for the time lmms-eval spends in the model wrapper's `generate_until`
  (its answering: building the messages, loading and preprocessing the frames, generating), the
  number of questions answered there and the wrapper class that answered them; lmms-eval itself reports
  only a progress bar and a total time.
- $MEVQA_LMMS_DUMP: a JSONL file of the model inputs of every question (prompt token ids, image grids,
  a SHA-256 of each image's pixel_values), taken from the wrapper's own processor call, for comparison
  with mevqa's (dump_mevqa.py). Used by the input check only, never in a timed run.

Usage: run_lmms.py [lmms-eval arguments]   (the interpreter of the lmms-eval environment)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import types


def _shown() -> types.ModuleType:
    return sys.modules.setdefault("_mevqa_shown", types.ModuleType("_mevqa_shown"))


class _Recorder:
    """Stands in for the wrapper's processor: passes every call through and records its outputs."""

    def __init__(self, processor, path: str):
        self._p, self._path = processor, path

    def __getattr__(self, name):
        return getattr(self._p, name)

    def __call__(self, *args, **kwargs):
        out = self._p(*args, **kwargs)
        shown = _shown()
        ids = getattr(shown, "ids", [])
        texts = kwargs.get("text") or args[0]
        n = len(texts)
        docs, shown.ids = ids[-n:], []
        grids = out["image_grid_thw"].tolist() if "image_grid_thw" in out else []
        pix = out.get("pixel_values")
        per_image, row = [], 0
        for t, h, w in grids:
            k = t * h * w
            per_image.append(hashlib.sha256(pix[row : row + k].float().numpy().tobytes()).hexdigest()[:16])
            row += k
        with open(self._path, "a") as f:
            img = 0
            for i, (doc_id, n_images) in enumerate(docs):
                mask = out["attention_mask"][i].bool()
                f.write(
                    json.dumps(
                        {
                            "id": doc_id,
                            "input_ids": out["input_ids"][i][mask].tolist(),
                            "grids": grids[img : img + n_images],
                            "images": per_image[img : img + n_images],
                            "pixel_dtype": str(pix.dtype) if pix is not None else None,
                        }
                    )
                    + "\n"
                )
                img += n_images
        return out


def main() -> None:
    from lmms_eval.models.chat import qwen2_5_vl as chat
    from lmms_eval.models.simple import qwen2_5_vl as simple

    timing_path, dump_path = os.environ.get("MEVQA_LMMS_TIMING"), os.environ.get("MEVQA_LMMS_DUMP")
    spent: dict = {"answering_seconds": 0.0, "questions": 0}
    for cls in {chat.Qwen2_5_VL, simple.Qwen2_5_VL}:
        original = cls.__dict__.get("generate_until")
        if original is None:
            continue

        def timed(self, requests, _original=original):
            t0 = time.perf_counter()
            try:
                return _original(self, requests)
            finally:
                spent["answering_seconds"] += time.perf_counter() - t0
                spent["questions"] += len(requests)
                spent["wrapper"] = f"{type(self).__module__}.{type(self).__name__}"
                if timing_path:
                    with open(timing_path, "w") as f:
                        json.dump(spent, f)

        cls.generate_until = timed
    if dump_path:  # the chat wrapper inherits __init__ (and so its processor) from the simple one
        init = simple.Qwen2_5_VL.__init__

        def recording_init(self, *a, **k):
            init(self, *a, **k)
            self.processor = _Recorder(self.processor, dump_path)

        simple.Qwen2_5_VL.__init__ = recording_init

    from lmms_eval.__main__ import cli_evaluate

    sys.argv = ["lmms_eval", *sys.argv[1:]]
    cli_evaluate()


if __name__ == "__main__":
    main()
