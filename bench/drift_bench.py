"""Benchmark: one window of 25 features x 100 000 rows through feature_drift.

Not a test (speed belongs here, not in ``tests/``). The data are seeded: 20 numeric features
(N(0, 1)) and 5 categorical ones; the window shifts the mean of three numerics by 0.25, 0.5 and
0.5 sigma and changes the category mix of one categorical. The reference profile is built from
a clean reference table of the same size; the timed part is the window evaluation
(``update`` over the window's micro-batches + ``result``), as the daemon runs it.

    .venv/bin/python bench/drift_bench.py                  # every method, one 100k batch
    .venv/bin/python bench/drift_bench.py --batch-size 500 # as 200 micro-batches
    .venv/bin/python bench/drift_bench.py --save-data /tmp/drift-bench   # parquet for others

``--anchors`` is the hook for running Evidently / Alibi Detect on the same data in their own
venv (they need numpy < 2 / pandas < 3); it is not implemented yet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from driftwarden.detectors.feature_drift import DRIFT_METHODS, FeatureDrift, columns_batch
from driftwarden.detectors.profile import ReferenceProfile, build_profile

N_NUMERIC = 20
N_CATEGORICAL = 5
SHIFTS = {"num_0": 0.25, "num_1": 0.5, "num_2": 0.5}
MIX_CHANGED = "cat_0"
CATS = np.array(["a", "b", "c", "d", "e"], dtype=object)
MIX = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
NEW_MIX = np.array([0.3, 0.25, 0.2, 0.15, 0.1])


def make_table(rng: np.random.Generator, n: int, drifted: bool) -> pd.DataFrame:
    """A seeded table; ``drifted`` applies the benchmark's shifts."""
    cols: dict[str, np.ndarray] = {}
    for i in range(N_NUMERIC):
        name = f"num_{i}"
        cols[name] = rng.normal(SHIFTS.get(name, 0.0) if drifted else 0.0, 1.0, n)
    for i in range(N_CATEGORICAL):
        name = f"cat_{i}"
        mix = NEW_MIX if drifted and name == MIX_CHANGED else MIX
        cols[name] = rng.choice(CATS, n, p=mix)
    return pd.DataFrame(cols)


def run(
    method: str, profile: ReferenceProfile, window: pd.DataFrame, batch_size: int
) -> tuple[float, set[str], float]:
    """Evaluate one window; returns (seconds, flagged features, statistic)."""
    columns = {c: window[c].to_numpy() for c in window.columns}
    n = len(window)
    batches = [
        columns_batch({c: v[i : i + batch_size] for c, v in columns.items()})
        for i in range(0, n, batch_size)
    ]
    det = FeatureDrift("drift", profile, method=method)
    t0 = time.perf_counter()
    for b in batches:
        det.update(b)
    r = det.result()
    seconds = time.perf_counter() - t0
    flagged = {t["feature"] for t in r.evidence["top"]}
    return seconds, flagged, float(r.statistic or 0.0)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per method."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the whole window at once")
    ap.add_argument("--methods", nargs="*", default=list(DRIFT_METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-data", type=Path, help="write reference/window as parquet here")
    ap.add_argument("--anchors", action="store_true", help="run Evidently/Alibi (not yet)")
    args = ap.parse_args(argv)

    if args.anchors:
        print(
            "--anchors is not implemented: it would create bench/.venv-anchors with "
            "evidently and alibi-detect (numpy<2, pandas<3) and run them on --save-data output.",
            file=sys.stderr,
        )
        return 2

    rng = np.random.default_rng(args.seed)
    reference = make_table(rng, args.rows, drifted=False)
    window = make_table(rng, args.rows, drifted=True)
    if args.save_data:
        args.save_data.mkdir(parents=True, exist_ok=True)
        reference.to_parquet(args.save_data / "reference.parquet")
        window.to_parquet(args.save_data / "window.parquet")

    t0 = time.perf_counter()
    profile = build_profile(reference, "bench", created_at="-")
    print(
        f"profile of {args.rows} x {reference.shape[1]} built in {time.perf_counter() - t0:.2f} s"
    )

    truth = set(SHIFTS) | {MIX_CHANGED}
    batch_size = args.batch_size or args.rows
    print(f"window: {args.rows} rows in batches of {batch_size}; drifted: {sorted(truth)}")
    for method in args.methods:
        seconds, flagged, stat = run(method, profile, window, batch_size)
        tp = len(flagged & truth)
        fp = len(flagged - truth)
        missed = sorted(truth - flagged)
        print(
            f"{method:12s} {seconds:7.3f} s   TP {tp}/{len(truth)}  FP {fp}   "
            f"max effect {stat:.3f}   missed {missed}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
