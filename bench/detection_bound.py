"""How far the detection target can be reached (not a test): an oracle CUSUM on the seeded streams.

The detection target asks for ≤ 0.8× river ADWIN's median delay at ADWIN's false-alarm rate
(0 per 100 k on the seeded streams) on every stream. This script measures, on the very streams
``detection_bench.py`` builds (same generators, same seeds), a detector no monitoring tool can
field, as a bound:

* the log-likelihood-ratio CUSUM of the *exact* pre- and post-change distributions (Page's
  CUSUM; for a known change it is the optimal procedure: it minimises the worst-case expected
  delay among all procedures with the same mean time between false alarms, Moustakides 1986),
  one-sided in the true direction;
* its threshold set *in-sample*: the smallest value with no false alarm on these seeds'
  pre-change samples (a real detector must choose it before seeing the data).

Next to it, river's ADWIN at its defaults on the same samples (as in ``detection_bench.py``).
If this oracle's median delay is above 0.8× ADWIN's on a stream, no detector — ours or
another — is known to meet the target there; the script prints which streams those are.

    .venv/bin/python bench/detection_bound.py          # ≈ 10 s (20 seeds, 100 000 pre-change)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from river import drift

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.detection_bench import bernoulli, gaussian, run_river, summarise  # noqa: E402


def llr_cusum(llr: np.ndarray) -> np.ndarray:
    """Page's CUSUM statistic S_n = max(0, S_{n-1} + llr_n), S_0 = 0 (vectorised)."""
    w = np.cumsum(llr)
    return w - np.minimum(np.minimum.accumulate(w), 0.0)


def oracle(llrs: list[np.ndarray], pre: int) -> tuple[float, list[float]]:
    """The in-sample threshold with no false alarm, and each run's delay at it (inf: missed)."""
    paths = [llr_cusum(x) for x in llrs]
    h = max(float(p[:pre].max()) for p in paths)
    delays = []
    for p in paths:
        hit = np.flatnonzero(p[pre:] > h)
        delays.append(float(hit[0]) if len(hit) else math.inf)
    return h, delays


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--pre", type=int, default=100_000)
    ap.add_argument("--post", type=int, default=5000)
    args = ap.parse_args()
    seeds, pre, post = args.seeds, args.pre, args.post

    streams = []
    for shift in (0.25, 0.5, 1.0):
        runs = [gaussian(seed, shift, pre, post) for seed in range(seeds)]
        # N(0,1) -> N(shift,1): llr = shift * x - shift^2 / 2
        streams.append((f"gauss +{shift} sigma", runs, [shift * x - shift**2 / 2 for x in runs]))
    runs = [bernoulli(seed, pre, post) for seed in range(seeds)]
    up, down = math.log(0.2 / 0.1), math.log(0.8 / 0.9)
    streams.append(("bernoulli 0.1->0.2", runs, [np.where(x > 0, up, down) for x in runs]))

    print(f"{seeds} seeds, change at {pre}, {post} samples after (detection_bench.py's streams)")
    print(
        f"{'stream':<22} {'ADWIN median (FA/100k)':>24} {'oracle CUSUM median':>20} "
        f"{'oracle / ADWIN':>15}  target 0.8x reachable"
    )
    unreachable = []
    for label, raw, llrs in streams:
        adwin_delay, _, adwin_fa = summarise([run_river(drift.ADWIN, x) for x in raw], pre, post)
        adwin = float(adwin_delay.split()[0]) if adwin_delay.strip()[0] != "-" else math.inf
        h, delays = oracle(llrs, pre)
        med = float(np.median(delays))
        ratio = med / adwin
        ok = ratio <= 0.8
        if not ok:
            unreachable.append(label)
        print(
            f"{label:<22} {adwin:>15.0f} ({adwin_fa:.2f}) {med:>20.1f} {ratio:>15.2f}  "
            f"{'yes' if ok else 'no'} (h = {h:.1f})"
        )
    if unreachable:
        print(
            "not reachable even by the oracle (optimal procedure, in-sample threshold): "
            + ", ".join(unreachable)
        )
    else:
        print("the oracle reaches 0.8x on every stream")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
