"""The snapshot's labeled rows: time order (the sort is skipped only when it changes nothing)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from driftwarden.retrain.labeled_store import LabeledStore
from driftwarden.retrain.pipeline import RetrainRequest, _recent_rows


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
            got = [r["prediction_id"] for r in _recent_rows(request, store)]
            assert got == _expected(store, recent), (name, recent)
