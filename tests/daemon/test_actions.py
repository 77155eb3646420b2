"""Tests for the action executor: outbox jobs, the alert lifecycle and fallback routing.

Decisions come from the real evaluator over a small policy loaded from YAML; time is a fake
wall clock passed to the executor, so retries are driven without sleeping. Integration tests
use a local recording webhook, a real Alertmanager and a real ``mlflow server``.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from driftwarden.daemon.actions import ActionExecutor, serving_target
from driftwarden.daemon.sinks import MemorySink
from driftwarden.detectors.base import DetectorResult, StateVersionError
from driftwarden.policies.alerts import FALLBACK_ALERTNAME, fallback_fingerprint
from driftwarden.policies.evaluator import PolicyState, evaluate
from driftwarden.policies.loader import load_policy_file
from driftwarden.policies.model import Decision, Policy, PolicyError, PolicySet, WindowInfo
from driftwarden.policies.receivers import Delivery
from driftwarden.retrain.registry import Registry, RegistryError, Unavailable
from tests.fixtures.alertmanager import free_port

T0 = 1_900_000_000.0
TOPICS = {"routing": "dw.routing", "alerts": "dw.alerts"}

POLICY = """\
apiVersion: driftwarden/v1
kind: Policy
model: {model}
reference: file:/nonexistent/profile.json
window: {{events: 100}}
detectors:
  - {{name: quality, type: data_quality}}
  - {{name: drift, type: feature_drift, method: psi, threshold: 0.2}}
rules:
  - name: broken-input
    when: quality
    severity: critical
    actions: [{broken_actions}]
  - name: drifted
    when: drift and not quality
    actions:
      - {{alert: {drift_receiver}}}
      - retrain: {{trainer: "examples.churn:train", gates: {{min: {{roc_auc: 0.8}}}}}}
receivers:
{receivers}
"""


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_policy(
    tmp_path: Path,
    *,
    model: str = "churn",
    broken_actions: str = "{alert: oncall}, {fallback: {to: previous}}",
    drift_receiver: str = "oncall",
    receivers: str = "  oncall: {type: log}",
) -> Policy:
    """A policy file written to ``tmp_path`` and loaded by the real loader."""
    path = tmp_path / f"{model}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(
        POLICY.format(
            model=model,
            broken_actions=broken_actions,
            drift_receiver=drift_receiver,
            receivers=receivers,
        )
    )
    return load_policy_file(path)


class Windows:
    """Feeds windows of detector verdicts to the real evaluator and returns its decisions."""

    def __init__(self, policy: Policy, model: str, t0: float = T0, width: float = 60.0) -> None:
        self.policy, self.model, self.t0, self.width = policy, model, t0, width
        self.state = PolicyState()
        self.index = 0

    def next(self, *fired: str) -> list[Decision]:
        """Close the next window with the named detectors triggered."""
        start = self.t0 + self.index * self.width
        window = WindowInfo.from_epoch(self.index, start, start + self.width)
        results = {
            d.name: DetectorResult(
                d.name, d.type, d.name in fired, statistic=0.5 if d.name in fired else 0.01, n=100
            )
            for d in self.policy.detectors
        }
        out, self.state = evaluate(
            self.policy, self.model, window, results, self.state, window.end_ts
        )
        self.index += 1
        return out


def executor(
    tmp_path: Path, policy: Policy, clock: Clock, sink: MemorySink | None = None, **kw: Any
) -> ActionExecutor:
    """An executor on ``tmp_path/state/outbox.sqlite`` with fast retries."""
    kw.setdefault("env", {})
    kw.setdefault("outbox_options", {"base_s": 1.0, "cap_s": 30.0})
    return ActionExecutor(
        tmp_path / "state" / "outbox.sqlite",
        sink if sink is not None else MemorySink(),
        PolicySet((policy,)),
        topics=TOPICS,
        now=clock,
        **kw,
    )


def run_until_quiet(ex: ActionExecutor, clock: Clock, rounds: int = 20, step: float = 60.0) -> None:
    """Tick, moving the clock forward, until no job is pending (or ``rounds`` ran out)."""
    for _ in range(rounds):
        ex.tick()
        if not ex.outbox.pending():
            return
        clock.t += step


# --- pure: start-up, replay, state, fallback without registry, ordering ---------------------


def test_unset_env_var_is_a_startup_error_naming_file_and_receiver(tmp_path: Path) -> None:
    """A receiver url with an unset ${VAR} refuses to build, naming the receiver and variable."""
    policy = make_policy(
        tmp_path,
        receivers='  oncall: {type: log}\n  ml-team: {type: webhook, url: "${NO_SUCH_HOOK}"}',
    )
    with pytest.raises(PolicyError) as err:
        executor(tmp_path, policy, Clock(), env={})
    text = str(err.value)
    assert "'ml-team'" in text and "NO_SUCH_HOOK" in text and policy.source in text
    assert not (tmp_path / "state" / "outbox.sqlite").exists()


def test_replayed_decisions_enqueue_nothing_and_jobs_run_once(tmp_path: Path) -> None:
    """Each action becomes one job; replaying the same decisions adds none; done jobs stay done."""
    policy = make_policy(tmp_path)
    clock = Clock()
    ex = executor(tmp_path, policy, clock)
    w = Windows(policy, "churn")
    decisions = w.next("drift")
    assert [a.type for d in decisions for a in d.actions] == ["alert", "retrain"]
    assert ex.on_decisions(decisions) == 2
    assert ex.on_decisions(decisions) == 0
    report = ex.tick()
    # The log receiver delivers; the retrain job waits: no launcher is set.
    assert report.counts == {("alert", "done"): 1}
    assert ex.on_decisions(decisions) == 0
    assert ex.tick().results == []
    assert [j.kind for j in ex.outbox.pending()] == ["retrain"]
    ex.close()


def test_retrain_jobs_go_to_the_launcher_with_the_decision_and_action(tmp_path: Path) -> None:
    """The launcher gets the decision and action as plain data; a retry answer retries it."""
    policy = make_policy(tmp_path)
    clock = Clock()
    calls: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def launch(decision: dict[str, Any], action: dict[str, Any]) -> Delivery:
        calls.append((decision, action))
        return Delivery.retry("worker busy") if len(calls) == 1 else Delivery.success()

    ex = executor(tmp_path, policy, clock, retrain_launcher=launch)
    decisions = Windows(policy, "churn").next("drift")
    ex.on_decisions(decisions)
    assert ex.tick().counts[("retrain", "retry")] == 1
    clock.t += 60
    assert ex.tick().counts == {("retrain", "done"): 1}
    assert len(calls) == 2 and calls[0] == calls[1]
    decision, action = calls[0]
    assert decision["key"] == decisions[0].key and decision["rule"] == "drifted"
    assert action["type"] == "retrain" and action["params"]["trainer"] == "examples.churn:train"
    ex.close()


def test_state_round_trips_and_an_unknown_version_is_refused(tmp_path: Path) -> None:
    """The book survives state()/restore(); a state of another version is refused."""
    policy = make_policy(tmp_path)
    clock = Clock()
    ex = executor(tmp_path, policy, clock)
    ex.on_decisions(Windows(policy, "churn").next("quality"))
    state = json.loads(json.dumps(ex.state()))
    assert len(ex.book) == 2  # the rule's alert and ModelFallbackActive
    ex.close()
    ex2 = executor(tmp_path, policy, clock)
    ex2.restore(state)
    assert ex2.state() == state
    assert ex2.book.fallback_active("churn")
    with pytest.raises(StateVersionError, match="version 99"):
        ex2.restore({**state, "version": 99})
    ex2.close()


def test_fallback_without_registry_publishes_route_raises_alert_and_warns(tmp_path: Path) -> None:
    """No registry: the route is published (version unknown) and ModelFallbackActive fires."""
    policy = make_policy(tmp_path)
    clock = Clock()
    sink = MemorySink()
    with capture_logs() as logs:
        ex = executor(tmp_path, policy, clock, sink)
    assert any("no model registry" in e["event"] for e in logs)
    decisions = Windows(policy, "churn").next("quality")
    assert {a.type for d in decisions for a in d.actions} == {"alert", "fallback"}
    ex.on_decisions(decisions)
    fb = ex.book.get(fallback_fingerprint("churn"))
    assert fb is not None and fb.labels["alertname"] == FALLBACK_ALERTNAME
    assert ex.book.receivers(fb.fingerprint) == ("oncall",)
    report = ex.tick()
    assert report.counts == {("alert", "done"): 2, ("fallback", "done"): 1}
    (route,) = sink.values("dw.routing")
    assert route["model"] == "churn" and route["target"] == "previous"
    assert route["version"] is None and route["decision_key"] == decisions[0].key
    assert sink.records["dw.routing"][0][0] == "churn"  # keyed by model
    ex.close()


class FlakyRegistry:
    """Records serving moves; raises Unavailable while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.serving: list[str] = []

    def set_serving(
        self, model: str, target: str, actor: str, reason: str, *, decision_key: Any = None
    ) -> Any:
        if self.down:
            raise Unavailable("the MLflow server did not answer (test).")
        if target == "model:ghost":
            raise RegistryError("fallback model 'ghost' has no 'champion' alias.")
        self.serving.append(target)
        version = {"previous": "1", "champion": "2"}.get(target, "9")
        return type("Move", (), {"version": version, "target_model": None})()


def test_registry_down_retries_and_route_back_never_overtakes_fallback(tmp_path: Path) -> None:
    """While the registry is down the route back waits behind the fallback; then both run in order."""
    policy = make_policy(tmp_path)
    clock = Clock()
    sink = MemorySink()
    reg = FlakyRegistry()
    ex = executor(tmp_path, policy, clock, sink, registry_factory=lambda: reg)
    w = Windows(policy, "churn")
    ex.on_decisions(w.next("quality"))
    assert ex.tick().counts[("fallback", "retry")] == 1
    back = [d for _ in range(3) for d in w.next()]
    assert [a.type for d in back for a in d.actions] == ["resolve", "route_back"]
    ex.on_decisions(back)
    assert not ex.book.fallback_active("churn")
    clock.t += 3600  # both routing jobs are due; the route back must wait for the fallback
    report = ex.tick()
    assert ("route_back", "done") not in report.counts
    reg.down = False
    run_until_quiet(ex, clock)
    assert reg.serving == ["previous", "champion"]
    assert [(r["action"], r["version"]) for r in sink.values("dw.routing")] == [
        ("fallback", "1"),
        ("route_back", "2"),
    ]
    assert ex.outbox.dead() == []
    ex.close()


def test_a_missing_fallback_target_is_a_dead_job(tmp_path: Path) -> None:
    """A target the registry cannot resolve will not appear by retrying: the job is dead."""
    policy = make_policy(tmp_path, broken_actions="{alert: oncall}, {fallback: {to: ghost}}")
    clock = Clock()
    reg = FlakyRegistry()
    reg.down = False
    ex = executor(tmp_path, policy, clock, registry_factory=lambda: reg)
    ex.on_decisions(Windows(policy, "churn").next("quality"))
    assert ex.tick().counts[("fallback", "dead")] == 1
    (dead,) = ex.outbox.dead()
    assert dead.last_error is not None and "ghost" in dead.last_error
    assert serving_target("ghost") == "model:ghost" and serving_target("previous") == "previous"
    ex.close()


def test_kafka_receiver_publishes_alerts_through_the_sink(tmp_path: Path) -> None:
    """A kafka receiver without a topic publishes to the configured alerts topic, keyed by fingerprint."""
    policy = make_policy(
        tmp_path, drift_receiver="audit", receivers="  oncall: {type: log}\n  audit: {type: kafka}"
    )
    clock = Clock()
    sink = MemorySink()
    ex = executor(tmp_path, policy, clock, sink)
    decisions = Windows(policy, "churn").next("drift")
    ex.on_decisions(decisions)
    assert ex.tick().counts == {("alert", "done"): 1}
    (record,) = sink.values("dw.alerts")
    assert record["fingerprint"] == decisions[0].fingerprint and record["status"] == "firing"
    assert record["receiver"] == "audit"
    assert sink.records["dw.alerts"][0][0] == decisions[0].fingerprint
    ex.close()


def test_suppressed_decision_still_executes_its_actions(tmp_path: Path) -> None:
    """A drift rule muted by the fallback is suppressed but its retrain still runs."""
    policy = make_policy(tmp_path)
    clock = Clock()
    launched: list[str] = []

    def launch(decision: dict[str, Any], action: dict[str, Any]) -> Delivery:
        launched.append(action["key"])
        return Delivery.success()

    ex = executor(tmp_path, policy, clock, retrain_launcher=launch)
    w = Windows(policy, "churn")
    ex.on_decisions(w.next("quality"))
    # quality is clean again but the fallback lasts (recover_after 3): drift alerts are muted.
    (drifted,) = w.next("drift")
    assert drifted.status == "suppressed" and [a.type for a in drifted.actions] == ["retrain"]
    assert ex.on_decisions([drifted]) == 1
    assert ex.tick().counts[("retrain", "done")] == 1
    assert launched == [drifted.actions[0].key]
    ex.close()


def test_bad_policy_reload_keeps_the_old_receivers(tmp_path: Path) -> None:
    """set_policies with an unset variable raises and the receivers in force stay."""
    policy = make_policy(tmp_path)
    ex = executor(tmp_path, policy, Clock())
    bad = make_policy(tmp_path, receivers='  oncall: {type: webhook, url: "${UNSET_URL}"}')
    with pytest.raises(PolicyError, match="UNSET_URL"):
        ex.set_policies(PolicySet((bad,)))
    rcv = ex.receiver("churn", "oncall")
    assert rcv is not None and rcv.type == "log"
    ex.close()


def test_module_doctests_pass() -> None:
    """The examples in the module's docstrings pass."""
    import doctest

    from driftwarden.daemon import actions

    assert doctest.testmod(actions).failed == 0


# --- webhook (local recording server) ----------------------------------------------------------


def webhook_policy(tmp_path: Path) -> Policy:
    """Drift alerts go to a webhook whose url comes from the environment."""
    return make_policy(
        tmp_path,
        drift_receiver="ml-team",
        receivers='  oncall: {type: log}\n  ml-team: {type: webhook, url: "${HOOK_URL}"}',
    )


def test_webhook_down_then_back_gets_one_notification_across_a_restart(
    tmp_path: Path, webhook_server: Any
) -> None:
    """Down → retried; a restarted executor (same outbox, restored book) delivers once."""
    policy = webhook_policy(tmp_path)
    env = {"HOOK_URL": webhook_server.url}
    clock = Clock()
    w = Windows(policy, "churn")
    decisions = w.next("drift")
    webhook_server.down = True
    ex = executor(tmp_path, policy, clock, env=env)
    assert ex.on_decisions(decisions) == 2
    for _ in range(3):
        assert ex.tick().counts.get(("alert", "retry")) == 1
        clock.t += 60
    assert len(webhook_server.requests) == 3 and webhook_server.delivered == []
    state = ex.state()
    ex.close()

    ex2 = executor(tmp_path, policy, clock, env=env)  # the daemon restarts
    ex2.restore(state)
    assert ex2.on_decisions(decisions) == 0  # the replayed window
    webhook_server.down = False
    run_until_quiet(ex2, clock)
    for _ in range(3):  # later ticks send nothing more (webhooks get no resends)
        clock.t += 600
        ex2.tick()
    assert list(webhook_server.deliveries_per_key().values()) == [1]
    (got,) = webhook_server.delivered
    assert got["body"]["status"] == "firing"
    assert got["body"]["alerts"][0]["fingerprint"] == decisions[0].fingerprint
    ex2.close()


def test_webhook_gets_firing_before_resolved_after_an_outage(
    tmp_path: Path, webhook_server: Any
) -> None:
    """A resolve decided while the firing notification still waits is delivered after it."""
    policy = webhook_policy(tmp_path)
    clock = Clock()
    ex = executor(tmp_path, policy, clock, env={"HOOK_URL": webhook_server.url})
    w = Windows(policy, "churn")
    webhook_server.down = True
    ex.on_decisions(w.next("drift"))
    ex.tick()
    resolved = w.next()
    assert [d.status for d in resolved] == ["resolved"]
    ex.on_decisions(resolved)
    clock.t += 600
    ex.tick()
    webhook_server.down = False
    clock.t += 600
    run_until_quiet(ex, clock)
    statuses = [r["body"]["status"] for r in webhook_server.delivered]
    assert statuses == ["firing", "resolved"]
    assert set(webhook_server.deliveries_per_key().values()) == {1}
    assert len(ex.book) == 0
    ex.close()


# --- Alertmanager (real) -------------------------------------------------------------------


def am_alerts(url: str, model: str) -> list[dict[str, Any]]:
    """The active alerts Alertmanager's API returns for one model."""
    with urllib.request.urlopen(  # noqa: S310
        f"{url}/api/v2/alerts?filter=model%3D%22{model}%22", timeout=5
    ) as resp:
        return list(json.loads(resp.read()))


@pytest.mark.alertmanager
def test_alertmanager_sees_firing_then_resolved_and_resends_do_not_duplicate(
    tmp_path: Path, alertmanager_url: str, webhook_server: Any
) -> None:
    """Firing → one active alert (resends keep it, only to Alertmanager); resolved → gone."""
    import time

    model = f"am-{uuid.uuid4().hex[:8]}"
    policy = make_policy(
        tmp_path,
        model=model,
        broken_actions="{alert: oncall}, {alert: ml-team}",
        receivers=(
            '  oncall: {type: alertmanager, url: "${AM_URL}"}\n'
            '  ml-team: {type: webhook, url: "${HOOK_URL}"}'
        ),
    )
    env = {"AM_URL": alertmanager_url, "HOOK_URL": webhook_server.url}
    clock = Clock(time.time())
    ex = executor(tmp_path, policy, clock, env=env, resend_every_s=60.0)
    # Event time a little in the past, so the resolution time is not in the future.
    w = Windows(policy, model, t0=clock.t - 900)
    firing = w.next("quality")
    ex.on_decisions(firing)
    assert ex.tick().counts == {("alert", "done"): 2}
    resends = 0
    for _ in range(3):
        clock.t += 61
        report = ex.tick()
        resends += report.resends
        assert report.counts == {("alert", "done"): 1}  # only Alertmanager gets resends
    assert resends == 3
    (active,) = am_alerts(alertmanager_url, model)
    assert active["labels"]["alertname"] == "DriftwardenBrokenInput"
    assert active["fingerprint"] and active["status"]["state"] == "active"
    assert [r["body"]["status"] for r in webhook_server.delivered] == ["firing"]

    resolved = w.next()
    assert [a.type for d in resolved for a in d.actions] == ["resolve", "resolve"]
    ex.on_decisions(resolved)
    assert ex.tick().counts == {("resolve", "done"): 2}
    assert am_alerts(alertmanager_url, model) == []
    clock.t += 120
    assert ex.tick().resends == 0
    assert [r["body"]["status"] for r in webhook_server.delivered] == ["firing", "resolved"]
    ex.close()


# --- fallback against a real mlflow server -------------------------------------------------


def register_two_versions(registry: Registry, model: str) -> tuple[str, str]:
    """Two versions of a tiny sklearn model; ``champion`` → v2, ``previous`` → v1."""
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    y = (x[:, 0] > 0).astype(int)
    versions = []
    for c in (0.1, 1.0):
        clf = LogisticRegression(C=c).fit(x, y)
        run = registry.client.create_run("0", tags={"test": "actions"})
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.sklearn.save_model(
                clf,
                f"{tmp}/model",
                serialization_format="cloudpickle",
                pip_requirements=["scikit-learn"],
            )
            registry.client.log_artifacts(run.info.run_id, f"{tmp}/model", "model")
        registry.client.set_terminated(run.info.run_id)
        versions.append(
            registry.register(
                model,
                source=f"{run.info.artifact_uri}/model",
                run_id=run.info.run_id,
                tags={"test": "actions"},
            )
        )
    v1, v2 = versions
    registry.set_alias(model, "previous", v1, actor="test", reason="setup")
    registry.set_alias(model, "champion", v2, actor="test", reason="setup")
    registry.set_alias(model, "serving", v2, actor="test", reason="setup")
    return v1, v2


def fallback_policy(tmp_path: Path, model: str) -> Policy:
    """broken-input alerts a webhook and falls back to ``previous``."""
    return make_policy(
        tmp_path,
        model=model,
        broken_actions="{alert: ml-team}, {fallback: {to: previous}}",
        drift_receiver="ml-team",
        receivers='  ml-team: {type: webhook, url: "${HOOK_URL}"}',
    )


@pytest.mark.mlflow
def test_fallback_moves_serving_to_previous_and_route_back_restores_champion(
    tmp_path: Path, mlflow_tracking_uri: str, webhook_server: Any
) -> None:
    """Fallback: serving → v1, champion stays v2, route published; route back: serving → v2."""
    model = f"act-fb-{uuid.uuid4().hex[:8]}"
    registry = Registry(mlflow_tracking_uri)
    v1, v2 = register_two_versions(registry, model)
    policy = fallback_policy(tmp_path, model)
    clock = Clock()
    sink = MemorySink()
    ex = executor(
        tmp_path,
        policy,
        clock,
        sink,
        env={"HOOK_URL": webhook_server.url},
        registry_factory=lambda: Registry(mlflow_tracking_uri),
    )
    w = Windows(policy, model)
    fired = w.next("quality")
    ex.on_decisions(fired)
    assert ex.book.fallback_active(model)
    assert ex.tick().counts == {("fallback", "done"): 1, ("alert", "done"): 2}
    assert registry.version_by_alias(model, "serving") == v1
    assert registry.version_by_alias(model, "champion") == v2
    assert registry.version_by_alias(model, "previous") == v1
    (route,) = sink.values("dw.routing")
    assert {k: route[k] for k in ("model", "action", "target", "version", "decision_key")} == {
        "model": model,
        "action": "fallback",
        "target": "previous",
        "version": v1,
        "decision_key": fired[0].key,
    }
    tags = registry.model_version(model, v1).tags
    assert tags["driftwarden.alias.serving.decision_key"] == fired[0].key
    names = sorted(
        a["labels"]["alertname"] for r in webhook_server.delivered for a in r["body"]["alerts"]
    )
    assert names == ["DriftwardenBrokenInput", FALLBACK_ALERTNAME]

    back = [d for _ in range(3) for d in w.next()]
    ex.on_decisions(back)
    assert not ex.book.fallback_active(model) and len(ex.book) == 0
    assert ex.tick().counts == {("route_back", "done"): 1, ("resolve", "done"): 2}
    assert registry.version_by_alias(model, "serving") == v2
    assert registry.version_by_alias(model, "champion") == v2
    assert [(r["action"], r["version"]) for r in sink.values("dw.routing")] == [
        ("fallback", v1),
        ("route_back", v2),
    ]
    resolved = [
        a
        for r in webhook_server.delivered
        for a in r["body"]["alerts"]
        if a["status"] == "resolved"
    ]
    assert sorted(a["labels"]["alertname"] for a in resolved) == [
        "DriftwardenBrokenInput",
        FALLBACK_ALERTNAME,
    ]
    ex.close()


class Forwarder:
    """A TCP forwarder to ``target_port`` on a port nobody listens on until :meth:`start`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: socket.socket | None = None

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
def forwarder(mlflow_tracking_uri: str) -> Iterator[Forwarder]:
    """A not-yet-listening forwarder to the session's mlflow server."""
    fwd = Forwarder(int(mlflow_tracking_uri.rsplit(":", 1)[1]))
    try:
        yield fwd
    finally:
        fwd.stop()


@pytest.mark.mlflow
def test_fallback_with_mlflow_down_is_retried_then_delivered_once(
    tmp_path: Path,
    mlflow_tracking_uri: str,
    forwarder: Forwarder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow unreachable → the fallback job retries; once reachable it runs exactly once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    model = f"act-down-{uuid.uuid4().hex[:8]}"
    registry = Registry(mlflow_tracking_uri)
    v1, v2 = register_two_versions(registry, model)
    policy = make_policy(tmp_path, model=model)
    clock = Clock()
    sink = MemorySink()
    ex = executor(
        tmp_path,
        policy,
        clock,
        sink,
        registry_factory=lambda: Registry(f"http://127.0.0.1:{forwarder.port}"),
    )
    ex.on_decisions(Windows(policy, model).next("quality"))
    for _ in range(2):
        report = ex.tick()
        assert report.counts.get(("fallback", "retry")) == 1
        clock.t += 120
    (job,) = [j for j in ex.outbox.pending() if j.kind == "fallback"]
    assert job.attempts == 2 and job.last_error is not None and "did not answer" in job.last_error
    assert sink.values("dw.routing") == []
    assert registry.version_by_alias(model, "serving") == v2

    forwarder.start()
    clock.t += 120
    assert ex.tick().counts == {("fallback", "done"): 1}
    for _ in range(2):
        clock.t += 600
        assert ("fallback", "done") not in ex.tick().counts
    assert registry.version_by_alias(model, "serving") == v1
    assert registry.version_by_alias(model, "champion") == v2
    assert [(r["action"], r["version"]) for r in sink.values("dw.routing")] == [("fallback", v1)]
    ex.close()


class _DownThenUp:
    """A receiver down until ``up_at`` (the test's clock), recording what it got after."""

    wants_resends = False

    def __init__(self, clock: Clock) -> None:
        self.clock, self.up_at, self.got = clock, float("inf"), []

    def send(self, alerts: Any, key: Any = None) -> Any:
        if self.clock.t < self.up_at:
            return Delivery.retry("receiver down")
        self.got.append(alerts[0].status)
        return Delivery.success()

    def close(self) -> None:
        return None


@pytest.mark.parametrize("tick_between", [False, True])
def test_a_released_job_stays_first_in_its_stream_when_the_partition_comes_back(
    tmp_path: Path, tick_between: bool
) -> None:
    """Revoked, then given back to this replica: its released firing notification runs again,
    and the resolve that follows must wait for it. The action thread's tick in between took the
    released job for a finished one and forgot the stream, so the resolve overtook it."""
    policy = make_policy(tmp_path, broken_actions="{alert: oncall}")
    clock = Clock()
    ex = executor(tmp_path, policy, clock)
    receiver = _DownThenUp(clock)
    ex._receivers[policy.source]["oncall"] = receiver
    w = Windows(policy, "churn")
    try:
        ex.on_decisions(w.next("quality"))  # firing; the receiver is down
        ex.tick()
        state = ex.handover_state({"churn"})
        ex.release({"churn"})
        if tick_between:
            clock.t += 1
            ex.tick()
        clock.t += 1
        ex.adopt({"churn"}, state, ours=True)
        resolved: list[Any] = []
        for _ in range(3):
            resolved += w.next()
        ex.on_decisions(resolved)
        [firing] = [j for j in ex.outbox.pending() if j.kind == "alert"]
        [resolve] = [j for j in ex.outbox.pending() if j.kind == "resolve"]
        assert resolve.payload.get("after") == firing.key
        receiver.up_at = clock.t + 5
        for _ in range(60):
            clock.t += 1
            ex.tick()
        assert receiver.got == ["firing", "resolved"]
    finally:
        ex.close()
