"""Detection benchmark: delay, misses and false alarms of the change detectors (not a test).

Seeded streams with a known change point (20 seeds by default): Gaussian mean shifts of
0.25 / 0.5 / 1 σ and a Bernoulli error rate 0.1 -> 0.2, each with ``--pre`` samples before
the change and ``--post`` after. For every detector: median detection delay (p10-p90) over the
seeds that detected the change, misses (no detection within ``--post`` samples after the
change) and false alarms per 100 k pre-change samples.

Detectors: driftwarden's ``concept_drift`` (ADWIN, debounced; error streams only, it consumes
labeled events), river's ``ADWIN`` and ``PageHinkley`` at their defaults fed directly, and
driftwarden's ``cusum`` / ``error_cusum`` (k = 0.25, h = 24, one-sided up) against the known
reference. Our detectors get the stream as the daemon would give it: micro-batches of 500.

Run: ``.venv/bin/python bench/detection_bench.py`` (≈1-2 min on 2 cores) or ``--quick``.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable

import numpy as np
from river import drift

from driftwarden.detectors.batch import Batch
from driftwarden.detectors.concept_drift import ConceptDrift
from driftwarden.detectors.sequential import Cusum, ErrorCusum

MICRO_BATCH = 500


def gaussian(seed: int, shift: float, pre: int, post: int) -> np.ndarray:
    """N(0, 1) for ``pre`` samples, then N(shift, 1)."""
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(0, 1, pre), rng.normal(shift, 1, post)]


def _gauss_seed(seed: int, *, shift: float, pre: int, post: int) -> np.ndarray:
    return gaussian(seed, shift, pre, post)


def bernoulli(seed: int, pre: int, post: int) -> np.ndarray:
    """0/1 errors at rate 0.1 for ``pre`` samples, then at 0.2."""
    rng = np.random.default_rng(seed)
    return np.r_[rng.random(pre) < 0.1, rng.random(post) < 0.2].astype(np.float64)


def _labeled_batch(errors: np.ndarray) -> Batch:
    """A labeled classification batch built column-wise (predicted 1; label 0 where wrong)."""
    n = errors.size
    predicted = np.empty(n, dtype=object)
    predicted[:] = [1] * n
    label = np.empty(n, dtype=object)
    label[:] = np.where(errors > 0.5, 0, 1).tolist()
    nan = np.full(n, np.nan)
    return Batch({}, {}, nan, nan, predicted, label, np.zeros(n))


def _feature_batch(x: np.ndarray) -> Batch:
    """A predictions batch holding ``x`` as the numeric feature ``x`` (built column-wise)."""
    from driftwarden.detectors.batch import FeatureColumn

    n = x.size
    col = FeatureColumn(
        numeric=x.astype(np.float64),
        text=np.full(n, None, dtype=object),
        null=np.zeros(n, dtype=bool),
        absent=np.zeros(n, dtype=bool),
    )
    nan = np.full(n, np.nan)
    empty = np.full(n, None, dtype=object)
    return Batch({"x": col}, {}, nan, nan, empty, empty, np.zeros(n))


def run_river(factory: Callable[[], object], x: np.ndarray) -> list[int]:
    """Detection indices of a river detector fed ``x`` one value at a time."""
    det = factory()
    out = []
    for i, v in enumerate(x.tolist()):
        det.update(v)  # type: ignore[attr-defined]
        if det.drift_detected:  # type: ignore[attr-defined]
            out.append(i)
    return out


def run_ours(det, make_batch: Callable[[np.ndarray], Batch], x: np.ndarray, key: str) -> list[int]:
    """Detection indices of a driftwarden detector fed micro-batches (one window per batch)."""
    out: list[int] = []
    for start in range(0, x.size, MICRO_BATCH):
        det.update(make_batch(x[start : start + MICRO_BATCH]))
        out.extend(c["index"] for c in det.result().evidence[key])
        det.reset()
    return out


def detectors_for(stream: str) -> dict[str, Callable[[np.ndarray], list[int]]]:
    """The detectors benchmarked on a stream kind ("gauss" or "bernoulli")."""
    dets: dict[str, Callable[[np.ndarray], list[int]]] = {
        "river ADWIN": lambda x: run_river(drift.ADWIN, x),
        "river PageHinkley": lambda x: run_river(drift.PageHinkley, x),
    }
    if stream == "bernoulli":
        dets["concept_drift (adwin)"] = lambda x: run_ours(
            ConceptDrift("errors", method="adwin", direction="both"), _labeled_batch, x, "changes"
        )
        dets["error_cusum k=.25 h=24"] = lambda x: run_ours(
            ErrorCusum("errors", mean=0.1, std=math.sqrt(0.09)), _labeled_batch, x, "alarms"
        )
    else:
        dets["cusum k=.25 h=24"] = lambda x: run_ours(
            Cusum("x", feature="x", mean=0.0, std=1.0, direction="up"), _feature_batch, x, "alarms"
        )
    return dets


def summarise(hits: list[list[int]], pre: int, post: int) -> tuple[str, int, float]:
    """(median delay (p10-p90), misses, false alarms per 100 k pre-change samples)."""
    delays, misses, false_alarms = [], 0, 0
    for idx in hits:
        false_alarms += sum(1 for i in idx if i < pre)
        after = [i - pre for i in idx if pre <= i < pre + post]
        if after:
            delays.append(after[0])
        else:
            misses += 1
    if delays:
        p10, p50, p90 = np.percentile(delays, [10, 50, 90])
        delay = f"{p50:7.0f} ({p10:.0f}-{p90:.0f})"
    else:
        delay = "      - (all missed)"
    return delay, misses, false_alarms / (len(hits) * pre) * 1e5


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one table row per stream and detector."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 seeds, 10k pre-change samples")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--pre", type=int, default=20000)
    ap.add_argument("--post", type=int, default=5000)
    args = ap.parse_args(argv)
    seeds, pre, post = args.seeds, args.pre, args.post
    if args.quick:
        seeds, pre = 5, 10000

    streams: list[tuple[str, str, Callable[[int], np.ndarray]]] = [
        (f"gauss +{s} sigma", "gauss", functools.partial(_gauss_seed, shift=s, pre=pre, post=post))
        for s in (0.25, 0.5, 1.0)
    ]
    streams.append(("bernoulli 0.1->0.2", "bernoulli", lambda seed: bernoulli(seed, pre, post)))

    print(f"{seeds} seeds, change at {pre}, {post} samples after; micro-batches of {MICRO_BATCH}")
    print(
        f"{'stream':20} {'detector':24} {'median delay (p10-p90)':>24} {'misses':>7} "
        f"{'FA/100k':>8} {'s':>6}"
    )
    t_all = time.perf_counter()
    for label, kind, make in streams:
        data = [make(seed) for seed in range(seeds)]
        for name, run in detectors_for(kind).items():
            t0 = time.perf_counter()
            hits = [run(x) for x in data]
            took = time.perf_counter() - t0
            delay, misses, fa = summarise(hits, pre, post)
            print(f"{label:20} {name:24} {delay:>24} {misses:>4}/{seeds:<2} {fa:8.1f} {took:6.1f}")
    print(f"total {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
