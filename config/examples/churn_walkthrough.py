"""The churn walkthrough: train with tracking, compare runs, gate, register, load for inference.

Run it against a tracking server (the registry needs a database store)::

    mlflow server --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlruns \\
        --host 127.0.0.1 --port 5000 --workers 1 &
    python config/examples/churn_walkthrough.py --tracking-uri http://127.0.0.1:5000

Steps, all through driftwarden's retrain pipeline (the same code the daemon runs):

1. bootstrap: train a first churn model, tracked as an MLflow run, and promote it
   (``promote: auto``) — ``models:/churn@champion`` now exists;
2. a gate that fails: a candidate is held to ``min roc_auc 0.99`` — it is tracked but not
   registered, and its validation report says why;
3. a gate that passes: a boosted candidate with realistic gates is registered as
   ``challenger``; the two runs are compared side by side;
4. broken input: recent rows whose nulls were filled with 0 are blocked by the data gate
   before any training;
5. approval: the challenger is approved by hand (``champion`` moves, ``previous`` is kept),
   and ``models:/churn@champion`` is loaded for inference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import mlflow
import mlflow.sklearn

CONFIG_DIR = Path(__file__).resolve().parents[1]
if str(CONFIG_DIR) not in sys.path:  # the daemon does the same for trainers
    sys.path.insert(0, str(CONFIG_DIR))

from driftwarden.retrain.labeled_store import LabeledStore  # noqa: E402
from driftwarden.retrain.pipeline import RetrainRequest, run_retrain  # noqa: E402
from driftwarden.retrain.registry import Registry  # noqa: E402
from examples.churn import FEATURES, TARGET, generate, to_rows  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the walkthrough; returns the exit code."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--model", default="churn")
    ap.add_argument("--store", default=None, help="labeled store folder (default: a temp dir)")
    args = ap.parse_args(argv)

    # models:/ URIs are resolved through the process-wide URI (a script may set it; the
    # daemon never does and passes its URI to Registry explicitly).
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_registry_uri(args.tracking_uri)
    registry = Registry(args.tracking_uri)
    store = LabeledStore(args.store or tempfile.mkdtemp(prefix="churn-store-"))
    model = args.model
    reference = generate(3000, seed=1)
    base = {
        "model": model,
        "target": TARGET,
        "features": FEATURES,
        "segments": ["customer_tier", "region"],
        "trainer": "examples.churn:train",
        "search_paths": [str(CONFIG_DIR)],
    }

    def retrain(key: str, **kw: object) -> object:
        request = RetrainRequest(
            **{"trigger": {"key": key, "rule": "walkthrough"}, "action_key": key, **base, **kw}
        )
        out = run_retrain(
            request,
            registry=registry,
            store=store,
            reference_data=reference,
            code_version="walkthrough",
        )
        print(f"[{key}] {out.status} version={out.version} run={out.run_id}")
        for reason in out.reasons:
            print(f"    - {reason}")
        return out

    store.append(model, to_rows(generate(1000, seed=2), prefix="a"))
    retrain(
        "1-bootstrap", promote="auto", params={"kind": "logistic"}, gates={"min": {"roc_auc": 0.6}}
    )

    store.append(model, to_rows(generate(1500, seed=3, shift=0.3), start=10_000, prefix="b"))
    strict = {"min": {"roc_auc": 0.99}, "max_regression": {"roc_auc": 0.01}}
    failed = retrain("2-strict-gate", params={"kind": "logistic", "C": 0.01}, gates=strict)
    realistic = {
        "min": {"roc_auc": 0.70},
        "max_regression": {"roc_auc": 0.01},
        "slices": {"customer_tier": {"max_drop": {"recall": 0.05}, "min_samples": 30}},
        "min_holdout": 200,
    }
    passed = retrain("3-realistic-gate", params={"kind": "logistic"}, gates=realistic)

    print("\nrun comparison (holdout, same rows for both):")
    for label, out in (("strict-gate candidate", failed), ("realistic-gate candidate", passed)):
        run = registry.client.get_run(out.run_id)  # type: ignore[attr-defined]
        m = run.data.metrics
        print(
            f"  {label:26s} roc_auc={m.get('candidate.roc_auc', float('nan')):.3f} "
            f"champion={m.get('champion.roc_auc', float('nan')):.3f} "
            f"recall={m.get('candidate.recall', float('nan')):.3f}"
        )

    store.append(model, to_rows(generate(800, seed=4, null_as_zero=0.4), start=20_000, prefix="c"))
    retrain("4-broken-input", params={"kind": "gbm"}, gates=realistic, data={"recent": 800})

    challenger = registry.version_by_alias(model, "challenger")
    if challenger is not None:
        for move in registry.approve(model, challenger, "walkthrough-user", "reviewed the report"):
            print(f"alias {move.alias}: {move.previous_version} -> {move.version}")
    champion = mlflow.sklearn.load_model(f"models:/{model}@champion")
    sample = generate(5, seed=99)
    scores = champion.predict_proba(sample[FEATURES])[:, 1].round(3)
    print(f"\nmodels:/{model}@champion scores:", scores)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
