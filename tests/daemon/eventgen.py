"""Seeded churn-like prediction and label events for the daemon's tests and benches.

``reference_table`` is the model's validation split (what the profile is built from);
``events`` yields the matching prediction and label events, optionally with the seed's
incident (a pipeline fills missing ``days_since_last_login`` with 0) from a given index, and
``malformed`` yields bad records of many kinds.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from driftwarden.daemon.events import LABEL_SCHEMA, PREDICTION_SCHEMA, format_time

T0 = 1_795_000_000.0  # 2026-11-18, a fixed event-time origin


def _rows(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    days = np.round(rng.exponential(12.0, n))
    plan = rng.choice(["free", "pro", "business"], n, p=[0.5, 0.35, 0.15])
    age = np.clip(np.round(rng.normal(40, 11, n)), 18, 85)
    tier = rng.choice(["smb", "midmarket", "enterprise"], n, p=[0.7, 0.24, 0.06])
    region = rng.choice(["eu", "us", "apac"], n, p=[0.4, 0.4, 0.2])
    logit = -1.5 + 0.08 * days - 0.01 * (age - 40) + np.where(plan == "free", 0.5, -0.3)
    score = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(n) < score).astype(int)
    null = rng.random(n) < 0.01
    return {
        "days": days,
        "plan": plan,
        "age": age,
        "tier": tier,
        "region": region,
        "score": score,
        "label": label,
        "null": null,
    }


def reference_table(n: int = 20_000, seed: int = 1) -> pd.DataFrame:
    """The validation split the reference profile is built from."""
    r = _rows(np.random.default_rng(seed), n)
    days = r["days"].astype(float)
    days[r["null"]] = np.nan
    return pd.DataFrame(
        {
            "days_since_last_login": days,
            "plan": r["plan"],
            "user_age": r["age"],
            "score": r["score"],
            "predicted": (r["score"] >= 0.5).astype(int),
            "churned": r["label"],
            "customer_tier": r["tier"],
            "region": r["region"],
        }
    )


def save_profile(path: Path, model: str = "churn") -> Path:
    """The reference profile of :func:`reference_table` (segments tier and region) at ``path``."""
    from driftwarden.detectors.profile import build_profile

    build_profile(
        reference_table(),
        model,
        target="churned",
        prediction="predicted",
        score="score",
        segments=["customer_tier", "region"],
    ).save(path)
    return path


@dataclass(frozen=True)
class Event:
    """One encoded event and its topic role."""

    role: str  # "predictions" | "labels"
    model: str
    value: bytes
    timestamp: float


def events(
    n: int,
    *,
    seed: int = 2,
    model: str = "churn",
    label_share: float = 0.6,
    early_label_share: float = 0.05,
    incident_from: int | None = None,
    incident_to: int | None = None,
    rate_per_s: float = 10.0,
) -> Iterator[Event]:
    """``n`` predictions (and labels for ``label_share`` of them), in publication order.

    Labels are published after their prediction (a few before it, ``early_label_share``), with
    event times a few minutes later; the rest never get one. The incident lasts from prediction
    ``incident_from`` up to (not including) ``incident_to`` (default: to the end).
    """
    rng = np.random.default_rng(seed)
    r = _rows(rng, n)
    delays = rng.exponential(300.0, n) + 1.0
    labeled = rng.random(n) < label_share
    early = rng.random(n) < early_label_share
    pending: list[tuple[float, int]] = []  # (label publish time, i) — labels go out in time order
    for i in range(n):
        ts = T0 + i / rate_per_s
        days: float | None = float(r["days"][i])
        if r["null"][i]:
            days = None
        if incident_from is not None and incident_from <= i < (incident_to or n):
            if days is None or rng.random() < 0.37:
                days = 0.0  # the broken pipeline fills missing values with 0
        pred = {
            "schema": PREDICTION_SCHEMA,
            "prediction_id": f"{model}-{seed}-{i}",
            "model": model,
            "model_version": "1",
            "timestamp": format_time(ts),
            "features": {
                "days_since_last_login": days,
                "plan": str(r["plan"][i]),
                "user_age": float(r["age"][i]),
            },
            "prediction": {"label": int(r["score"][i] >= 0.5), "score": float(r["score"][i])},
            "segment": {"customer_tier": str(r["tier"][i]), "region": str(r["region"][i])},
        }
        label_doc = {
            "schema": LABEL_SCHEMA,
            "prediction_id": pred["prediction_id"],
            "model": model,
            "timestamp": format_time(ts + delays[i]),
            "label": int(r["label"][i]),
        }
        if labeled[i] and early[i]:
            # The prediction's publisher lags: its label (known a moment later) goes out first.
            label_doc["timestamp"] = format_time(ts + 0.5)
            yield Event("labels", model, orjson.dumps(label_doc), ts + 0.5)
        while pending and pending[0][0] <= ts:
            _, j = pending.pop(0)
            yield _label_of(model, seed, j, r, delays)
        yield Event("predictions", model, orjson.dumps(pred), ts)
        if labeled[i] and not early[i]:
            pending.append((ts + delays[i], i))
            pending.sort()
    for _, j in pending:
        yield _label_of(model, seed, j, r, delays)


def _label_of(model: str, seed: int, j: int, r: dict[str, np.ndarray], delays: np.ndarray) -> Event:
    ts = T0 + j / 10.0 + delays[j]
    doc = {
        "schema": LABEL_SCHEMA,
        "prediction_id": f"{model}-{seed}-{j}",
        "model": model,
        "timestamp": format_time(ts),
        "label": int(r["label"][j]),
    }
    return Event("labels", model, orjson.dumps(doc), ts)


def interleave(
    streams: Sequence[Iterator[Event]],
    models: Sequence[str],
    bad: Sequence[bytes],
    bad_rate: float,
    rng: random.Random,
) -> Iterator[tuple[str, str, bytes, bool]]:
    """Several models' event streams mixed at random, as one publication order, with a malformed
    record after a valid one at ``bad_rate`` (alternately on predictions and labels, keyed by the
    models in turn). Yields (role, model key, value, is_malformed)."""
    live = list(range(len(streams)))
    sent_bad = 0
    while live:
        i = rng.choice(live)
        ev = next(streams[i], None)
        if ev is None:
            live.remove(i)
            continue
        yield ev.role, ev.model, ev.value, False
        if sent_bad < len(bad) and rng.random() < bad_rate:
            role = "predictions" if sent_bad % 2 == 0 else "labels"
            yield role, models[sent_bad % len(models)], bad[sent_bad], True
            sent_bad += 1


GOOD = orjson.loads(
    b'{"schema":"driftwarden.prediction/v1","prediction_id":"x","model":"churn","model_version":"1",'
    b'"timestamp":"2026-11-20T00:00:00Z","features":{"user_age":40},"prediction":{"score":0.5}}'
)


def malformed(n: int, seed: int = 3, max_bytes: int = 1_048_576) -> list[bytes]:
    """``n`` malformed records cycling through many kinds of breakage."""
    kinds = [
        lambda i: b"{not json " + str(i).encode(),
        lambda i: b"",
        lambda i: orjson.dumps(
            {**GOOD, "prediction_id": f"bad-{i}", "schema": "driftwarden.prediction/v0"}
        ),
        lambda i: orjson.dumps({k: v for k, v in GOOD.items() if k != "features"}),
        lambda i: orjson.dumps({**GOOD, "prediction_id": i}),
        lambda i: orjson.dumps(GOOD).replace(b"0.5", b"NaN"),
        lambda i: orjson.dumps({**GOOD, "features": {"user_age": [1, 2]}}),
        lambda i: orjson.dumps({**GOOD, "timestamp": "not a time"}),
        lambda i: b"[" * 5000 + b"]" * 5000,
        lambda i: b'{"pad": "' + b"x" * (max_bytes + 10) + b'"}',
        lambda i: b"\xff\xfe\x00garbage",
        lambda i: orjson.dumps({**GOOD, "prediction": {"score": "0.9"}}),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]
