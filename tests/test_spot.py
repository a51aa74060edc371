"""The spotter: pure signal -> interval functions on hand-made signals, then the whole job on SynthME long
videos (a real face tracked by dlib, real decoding, real flow)."""

from __future__ import annotations

import numpy as np
import pytest

from mevqa.config import SpotConfig
from mevqa.spot import Signal, analysis_step, intervals, nth_event, opposed, peaks, smooth, threshold


def signal(x: np.ndarray, fps: float = 30.0, k: int = 6, step: int = 1, first: int = 0) -> Signal:
    n = len(x)
    regions = np.c_[np.repeat(x[:, None], 5, axis=1), np.zeros((n, 2))].astype(np.float32)  # eyes still
    vectors = np.zeros((n, 7, 2), np.float32)
    frames = np.arange(first, first + n * step, step)
    return Signal(frames, regions, np.isnan(x), vectors, fps, fps * step, step, k)


def bump(n: int, centre: int, width: int, height: float) -> np.ndarray:
    t = np.arange(n)
    return height * np.exp(-0.5 * ((t - centre) / (width / 2.5)) ** 2)


def test_analysis_rate_and_thresholds():
    assert analysis_step(200, 50) == 4 and analysis_step(30, 50) == 1 and analysis_step(60, 50) == 1
    x = np.r_[np.zeros(50), np.ones(50)]
    med, sigma, level = threshold(x, 3)
    assert sigma > 0 and level > med
    assert threshold(np.full(5, np.nan), 3)[2] == np.inf  # a faceless video spots nothing


def test_smooth_ignores_faceless_frames():
    x = np.array([1.0, 1.0, np.nan, 1.0, 1.0])
    assert np.allclose(smooth(x, 3)[[0, 1, 3, 4]], 1.0)


def test_peaks_need_prominence_and_extend_to_a_quarter_of_their_height():
    x = bump(200, 50, 20, 5) + bump(200, 58, 6, 0.3) + bump(200, 150, 20, 4)
    p, lo, hi = peaks(x, 1.0, 1.0, 10)
    assert list(p) == [int(np.argmax(x[:100])), 150]  # the shoulder at 58 is no peak of its own
    assert lo[1] < 150 < hi[1] and x[lo[1]] <= 1.0 + 0.2 and x[hi[1]] <= 1.0 + 0.2


def test_intervals_micro_vs_macro_by_duration_at_the_video_fps():
    rng = np.random.default_rng(0)
    n = 900  # 30 s at 30 fps
    x = 0.05 * rng.random(n) + bump(n, 200, 8, 2.0) + bump(n, 600, 60, 3.0)
    events = intervals(signal(x), SpotConfig(threshold=5, smooth=0.0))
    assert [e.type for e in events] == ["micro", "macro"]
    micro, macro = events
    assert micro.onset <= 200 <= micro.offset and (micro.offset - micro.onset + 1) / 30 <= 0.5
    assert macro.onset <= 600 <= macro.offset and (macro.offset - macro.onset + 1) / 30 > 0.5
    assert micro.apex == 200 and abs(macro.apex - 600) <= 3  # noise on a broad top
    assert nth_event(events, 2, "v") == macro


def test_intervals_are_in_the_videos_own_frame_numbers():
    """200 fps analysed at 50 (step 4), frames numbered from 1 as in a folder: the interval comes back in
    file numbers, and micro/macro are judged at 200 fps."""
    n = 500
    x = 0.01 * np.random.default_rng(1).random(n) + bump(n, 250, 10, 2.0)
    sig = signal(x, fps=50, k=10, step=4, first=1)
    (e,) = intervals(sig, SpotConfig(threshold=5, smooth=0.0))
    assert e.apex == 1 + 250 * 4 and e.onset % 4 == 1 and e.type == "micro"


def test_a_movement_and_its_return_oppose_when_every_region_votes():
    """Measured on a SynthME open-mouth macro (AU 1+2+26+25): both brows reverse cleanly (-1), the mouth
    boxes net out to weak directions (-0.4, -0.7) with as much movement. The single region that moved most
    (one mouth box, by a hair) said -0.41 and split the event in two; the weighted vote says -0.8."""
    up, down = np.array([0.0, -1.0]), np.array([0.0, 1.0])

    def rot(v, c):  # v turned to cosine c
        return np.array([c * v[0] - np.sqrt(1 - c * c) * v[1], np.sqrt(1 - c * c) * v[0] + c * v[1]])

    onset = np.array([20 * up, 20 * up, 0.1 * up, 20 * up, 24 * up])  # brows l/r, nose, mouth l/r
    back = np.array([20 * down, 20 * down, 0.1 * up, 20 * rot(up, -0.7), 24 * rot(up, -0.41)])
    assert opposed(onset, back) < -0.5
    assert opposed(onset, onset) > 0.99  # two movements the same way are two events
    assert opposed(onset, np.zeros_like(onset)) == 0.0  # a span with no direction pairs with nothing


def test_a_flat_or_faceless_signal_spots_nothing_and_nth_event_says_how_many():
    assert intervals(signal(np.zeros(100)), SpotConfig()) == []
    assert intervals(signal(np.full(100, np.nan)), SpotConfig()) == []
    from mevqa.errors import InputError

    with pytest.raises(InputError, match="event 3 asked for, but 0 were spotted"):
        nth_event([], 3, "v.mp4")


def test_a_reader_failure_reaches_the_caller_instead_of_hanging_it():
    """The decoding thread's own error (a bug, a codec crash) is raised in the consumer: before, the
    reader thread died and `mevqa spot` waited on its queue forever."""
    from mevqa.spot import stream

    class Broken:
        def frames(self, step):
            yield 0, np.zeros((4, 4, 3), np.uint8)
            raise RuntimeError("codec fell over")

    with pytest.raises(RuntimeError, match="codec fell over"):
        list(stream(Broken(), 1))
