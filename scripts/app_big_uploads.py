"""Four 4096x4096 videos uploaded to a running `mevqa app` at once (the probe that OOM-killed the app):
the app's peak memory (its process tree's RSS, sampled every 0.1 s) and what each user was told.

Usage: .venv/bin/python scripts/app_big_uploads.py MODEL [--frames 16] [--users 4]
(MODEL: a checkpoint folder, e.g. .cache/demo/tiny-base after `make demo`)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from mevqa.io import write_mp4


def big_video(path: Path, frames: int, seed: int) -> Path:
    """A few textured 4096x4096 frames (a moving blob on smooth noise): a sub-MB file that decodes big."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), np.ones((64, 64, 1), np.uint8))
    out = []
    for i in range(frames):
        f = base.copy()
        f[1000 + 20 * i : 1400 + 20 * i, 1000:1400] = 230
        out.append(f)
    return write_mp4(path, out, 30)


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--frames", type=int, default=16, help="frames the app samples (the slider)")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--port", type=int, default=7891)
    a = ap.parse_args()
    from gradio_client import Client, handle_file

    work = Path(tempfile.mkdtemp(prefix="mevqa-big-"))
    videos = [big_video(work / f"big{u}.mp4", 20, u) for u in range(a.users)]
    print("videos:", ", ".join(f"{v.name} {v.stat().st_size / 1e3:.0f} KB" for v in videos))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "mevqa", "app", "--model", a.model, "--port", str(a.port)]
    app = subprocess.Popen([*cmd, "--work-dir", str(work / "app")], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{a.port}/"
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    watched = psutil.Process(app.pid)
    idle = tree_rss(watched)
    peak, done = [idle], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(watched))
            time.sleep(0.1)

    told: dict[int, str] = {}

    def user(u: int):
        client = Client(url, verbose=False)
        t0 = time.time()
        try:
            _, _, status = client.predict(
                handle_file(str(videos[u])), None, "frames", a.frames, "none", api_name="/load_clip"
            )
            told[u] = f"{time.time() - t0:5.1f} s  {status.splitlines()[0][:100]}"
        except Exception as e:  # a dead app: the client's error
            told[u] = f"{time.time() - t0:5.1f} s  client error: {type(e).__name__}: {str(e)[:100]}"

    threading.Thread(target=sample, daemon=True).start()
    users = [threading.Thread(target=user, args=(u,)) for u in range(a.users)]
    for t in users:
        t.start()
    for t in users:
        t.join()
    done.set()
    alive = app.poll() is None
    print(f"app idle {idle / 2**20:.0f} MiB, peak {peak[0] / 2**20:.0f} MiB; alive after: {alive}")
    for u in sorted(told):
        print(f"  user {u}: {told[u]}")
    app.terminate()
    app.wait(30)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
