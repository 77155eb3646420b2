"""The gated retrain pipeline against a real mlflow server (session fixture).

Each test uses its own registered model name, so tests do not see each other's versions.
Data comes from the seeded churn generator in ``config/examples/churn.py``.
"""

from __future__ import annotations

import importlib
import io
import itertools
import json
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from driftwarden.detectors.profile import ReferenceProfile
from driftwarden.retrain import pipeline
from driftwarden.retrain.labeled_store import LabeledStore
from driftwarden.retrain.pipeline import (
    REPORT_ARTIFACT,
    RetrainRequest,
    RetrainWorker,
    run_retrain,
)
from driftwarden.retrain.registry import PROFILE_ARTIFACT, Registry, Unavailable
from tests.fixtures.mlflow_server import MlflowServer

pytestmark = pytest.mark.mlflow

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "config")
# The way the daemon finds trainers: the config directory is put on sys.path.
if CONFIG_DIR not in sys.path:
    sys.path.insert(0, CONFIG_DIR)
churn = importlib.import_module("examples.churn")
FEATURES: list[str] = churn.FEATURES
TARGET: str = churn.TARGET
generate = churn.generate
to_rows = churn.to_rows
churn_train = churn.train
_names = itertools.count()
CALLS: dict[str, int] = {}
SERVER: dict[str, MlflowServer] = {}


def _model_name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def _request(model: str, key: str, **kw: Any) -> RetrainRequest:
    base: dict[str, Any] = {
        "model": model,
        "trigger": {"key": f"{model}/drifted/{key}", "rule": "drifted"},
        "action_key": key,
        "trainer": "examples.churn:train",
        "gates": {"min": {"roc_auc": 0.6}, "max_regression": {"roc_auc": 0.05}, "min_holdout": 100},
        "target": TARGET,
        "features": FEATURES,
        "segments": ["customer_tier"],
        "params": {"kind": "logistic"},
        "search_paths": [CONFIG_DIR],
    }
    base.update(kw)
    return RetrainRequest(**base)


def _champion(registry: Registry, store: LabeledStore, model: str) -> str:
    """Train and promote a first version (no champion yet, promote: auto)."""
    store.append(model, to_rows(generate(600, seed=2), prefix="c"))
    out = run_retrain(
        _request(model, "bootstrap", promote="auto"),
        registry=registry,
        store=store,
        reference_data=generate(1500, seed=1),
        code_version="test-sha",
    )
    assert out.status == "registered", out.reasons
    assert out.version is not None
    assert registry.version_by_alias(model, "champion") == out.version
    return out.version


@pytest.fixture()
def registry(mlflow_tracking_uri: str) -> Registry:
    """A Registry on the session's mlflow server."""
    return Registry(mlflow_tracking_uri)


@pytest.fixture()
def store(tmp_path: Path) -> LabeledStore:
    """An empty labeled store in a temporary folder."""
    return LabeledStore(tmp_path / "labeled")


# --------------------------------------------------------------------------- trainers


def counting_train(train: pd.DataFrame, **kw: Any) -> Any:
    """The churn trainer, counting its calls (per model name in params)."""
    CALLS[kw["params"]["counter"]] = CALLS.get(kw["params"]["counter"], 0) + 1
    return churn_train(train, **{**kw, "params": {"kind": "logistic"}})


def stop_server_then_train(train: pd.DataFrame, **kw: Any) -> Any:
    """On its first call stops the mlflow server mid-retrain, as if MLflow went down."""
    CALLS["down"] = CALLS.get("down", 0) + 1
    if CALLS["down"] == 1:
        SERVER["server"].stop()
    return churn_train(train, **{**kw, "params": {"kind": "logistic"}})


class _SliceBreaker:
    """A model that scores well overall but never flags big-ticket business customers."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.classes_ = np.array([0, 1])

    def _hit(self, x: pd.DataFrame) -> np.ndarray:
        return ((x["plan"] == "business") & (x["support_tickets"] >= 2)).to_numpy()

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        p = np.asarray(self.inner.predict_proba(x), dtype=float).copy()
        hit = self._hit(x)
        # Squash those rows' scores below the threshold but keep their order.
        p[hit, 1] = p[hit, 1] * 0.2
        p[:, 0] = 1.0 - p[:, 1]
        return p

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(x)[:, 1] >= 0.5).astype(int)


def slice_breaking_train(train: pd.DataFrame, **kw: Any) -> Any:
    """A boosted model (better overall than the logistic champion) that breaks a slice."""
    return _SliceBreaker(churn_train(train, **{**kw, "params": {"kind": "gbm", "max_iter": 150}}))


def weak_train(train: pd.DataFrame, **kw: Any) -> Any:
    """A deliberately weak champion: logistic regression without the login gap."""
    return churn_train(
        train,
        **{
            **kw,
            "features": ["support_tickets", "plan", "tenure_months"],
            "params": {"kind": "logistic"},
        },
    )


# --------------------------------------------------------------------------- tests


def test_passing_candidate_is_registered_with_lineage(
    registry: Registry, store: LabeledStore, capfd: pytest.CaptureFixture[str]
) -> None:
    """A candidate passing every gate becomes challenger, with lineage tags, report and profile;
    MLflow prints nothing of its own to stdout (the daemon's JSON log)."""
    model = _model_name("pass")
    champion = _champion(registry, store, model)
    store.append(model, to_rows(generate(800, seed=3), start=10_000, t0=1_900_000_000.0))
    capfd.readouterr()
    out = run_retrain(
        _request(
            model, "k-pass", params={"kind": "gbm", "max_iter": 60}, data={"reference": "champion"}
        ),
        registry=registry,
        store=store,
        reference_data=None,  # the champion's stored snapshot is the reference
        code_version="abc123",
    )
    assert out.status == "registered", out.reasons
    assert "View run" not in capfd.readouterr().out
    assert out.version is not None and out.version != champion
    assert registry.version_by_alias(model, "challenger") == out.version
    assert registry.version_by_alias(model, "champion") == champion  # promote: manual
    mv = registry.model_version(model, out.version)
    assert mv.tags["driftwarden.action_key"] == "k-pass"
    assert mv.tags["driftwarden.parent_version"] == champion
    assert mv.tags["driftwarden.code_version"] == "abc123"
    assert len(mv.tags["driftwarden.data_hash"]) == 64
    assert mv.tags["driftwarden.alias.challenger.set_by"] == "driftwarden.retrain"
    assert mv.tags["driftwarden.trigger.decision_key"] == f"{model}/drifted/k-pass"
    # The move's audit tags (written with the version, set_by after the move) and its record.
    [move] = out.alias_moves
    assert (move["alias"], move["version"], move["decision_key"]) == (
        "challenger",
        out.version,
        "k-pass",
    )
    assert mv.tags["driftwarden.alias.challenger.reason"] == move["reason"]
    assert mv.tags["driftwarden.alias.challenger.at"] == move["at"]
    assert mv.tags["driftwarden.alias.challenger.decision_key"] == "k-pass"
    assert move["reason"] == "passed every gate (action k-pass)"
    with tempfile.TemporaryDirectory() as tmp:
        report = json.loads(
            Path(registry.client.download_artifacts(out.run_id, REPORT_ARTIFACT, tmp)).read_text()
        )
    assert report["status"] == "registered" and all(g["passed"] for g in report["gates"])
    assert report["data_hash"] == mv.tags["driftwarden.data_hash"]
    # The champion's snapshot minus the labeled rows that are still in the store.
    assert report["rows"] == {"reference": 1500, "recent": 1400, "train": 2480, "holdout": 420}
    profile = registry.load_profile(model, out.version)
    assert isinstance(profile, ReferenceProfile)
    assert set(FEATURES) <= set(profile.features)
    assert "enterprise" in profile.metrics["slices"]["customer_tier"]
    run = registry.client.get_run(out.run_id)
    assert run.data.metrics["candidate.roc_auc"] == pytest.approx(
        report["candidate"]["overall"]["roc_auc"]
    )
    assert [i.dataset.digest for i in run.inputs.dataset_inputs]
    artifacts = {a.path for a in registry.client.list_artifacts(out.run_id, "driftwarden")}
    assert PROFILE_ARTIFACT in artifacts


def test_slice_regression_blocks_registration(registry: Registry, store: LabeledStore) -> None:
    """Better aggregate ROC AUC but an enterprise recall drop beyond max_drop: not registered."""
    model = _model_name("slice")
    store.append(model, to_rows(generate(600, seed=2, enterprise_share=0.08), prefix="c"))
    boot = run_retrain(
        _request(model, "boot", promote="auto", trainer="tests.retrain.test_pipeline:weak_train"),
        registry=registry,
        store=store,
        reference_data=generate(1500, seed=1, enterprise_share=0.08),
        code_version="t",
    )
    assert boot.status == "registered", boot.reasons
    store.append(model, to_rows(generate(2000, seed=5, enterprise_share=0.08), start=10_000))
    gates = {
        "max_regression": {"roc_auc": 0.0},
        "slices": {"customer_tier": {"max_drop": {"recall": 0.05}, "min_samples": 20}},
        "min_holdout": 100,
    }
    out = run_retrain(
        _request(
            model,
            "k-slice",
            trainer="tests.retrain.test_pipeline:slice_breaking_train",
            gates=gates,
        ),
        registry=registry,
        store=store,
        reference_data=generate(1500, seed=1, enterprise_share=0.08),
        code_version="t",
    )
    assert out.status == "gates_failed"
    assert out.version is None and out.run_id is not None
    report = out.report
    # The premise: better overall, much worse in the enterprise slice.
    assert report["candidate"]["overall"]["roc_auc"] > report["champion"]["overall"]["roc_auc"]
    failed = [g for g in report["gates"] if not g["passed"]]
    assert [g["slice"] for g in failed] == [{"customer_tier": "enterprise"}]
    assert failed[0]["metric"] == "recall"
    assert failed[0]["champion"] - failed[0]["candidate"] > 0.05
    assert registry.find_version_by_tag(model, "driftwarden.action_key", "k-slice") is None
    assert registry.version_by_alias(model, "challenger") is None
    with tempfile.TemporaryDirectory() as tmp:
        stored = json.loads(
            Path(registry.client.download_artifacts(out.run_id, REPORT_ARTIFACT, tmp)).read_text()
        )
    assert any("customer_tier=enterprise" in r for r in stored["failed_gates"])


def test_data_gate_blocks_zero_filled_nulls(registry: Registry, store: LabeledStore) -> None:
    """Recent rows whose nulls were filled with 0 are blocked before any training."""
    model = _model_name("dq")
    champion = _champion(registry, store, model)
    broken = generate(600, seed=7, null_as_zero=0.4)
    store.append(model, to_rows(broken, start=10_000, t0=1_900_000_000.0))
    counter = f"dq-{model}"
    out = run_retrain(
        _request(
            model,
            "k-dq",
            trainer="tests.retrain.test_pipeline:counting_train",
            params={"counter": counter},
            data={"recent": 600},
        ),
        registry=registry,
        store=store,
        reference_data=generate(1500, seed=1),
        code_version="t",
    )
    assert out.status == "blocked_by_data_gate"
    assert CALLS.get(counter, 0) == 0
    assert any("days_since_last_login" in r for r in out.reasons)
    assert registry.find_version_by_tag(model, "driftwarden.action_key", "k-dq") is None
    assert registry.version_by_alias(model, "champion") == champion


def test_an_error_before_the_data_gate_decides_marks_the_run_failed(
    registry: Registry, store: LabeledStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run is created while the data gate runs: an error there ends it as FAILED (it
    is not left RUNNING) and reaches the caller."""
    model = _model_name("gate-error")
    store.append(model, to_rows(generate(600, seed=2), prefix="e"))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the data gate broke")

    monkeypatch.setattr(pipeline, "_data_gate", broken)
    with pytest.raises(RuntimeError, match="the data gate broke"):
        run_retrain(
            _request(model, "k-gate-error"),
            registry=registry,
            store=store,
            reference_data=generate(1500, seed=1),
            code_version="t",
        )
    exp = registry.client.get_experiment_by_name(f"driftwarden/{model}")
    assert exp is not None
    [run] = registry.client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["driftwarden.action_key"] == "k-gate-error"


@pytest.fixture(scope="module")
def proxied_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A Registry on a second server that proxies artifacts (``mlflow server``'s default)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-proxied"), proxied_artifacts=True)
    server.start()
    try:
        yield Registry(server.uri)
    finally:
        server.stop()


def test_registered_through_a_server_that_proxies_artifacts(
    proxied_registry: Registry, store: LabeledStore
) -> None:
    """Runs get ``mlflow-artifacts:`` URIs there: the snapshot's dataset input names the URL
    the server serves it from, and the champion's snapshot, model and profile are read back
    through the server (a version registered, then one trained on the champion's snapshot)."""
    registry = proxied_registry
    model = _model_name("proxied")
    champion = _champion(registry, store, model)
    store.append(model, to_rows(generate(800, seed=3), start=10_000, t0=1_900_000_000.0))
    out = run_retrain(
        _request(
            model,
            "k-proxied",
            params={"kind": "gbm", "max_iter": 40},
            data={"reference": "champion"},
        ),
        registry=registry,
        store=store,
        reference_data=None,
        code_version="t",
    )
    assert out.status == "registered", out.reasons
    assert out.report["rows"]["reference"] == 1500
    run = registry.client.get_run(out.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    [inp] = run.inputs.dataset_inputs
    assert inp.dataset.source_type == "http"
    url = json.loads(inp.dataset.source)["url"]
    with urllib.request.urlopen(url, timeout=30) as answer:
        snapshot = pq.read_table(io.BytesIO(answer.read())).to_pandas()
    assert len(snapshot) == 1500 + 1400
    assert snapshot["_part"].value_counts().to_dict() == {"reference": 1500, "recent": 1400}
    fresh = Registry(registry.tracking_uri)  # nothing remembered: loaded through the server
    assert isinstance(fresh.load_profile(model, out.version), ReferenceProfile)
    loaded = fresh.load_model(model, champion)
    assert loaded.predict(generate(20, seed=5)[FEATURES]).shape == (20,)


def test_mlflow_down_mid_retrain_then_exactly_one_version(
    registry: Registry,
    store: LabeledStore,
    mlflow_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow stops during training → Unavailable; after a restart the retry registers once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    model = _model_name("down")
    _champion(registry, store, model)
    store.append(model, to_rows(generate(600, seed=9), start=10_000, t0=1_900_000_000.0))
    SERVER["server"] = mlflow_server
    CALLS["down"] = 0
    request = _request(
        model, "k-down", trainer="tests.retrain.test_pipeline:stop_server_then_train"
    )
    kw: dict[str, Any] = {
        "registry": registry,
        "store": store,
        "reference_data": generate(1500, seed=1),
        "code_version": "t",
    }
    try:
        with pytest.raises(Unavailable):
            run_retrain(request, **kw)
    finally:
        mlflow_server.start()
    assert CALLS["down"] == 1
    first = run_retrain(request, **kw)
    assert first.status == "registered" and CALLS["down"] == 2
    again = run_retrain(request, **kw)  # a duplicate delivery of the same action
    assert (again.status, again.version) == ("registered", first.version)
    assert CALLS["down"] == 2
    versions = registry.client.search_model_versions(
        f"name='{model}' and tags.`driftwarden.action_key` = 'k-down'"
    )
    assert [v.version for v in versions] == [first.version]
    # The cut-short attempt's run does not stay RUNNING: the retry ended it, naming itself.
    runs = registry.client.search_runs(
        [registry.client.get_run(first.run_id).info.experiment_id],
        filter_string="tags.`driftwarden.action_key` = 'k-down'",
    )
    by_status = {r.info.status: r for r in runs}
    assert len(runs) == 2 and set(by_status) == {"FAILED", "FINISHED"}, [
        (r.info.run_id, r.info.status) for r in runs
    ]
    assert by_status["FINISHED"].info.run_id == first.run_id
    assert by_status["FAILED"].data.tags["driftwarden.ended_by"] == first.run_id


def test_a_deleted_experiment_is_restored_for_the_next_retrain(
    registry: Registry, store: LabeledStore
) -> None:
    """Someone deletes the model's retrain experiment in MLflow's UI while the daemon runs (it
    remembers the experiment's id): the next retrain restores the experiment and logs its run
    there, instead of failing on every attempt until someone does."""
    model = _model_name("deleted")
    _champion(registry, store, model)
    store.append(model, to_rows(generate(600, seed=5), start=10_000, t0=1_900_000_000.0))
    kw: dict[str, Any] = {
        "registry": registry,
        "store": store,
        "reference_data": generate(1500, seed=1),
        "code_version": "t",
    }
    first = run_retrain(_request(model, "k-del-1"), **kw)
    assert first.status == "registered", first.reasons
    exp_id = registry.client.get_run(first.run_id).info.experiment_id
    registry.client.delete_experiment(exp_id)

    second = run_retrain(_request(model, "k-del-2"), **kw)
    assert second.status == "registered", second.reasons
    assert registry.client.get_run(second.run_id).info.experiment_id == exp_id
    assert registry.client.get_experiment(exp_id).lifecycle_stage == "active"
    # A registry that has not seen the experiment yet (a restarted daemon) restores it too.
    registry.client.delete_experiment(exp_id)
    fresh = Registry(registry.tracking_uri)
    third = run_retrain(_request(model, "k-del-3"), **{**kw, "registry": fresh})
    assert third.status == "registered", third.reasons
    assert fresh.client.get_run(third.run_id).info.experiment_id == exp_id


def test_failure_between_registering_and_moving_the_alias(
    registry: Registry, store: LabeledStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version is created with the move's tags but set_by; if the alias move then fails,
    the retry moves it and writes every tag again — one version, a complete audit trail."""
    model = _model_name("window")
    _champion(registry, store, model)
    store.append(model, to_rows(generate(600, seed=4), start=10_000, t0=1_900_000_000.0))
    request = _request(model, "k-window")
    kw: dict[str, Any] = {
        "registry": registry,
        "store": store,
        "reference_data": generate(1500, seed=1),
        "code_version": "t",
    }

    def down(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("mlflow went away")

    with monkeypatch.context() as m:
        m.setattr(Registry, "set_alias", down)
        with pytest.raises(Unavailable):
            run_retrain(request, **kw)
    [pending] = registry.client.search_model_versions(
        f"name='{model}' and tags.`driftwarden.action_key` = 'k-window'"
    )
    assert "driftwarden.alias.challenger.set_by" not in pending.tags
    assert registry.version_by_alias(model, "challenger") is None
    out = run_retrain(request, **kw)
    assert (out.status, out.version) == ("registered", pending.version)
    assert registry.version_by_alias(model, "challenger") == out.version
    [move] = out.alias_moves
    tags = registry.model_version(model, out.version).tags
    assert tags["driftwarden.alias.challenger.set_by"] == "driftwarden.retrain"
    assert tags["driftwarden.alias.challenger.at"] == move["at"]
    assert tags["driftwarden.alias.challenger.reason"] == move["reason"]


@pytest.mark.parametrize("cut", ["after the champion moved", "before the challenger left"])
def test_an_auto_promotion_cut_short_is_completed_by_the_retry(
    registry: Registry, store: LabeledStore, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """promote: auto and MLflow gone right after the champion alias moved (its who/why/when
    not written) or before the challenger alias left the new champion: the retry under the
    same action key writes the champion's tags, removes the challenger, and records both."""
    model = _model_name("promote")
    _champion(registry, store, model)
    store.append(model, to_rows(generate(600, seed=4), start=10_000, t0=1_900_000_000.0))
    request = _request(model, "k-promote", promote="auto")
    kw: dict[str, Any] = {
        "registry": registry,
        "store": store,
        "reference_data": generate(1500, seed=1),
        "code_version": "t",
    }
    set_alias, delete_alias = Registry.set_alias, Registry.delete_alias

    def champion_moves_then_down(self: Registry, model: str, alias: str, *a: Any, **k: Any) -> Any:
        if alias == "champion":
            self._reg.set_registered_model_alias(model, alias, str(a[0]))  # moved, untagged
            raise Unavailable("mlflow went away")
        return set_alias(self, model, alias, *a, **k)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("mlflow went away")

    with monkeypatch.context() as m:
        if cut == "after the champion moved":
            m.setattr(Registry, "set_alias", champion_moves_then_down)
        else:
            m.setattr(Registry, "delete_alias", down)
        with pytest.raises(Unavailable):
            run_retrain(request, **kw)
    assert Registry.delete_alias is delete_alias
    out = run_retrain(request, **kw)
    assert out.status == "registered"
    assert registry.version_by_alias(model, "champion") == out.version
    assert registry.version_by_alias(model, "challenger") is None
    tags = registry.model_version(model, out.version).tags
    assert tags["driftwarden.alias.champion.set_by"] == "driftwarden.retrain"
    assert tags["driftwarden.alias.champion.decision_key"] == "k-promote"
    moved = [(mv["alias"], mv["version"]) for mv in out.alias_moves]
    assert ("challenger", None) in moved
    assert (("champion", out.version) in moved) == (cut == "after the champion moved")


def test_worker_runs_off_thread_and_dedupes(
    registry: Registry, store: LabeledStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RetrainWorker returns a future; resubmitting a pending action key reuses it; each
    attempt hands the memory it freed back to the OS."""
    import driftwarden.retrain.pipeline as pipeline

    handed_back: list[str] = []
    monkeypatch.setattr(
        pipeline, "hand_back_memory", lambda: handed_back.append(threading.current_thread().name)
    )
    model = _model_name("worker")
    store.append(model, to_rows(generate(500, seed=2)))
    worker = RetrainWorker(
        registry=registry,
        store=store,
        code_version="t",
        reference_loader=lambda req: generate(1000, seed=1),
    )
    try:
        req = _request(model, "k-w", promote="auto")
        f1 = worker.submit(req)
        f2 = worker.submit(req)
        out = f1.result(timeout=120)
        assert f2.result(timeout=120).version == out.version
        assert out.status == "registered"
        assert registry.version_by_alias(model, "champion") == out.version
        assert len(handed_back) == 1 and handed_back[0] != "MainThread"
    finally:
        worker.shutdown()


def test_hand_back_memory_returns_freed_heap_pages() -> None:
    """Blocks freed with live ones between them stay resident (glibc cannot trim them from
    the heap's top); hand_back_memory returns their pages."""
    import numpy as np

    from driftwarden.retrain.pipeline import hand_back_memory

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    blocks = [np.ones(12_000) for _ in range(1_000)]  # ~96 KB each: heap, not mmap
    kept = blocks[::10]
    before = rss()
    del blocks
    freed = rss()
    hand_back_memory()
    after = rss()
    assert len(kept) == 100
    assert before - freed < 20 * 2**20, "freed blocks were already handed back"
    assert freed - after > 50 * 2**20, (before, freed, after)


def test_approve_and_rollback_move_aliases_and_leave_tags(registry: Registry) -> None:
    """approve keeps previous, rollback restores it; every move leaves who/why/when tags."""
    model = _model_name("alias")
    exp = registry.client.create_experiment(f"alias-test-{model}")
    versions = []
    for _ in range(3):
        run = registry.client.create_run(exp)
        versions.append(
            registry.register(
                model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags={}
            )
        )
    v1, v2, v3 = versions
    assert registry.version_by_alias(model, "champion") is None
    registry.approve(model, v1, "alice", "first model")
    moves = registry.approve(model, v2, "bob", "better on the holdout")
    assert [(m.alias, m.version, m.previous_version) for m in moves] == [
        ("previous", v1, None),
        ("champion", v2, v1),
    ]
    assert registry.version_by_alias(model, "previous") == v1
    tags = registry.model_version(model, v2).tags
    assert tags["driftwarden.alias.champion.set_by"] == "bob"
    assert tags["driftwarden.alias.champion.reason"] == "better on the holdout"
    assert tags["driftwarden.alias.champion.at"].endswith("Z")
    serving = registry.set_serving(model, "previous", "driftwarden", "fallback: broken input")
    assert (serving.alias, serving.version, serving.uri) == ("serving", v1, f"models:/{model}/{v1}")
    assert registry.version_by_alias(model, "champion") == v2  # fallback never moves champion
    back = registry.rollback(model, "carol", "v2 misbehaves")
    assert [(m.alias, m.version) for m in back] == [("champion", v1), ("previous", None)]
    assert registry.version_by_alias(model, "champion") == v1
    assert registry.version_by_alias(model, "previous") is None
    v2_tags = registry.model_version(model, v2).tags
    assert v2_tags["driftwarden.alias.champion.set_by"] == "bob"  # the audit trail stays
    assert "carol" in v2_tags["driftwarden.rolled_back"]
    assert json.loads(json.dumps(back[0].to_dict()))["actor"] == "carol"
    other = _model_name("fallback")
    run = registry.client.create_run(exp)
    fv = registry.register(
        other, source=f"{run.info.artifact_uri}/m", run_id=run.info.run_id, tags={}
    )
    registry.approve(other, fv, "alice", "fallback model")
    route = registry.set_serving(model, f"model:{other}", "driftwarden", "fallback to the rules")
    assert (route.target_model, route.version) == (other, fv)
    assert registry.client.get_registered_model(model).tags["driftwarden.serving.model"] == other
    assert v3 not in {registry.version_by_alias(model, a) for a in ("champion", "serving")}


def test_walkthrough_runs_end_to_end(mlflow_tracking_uri: str) -> None:
    """config/examples/churn_walkthrough.py completes: gates fail and pass, data gate blocks,
    approve moves champion, models:/<name>@champion loads."""
    import subprocess

    model = _model_name("walk")
    script = Path(CONFIG_DIR) / "examples" / "churn_walkthrough.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--tracking-uri", mlflow_tracking_uri, "--model", model],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "[2-strict-gate] gates_failed" in out
    assert "[3-realistic-gate] registered" in out
    assert "[4-broken-input] blocked_by_data_gate" in out
    assert f"models:/{model}@champion scores:" in out
    assert Registry(mlflow_tracking_uri).version_by_alias(model, "previous") == "1"
