"""The snapshot's labeled rows: time order (the sort is skipped only when it changes nothing)
and the recent frame (renamed and selected before it is built: the same table)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pandas as pd

from driftwarden.retrain.labeled_store import LabeledStore, flatten_rows
from driftwarden.retrain.pipeline import RetrainRequest, _recent_frame, _recent_rows


def _request(**data: Any) -> RetrainRequest:
    return RetrainRequest(
        model="churn",
        trigger={},
        action_key="k",
        trainer="t:f",
        gates={},
        target="y",
        features=["x"],
        data=data,
    )


def _expected(store: LabeledStore, recent: int | None) -> list[str]:
    rows = [r for r in store.rows("churn") if r.get("label") is not None]
    if recent is not None:
        rows = rows[-recent:] if recent > 0 else []
    rows.sort(key=lambda r: (r.get("timestamp") is None, r.get("timestamp") or 0.0))
    return [r["prediction_id"] for r in rows]


def test_recent_rows_in_time_order(tmp_path: Path) -> None:
    rng = random.Random(5)
    cases: dict[str, list[Any]] = {
        "in_order": [float(i) for i in range(40)],
        "ties": [float(i // 3) for i in range(40)],
        "shuffled": rng.sample([float(i) for i in range(40)], 40),
        "with_none": [None if i % 7 == 0 else float(i) for i in range(40)],
        "zero_and_none": [0.0, None, 0, 1.0, None, 0.5] * 5,
    }
    for name, stamps in cases.items():
        store = LabeledStore(tmp_path / name)
        store.append(
            "churn",
            [
                {
                    "prediction_id": f"p{i}",
                    "features": {"x": i},
                    "label": None if i % 11 == 5 else i % 2,
                    "timestamp": ts,
                }
                for i, ts in enumerate(stamps)
            ],
        )
        for recent in (None, 0, 7, 1000):
            request = _request() if recent is None else _request(recent=recent)
            got = [r["prediction_id"] for r in _recent_rows(request, store.rows("churn"))]
            assert got == _expected(store, recent), (name, recent)


def _old_recent_frame(request: RetrainRequest, rows: list[Any]) -> pd.DataFrame:
    """``_recent_frame`` as it was: rename and select on the flattened frame."""
    frame = flatten_rows(rows).rename(columns={"label": request.target})
    meta = ("score", "predicted", "value", "timestamp", "prediction_id", "model_version")
    keep = [c for c in frame.columns if c not in meta or c in ("timestamp", "prediction_id")]
    return frame[keep]


def test_recent_frame_equals_rename_and_select() -> None:
    rows: list[dict[str, Any]] = [
        {
            "prediction_id": f"p{i}",
            "features": {"x": float(i), "plan": "pro" if i % 2 else None, "n": i},
            "prediction": {"label": 1, "score": 0.5} if i % 3 else {},
            "label": i % 2,
            "segment": {"tier": "a", "x": "clash"},
            "timestamp": 1000.0 + i,
            "model_version": "2",
        }
        for i in range(30)
    ]
    # target names: usual, "label" itself, a feature's, a meta column's, a renamed segment's
    for target in ("y", "label", "x", "score", "timestamp", "segment.x"):
        request = RetrainRequest(
            model="m", trigger={}, action_key="k", trainer="t:f", gates={}, target=target,
            features=["x"],
        )  # fmt: skip
        for part in (rows, rows[:1], []):
            got, want = _recent_frame(request, part), _old_recent_frame(request, part)
            assert list(got.columns) == list(want.columns), target
            assert list(got.dtypes) == list(want.dtypes), target
            pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_train_table_equals_sample_drop_filter() -> None:
    """_train_table is the four-step form it replaced: the same rows, order, index, dtypes."""
    import numpy as np

    from driftwarden.retrain.pipeline import _train_table

    rng = np.random.default_rng(3)
    for n_ref, n_recent, gaps in ((50, 30, True), (0, 12, False), (20, 0, True), (1, 1, False)):
        reference = pd.DataFrame(
            {
                "x": rng.random(n_ref),
                "plan": rng.choice(["a", "b"], n_ref),
                "y": rng.integers(0, 2, n_ref),
            }
        )
        y = rng.integers(0, 2, n_recent).astype(float)
        if gaps:
            y[::4] = np.nan
        recent = pd.DataFrame(
            {
                "x": rng.random(n_recent),
                "plan": rng.choice(["a", "b"], n_recent),
                "y": y,
                "timestamp": rng.random(n_recent),
                "prediction_id": [f"p{i}" for i in range(n_recent)],
            }
        )
        for seed in (0, 7):
            request = RetrainRequest(
                model="m", trigger={}, action_key="k", trainer="t:f", gates={}, target="y",
                features=["x"], seed=seed,
            )  # fmt: skip
            old = pd.concat([reference, recent], ignore_index=True)
            old = old.sample(frac=1.0, random_state=seed).reset_index(drop=True)
            old = old.drop(columns=["timestamp", "prediction_id"], errors="ignore")
            old = old[old["y"].notna()]
            pd.testing.assert_frame_equal(
                _train_table(request, reference, recent), old, check_exact=True
            )
