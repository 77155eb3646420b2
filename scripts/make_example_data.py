"""Regenerate the bundled example data (deterministic): the churn profile and an event file.

    python scripts/make_example_data.py

Writes ``config/profiles/churn.json`` (the reference profile of the example churn model,
version 1, built from its validation split) and ``config/examples/events.jsonl.gz``: 20 000
predictions of a clean period, then the seed's incident — an upstream pipeline starts filling
missing ``days_since_last_login`` and ``monthly_spend`` with 0 — for 10 000 more, with labels for
about 60 % of predictions, arriving minutes later.
"""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np
import orjson

from driftwarden.daemon.events import LABEL_SCHEMA, PREDICTION_SCHEMA, format_time
from driftwarden.detectors.profile import build_profile

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_795_000_000.0


def _churn():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "example_churn", ROOT / "config/examples/churn.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["example_churn"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    churn = _churn()
    train = churn.generate(20_000, seed=1)
    model = churn.train(
        train, target=churn.TARGET, features=churn.FEATURES, params={"kind": "logistic"}
    )
    valid = churn.generate(10_000, seed=2)
    valid["score"] = model.predict_proba(valid[churn.FEATURES])[:, 1]
    valid["predicted"] = (valid["score"] >= 0.5).astype(int)
    profile = build_profile(
        valid,
        "churn",
        target=churn.TARGET,
        prediction="predicted",
        score="score",
        segments=churn.SEGMENTS,
        model_version="1",
        created_at="2026-11-18T00:00:00Z",
    )
    out = ROOT / "config/profiles/churn.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    profile.save(out)

    clean = churn.generate(20_000, seed=3)
    broken = churn.generate(10_000, seed=4, null_as_zero=0.38)
    stream = __import__("pandas").concat([clean, broken], ignore_index=True)
    scores = model.predict_proba(stream[churn.FEATURES])[:, 1]
    rng = np.random.default_rng(5)
    delays = rng.exponential(600.0, len(stream)) + 30.0
    labeled = rng.random(len(stream)) < 0.6
    records: list[tuple[float, bytes]] = []
    for i, row in enumerate(stream.to_dict("records")):
        ts = T0 + i * 2.0
        pid = f"churn-{i}"
        records.append(
            (
                ts,
                orjson.dumps(
                    {
                        "schema": PREDICTION_SCHEMA,
                        "prediction_id": pid,
                        "model": "churn",
                        "model_version": "1",
                        "timestamp": format_time(ts),
                        "features": {k: row[k] for k in churn.FEATURES},
                        "prediction": {
                            "label": int(scores[i] >= 0.5),
                            "score": round(float(scores[i]), 6),
                        },
                        "segment": {k: row[k] for k in churn.SEGMENTS},
                    }
                ),
            )
        )
        if labeled[i]:
            lts = ts + float(delays[i])
            records.append(
                (
                    lts,
                    orjson.dumps(
                        {
                            "schema": LABEL_SCHEMA,
                            "prediction_id": pid,
                            "model": "churn",
                            "timestamp": format_time(round(lts, 3)),
                            "label": int(row[churn.TARGET]),
                        }
                    ),
                )
            )
    records.sort(key=lambda r: r[0])
    events = ROOT / "config/examples/events.jsonl.gz"
    with gzip.GzipFile(events, "wb", mtime=0) as fh:
        for _, raw in records:
            fh.write(raw + b"\n")
    print(f"wrote {out} and {events} ({len(records)} events)")


if __name__ == "__main__":
    main()
