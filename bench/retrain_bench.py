"""Bench (not a test): trigger → registered candidate vs the bare trainer on the same data.

Starts its own mlflow server (SQLite, temp dir), bootstraps a champion, then times
``run_retrain`` for a passing candidate (snapshot, data gate, train, evaluate both models,
MLflow run with artifacts, register, alias) against calling the trainer alone on the same
training rows, and prints the ratio (target ≤ 2×). Overheads are fixed costs (MLflow calls,
loading the champion), so the ratio falls as training gets heavier: ``--rows`` sets it.

The headline ratio is median(attempt) / median(bare trainer), the two measured alternately.
On a shared machine the trainer's own time swings several-fold between runs, so the bench
also prints the paired form: each attempt's total over the trainer's time inside that same
attempt (``report["seconds"]["train"]``), and the overhead as total minus that.
The first attempt loads the champion from MLflow; later ones reuse it (the daemon keeps the
loaded champion per model version too), as they reuse the registered model and experiment.

    .venv/bin/python bench/retrain_bench.py --rows 20000 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "config"), str(ROOT)]

import pandas as pd  # noqa: E402
from examples.churn import FEATURES, TARGET, generate, to_rows  # noqa: E402
from examples.churn import train as churn_train  # noqa: E402

from driftwarden.retrain.labeled_store import LabeledStore  # noqa: E402
from driftwarden.retrain.pipeline import RetrainRequest, run_retrain  # noqa: E402
from driftwarden.retrain.registry import Registry  # noqa: E402
from tests.fixtures.mlflow_server import MlflowServer  # noqa: E402


def main() -> int:
    """Run the bench and print the timings."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000, help="reference rows")
    ap.add_argument("--recent", type=int, default=5_000, help="recent labeled rows")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-iter", type=int, default=200, help="GBM iterations")
    ap.add_argument(
        "--no-early-stopping",
        dest="early_stopping",
        action="store_false",
        help="train all --max-iter iterations (a heavier, more realistic trainer)",
    )
    ap.add_argument(
        "--daemon-gc",
        action="store_true",
        help="garbage collector tuned as the daemon's CLI tunes it (gc.freeze() after start-up, "
        "thresholds 50000/20/100) instead of Python's defaults",
    )
    args = ap.parse_args()

    server = MlflowServer(Path(tempfile.mkdtemp(prefix="retrain-bench-")))
    server.start()
    try:
        registry = Registry(server.uri)
        store = LabeledStore(tempfile.mkdtemp(prefix="retrain-bench-store-"))
        model = "churn-bench"
        reference = generate(args.rows, seed=1)
        store.append(model, to_rows(generate(args.recent, seed=2), prefix="a"))
        params = {"kind": "gbm", "max_iter": args.max_iter, "early_stopping": args.early_stopping}
        base = {
            "model": model,
            "target": TARGET,
            "features": FEATURES,
            "segments": ["customer_tier"],
            "trainer": "examples.churn:train",
            "search_paths": [str(ROOT / "config")],
            "params": params,
            "gates": {"min": {"roc_auc": 0.6}, "max_regression": {"roc_auc": 0.05}},
        }
        boot = run_retrain(
            RetrainRequest(trigger={}, action_key="boot", promote="auto", **base),
            registry=registry,
            store=store,
            reference_data=reference,
            code_version="bench",
        )
        assert boot.status == "registered", boot.reasons
        if args.daemon_gc:  # as driftwarden.daemon.cli does once the daemon is built
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)

        recent = store.frame(model).rename(columns={"label": TARGET})
        n_hold = round(len(recent) * 0.3)
        train_rows = pd.concat([reference, recent.iloc[: len(recent) - n_hold]], ignore_index=True)
        bare, full, inner = [], [], []
        stages: dict[str, list[float]] = {"prepare": [], "evaluate": [], "MLflow + rest": []}
        for i in range(args.repeat):
            t0 = time.perf_counter()
            churn_train(train_rows, target=TARGET, features=FEATURES, params=params)
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = run_retrain(
                RetrainRequest(trigger={}, action_key=f"bench-{i}", **base),
                registry=registry,
                store=store,
                reference_data=reference,
                code_version="bench",
            )
            full.append(time.perf_counter() - t0)
            assert out.status == "registered", out.reasons
            seconds = out.report["seconds"]
            inner.append(float(seconds["train"]))
            stages["prepare"].append(float(seconds["prepare"]))
            stages["evaluate"].append(float(seconds["evaluate"]))
            stages["MLflow + rest"].append(full[-1] - sum(map(float, seconds.values())))
            print(f"  attempt {i}: stages {seconds} total {full[-1]:.2f} s")
        b, f = statistics.median(bare), statistics.median(full)
        print(f"rows: reference={args.rows} recent={args.recent} train={len(train_rows)}")
        print(f"bare trainer      median {b:7.2f} s  {[round(x, 2) for x in bare]}")
        print(f"trigger→registered median {f:7.2f} s  {[round(x, 2) for x in full]}")
        print(f"fixed overhead    median {f - b:7.2f} s")
        print(f"ratio {f / b:.2f}x (target <= 2x)")
        paired = [x / t for x, t in zip(full, inner, strict=True)]
        over = [x - t for x, t in zip(full, inner, strict=True)]
        print(
            f"paired: attempt / its own trainer time median {statistics.median(paired):.2f}x "
            f"{[round(r, 2) for r in paired]}; overhead median {statistics.median(over):.2f} s "
            f"{[round(o, 2) for o in over]}"
        )
        # Where the overhead goes: prepare = snapshot + hash + data gate (+ champion, first
        # attempt), evaluate = both models on the holdout, the rest = the MLflow run, the saved
        # model and profile, registration and aliases.
        print(
            "overhead by stage median: "
            + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in stages.items())
            + ("; GC as in the daemon" if args.daemon_gc else "; Python's default GC")
        )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
