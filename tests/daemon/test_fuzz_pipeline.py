"""Fuzzing past the decoder: valid-but-odd events through the whole daemon.

The contract says feature values are numbers, strings, booleans or null, and that the daemon
never crashes on input. The decoder's fuzz tests (test_fuzz_events.py) cover what is refused;
these feed what is *accepted* — huge and tiny numbers, a string where the profile has numbers,
booleans, nulls, missing and extra features, labels of every type, scores outside [0, 1],
timestamps from 1970 to 2100 and out of order, labels for unknown predictions, duplicate ids,
other models — through the monitors, detectors, windows, decisions, the log receiver and
checkpoints of one long-lived in-memory daemon, which must neither raise nor write a
checkpoint a restarted daemon cannot restore (checked after every batch).

Seeded (Python's ``random``): CI sees the same events on every run.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from driftwarden.daemon.client import label_event, prediction_event
from driftwarden.daemon.events import InvalidEvent, format_time
from driftwarden.daemon.sources import RawRecord
from driftwarden.detectors.profile import ReferenceProfile
from tests.daemon.embedded import ROOT, embedded_config

# The features the churn policy's reference profile knows (the fuzzing mixes in others).
FEATURES = sorted(ReferenceProfile.load(ROOT / "config/profiles/churn.json").features)

_ODD_NUMBERS = [0, -1, 999, 0.0, -0.0, 1e-308, 5e-324, 1.7976931348623157e308, -(2**63), 2**63 - 1]
_ODD_TEXT = [
    "",
    "pro",
    "free",
    "business",
    "NaN",
    "inf",
    "0",
    "\u00e9t\u00e9",
    "\U0001f600",
    "x" * 300,
]


def _number(rng: random.Random) -> Any:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(_ODD_NUMBERS)
    if kind == 1:
        return rng.randint(-(2**63), 2**63 - 1)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    return rng.gauss(0, 1) * 10 ** rng.randint(-300, 300)


def _value(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind in (2, 3):
        return _number(rng)
    if kind == 4:
        return rng.choice(_ODD_TEXT)
    return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(12)))


def _prediction(rng: random.Random, ids: list[str]) -> bytes:
    names = rng.sample(FEATURES, rng.randrange(len(FEATURES) + 1))
    features = {n: _value(rng) for n in names}
    for _ in range(rng.randrange(3)):
        features[rng.choice(["extra", "", "days_since_last_login ", "PLAN"])] = _value(rng)
    kind = rng.randrange(3)
    if kind == 0:
        pred = {"label": rng.choice([0, 1, "yes", True, 2.5, _number(rng)])}
    elif kind == 1:
        pred = {"label": rng.choice([0, 1]), "score": rng.choice([rng.random(), _number(rng)])}
    else:
        pred = {"value": _number(rng)}
    segment = {
        k: rng.choice(["enterprise", "smb", "", _value(rng)])
        for k in rng.sample(["customer_tier", "region", "x"], rng.randrange(4))
    }
    pid = rng.choice(ids) if ids and rng.random() < 0.05 else f"p-{rng.getrandbits(64):x}"
    return prediction_event(
        rng.choice(["churn", "churn", "churn", "other-model"]),
        rng.choice(["1", "2", "x"]),
        features,
        pred,
        segment=segment,
        prediction_id=pid,
        timestamp=format_time(_time(rng)),
    )


def _time(rng: random.Random) -> float:
    if rng.random() < 0.9:  # mostly near "now" of the stream, out of order by minutes
        return 1_795_000_000.0 + rng.uniform(-600, 600)
    return rng.uniform(0.0, 4_102_444_800.0)  # 1970 .. 2100


def _label(rng: random.Random, ids: list[str]) -> bytes:
    pid = rng.choice(ids) if ids and rng.random() < 0.8 else f"p-{rng.getrandbits(64):x}"
    value = rng.choice([0, 1, 0, 1, _number(rng), "yes", True, ""])
    return label_event("churn", pid, value, timestamp=format_time(_time(rng)))


def _price(rng: random.Random, ids: list[str]) -> bytes:
    """A regression model's prediction (value) or label (a number, or an odd one)."""
    if ids and rng.random() < 0.3:
        value = rng.choice([_number(rng), _number(rng), rng.gauss(100, 10), "x", True])
        return label_event("price", rng.choice(ids), value, timestamp=format_time(_time(rng)))
    features = {
        "x1": rng.choice([rng.gauss(0, 1), _value(rng)]),
        "x2": rng.choice([rng.gauss(5, 2), _number(rng)]),
        "c": rng.choice(["a", "b", "c", _value(rng)]),
    }
    return prediction_event(
        "price",
        "1",
        features,
        {"value": rng.choice([rng.gauss(100, 10), _number(rng)])},
        segment={"region": rng.choice(["eu", "us", _value(rng)])},
        prediction_id=f"r-{rng.getrandbits(64):x}",
        timestamp=format_time(_time(rng)),
    )


_PRICE_POLICY = """\
apiVersion: driftwarden/v1
kind: Policy
model: price
reference: file:{profile}
window: {{events: 1000, labeled: {{events: 300}}}}
detectors:
  - {{name: quality, type: data_quality}}
  - {{name: drift_w, type: feature_drift, method: wasserstein, threshold: 0.1, features: all}}
  - {{name: drift_ks, type: feature_drift, method: ks, threshold: 0.1, features: all}}
  - {{name: drift_psi, type: feature_drift, method: psi, threshold: 0.2, features: all}}
  - {{name: scores, type: prediction_drift, method: wasserstein, threshold: 0.1}}
  - {{name: rmse_eu, type: slice_performance, metric: rmse, slice: {{region: eu}}, min_samples: 20}}
  - {{name: mae_by, type: slice_performance, metric: mae, by: region, min_samples: 20}}
  - {{name: errors, type: concept_drift, method: adwin}}
  - {{name: errors_ph, type: concept_drift, method: page_hinkley}}
  - {{name: errors_ks, type: concept_drift, method: kswin}}
rules:
  - {{name: any, when: quality or drift_w or drift_ks or drift_psi or scores or rmse_eu or mae_by or errors or errors_ph or errors_ks, severity: info, actions: [{{alert: log}}]}}
receivers:
  log: {{type: log}}
"""


def _policies(tmp: Path) -> Path:
    """The embedded churn policy (classification) and a regression policy with every
    regression-capable detector, on a profile built here."""
    import numpy as np
    import pandas as pd

    from driftwarden.detectors.profile import build_profile

    rng = np.random.default_rng(7)
    n = 3000
    x1, x2 = rng.normal(0, 1, n), rng.normal(5, 2, n)
    y = 100 + 10 * x1 + rng.normal(0, 5, n)
    df = pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "c": rng.choice(["a", "b", "c"], n),
            "region": rng.choice(["eu", "us"], n),
            "y": y,
            "yhat": y + rng.normal(0, 3, n),
        }
    )
    profile = build_profile(
        df, "price", target="y", prediction="yhat", segments=["region"], task="regression"
    )
    folder = tmp / "policies"
    folder.mkdir()
    profile.save(tmp / "price.json")
    (folder / "price.yaml").write_text(_PRICE_POLICY.format(profile=tmp / "price.json"))
    churn = (ROOT / "config/embedded/policies/churn.yaml").read_text()
    churn = churn.replace("file:../../profiles/", f"file:{ROOT / 'config/profiles'}/")
    (folder / "churn.yaml").write_text(churn)
    return folder


@pytest.mark.parametrize("seed", range(8))
def test_odd_valid_events_never_crash_the_daemon(tmp_path: Path, seed: int) -> None:
    from driftwarden.daemon.app import build_daemon
    from driftwarden.daemon.settings import load_settings
    from driftwarden.daemon.sinks import MemorySink

    cfg = embedded_config(tmp_path, policies=_policies(tmp_path))
    sink = MemorySink()
    daemon = build_daemon(load_settings(cfg, env={}), sink=sink)
    daemon.assign([0])
    rng = random.Random(seed)
    ids: list[str] = []
    price_ids: list[str] = []
    offset = 0
    for _ in range(12):  # 12 batches of 500: several windows of 2000 events close
        records = []
        for _ in range(500):
            try:
                r = rng.random()
                if r < 0.2:
                    raw = _label(rng, ids)
                elif r < 0.5:
                    raw = _price(rng, price_ids)
                    if b'"prediction"' in raw:
                        price_ids.append(orjson.loads(raw)["prediction_id"])
                else:
                    raw = _prediction(rng, ids)
                    ids.append(orjson.loads(raw)["prediction_id"])
            except InvalidEvent:
                continue  # the client refuses what the contract refuses: not this test's input
            records.append(RawRecord("file", 0, offset, None, raw))
            offset += 1
        ids, price_ids = ids[-2000:], price_ids[-2000:]
        daemon.process(records)
        daemon.tick()
        daemon.checkpoint()
        # A restart from this checkpoint restores every model and detector state.
        again = build_daemon(load_settings(cfg, env={}), sink=MemorySink())
        assert again.assign([0]) == {("file", 0): offset}
        assert set(again.units[0].models) == set(daemon.units[0].models)
    assert daemon.summary.windows > 0
    assert daemon.summary.invalid == 0  # every record was valid: none went to the DLQ


def test_a_model_whose_processing_raises_goes_to_the_dlq_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (or input nothing foresaw) that raises inside one model's pipeline must not stop
    the daemon — a crash would loop on the same records after every restart and leave every
    model of the partition unwatched. That model's records of the batch go to the dead-letter
    topic with the error (nothing lost); the other models, and later batches, go on."""
    from driftwarden.daemon.app import build_daemon
    from driftwarden.daemon.monitor import ModelMonitor
    from driftwarden.daemon.settings import load_settings
    from driftwarden.daemon.sinks import MemorySink

    cfg = embedded_config(tmp_path, policies=_policies(tmp_path))
    sink = MemorySink()
    daemon = build_daemon(load_settings(cfg, env={}), sink=sink)
    daemon.assign([0])
    process = ModelMonitor.process

    def poisoned(self: ModelMonitor, evs: list[Any]) -> Any:
        if any(getattr(e, "prediction_id", "").startswith("poison") for e in evs):
            raise RuntimeError("a detector bug")
        return process(self, evs)

    monkeypatch.setattr(ModelMonitor, "process", poisoned)
    rng = random.Random(1)
    churn = [
        prediction_event(
            "churn",
            "1",
            {"plan": "pro", "user_age": 40},
            {"label": 1, "score": 0.7},
            prediction_id=("poison-" if i == 3 else "ok-") + str(i),
            timestamp=format_time(_time(rng)),
        )
        for i in range(10)
    ]
    price = [_price(rng, []) for _ in range(10)]
    records = [RawRecord("file", 0, i, None, raw) for i, raw in enumerate(churn + price)]
    daemon.process(records)  # does not raise

    dlq = [orjson.loads(v) for _, v, _ in sink.records.get("driftwarden.dlq", [])]
    assert [d["source"]["offset"] for d in dlq] == list(range(10))  # churn's, all of them
    assert all(d["error_class"] == "ProcessingError" for d in dlq)
    assert all(
        "processing failed for model 'churn': RuntimeError: a detector bug" in d["reason"]
        for d in dlq
    )
    assert daemon.units[0].models["price"].events == 10  # the other model went on
    assert daemon.summary.valid == 10 and daemon.summary.invalid == 10
    assert (
        daemon.metrics.registry.get_sample_value(
            "driftwarden_processing_errors_total", {"model": "churn"}
        )
        == 1.0
    )

    later = [RawRecord("file", 0, 20 + i, None, raw) for i, raw in enumerate(churn[:3])]
    daemon.process(later)  # churn's next batch is processed as usual
    assert len(sink.records["driftwarden.dlq"]) == 10
    assert daemon.units[0].models["churn"].events >= 3
