"""Receivers and the registry down under a running daemon (``driftwarden run`` on a real broker).

Alertmanager (a real one, behind a relay this test switches on), a webhook receiver (answering
503 while "down") and the MLflow tracking server (behind a TCP forwarder nobody listens on) are
all unreachable while the daemon reads an input with an incident: a broken pipeline fills
``days_since_last_login`` with 0 for two windows, then is fixed. The policy alerts both
receivers and falls back to ``previous``; after two clean windows it resolves and routes back.

While everything is down the daemon must keep monitoring (every record read and committed,
every window summary and decision published). It is then killed with SIGKILL, restarted, and
the receivers come back: every action must be delivered exactly once — one firing and one
resolved notification per alert and receiver, the ``serving`` alias moved to v1 and back to v2
once each, one routing record each — and nothing more while the daemon keeps running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from driftwarden.retrain.registry import Registry
from tests.daemon import eventgen
from tests.daemon.test_actions import Forwarder, am_alerts, register_two_versions
from tests.daemon.test_kafka_ingest import _config, _consume_all

pytestmark = [pytest.mark.kafka, pytest.mark.mlflow, pytest.mark.alertmanager, pytest.mark.slow]

N = 16_000  # 8 windows of 200 s at 10 predictions/s
INCIDENT = (6_000, 10_000)  # windows 3 and 4 are broken
WAIT_S = 180.0

POLICY = """\
apiVersion: driftwarden/v1
kind: Policy
model: {model}
reference: file:profile.json
window: {{duration: 200s}}
detectors:
  - {{name: quality, type: data_quality}}
rules:
  - name: broken-input
    when: quality
    severity: critical
    recover_after: 2
    actions: [{{alert: oncall}}, {{alert: hook}}, {{fallback: {{to: previous}}}}]
receivers:
  oncall: {{type: alertmanager, url: "${{AM_URL}}"}}
  hook: {{type: webhook, url: "${{HOOK_URL}}"}}
"""


class Relay:
    """An HTTP relay to Alertmanager that records what it forwards; refuses connections until
    :meth:`start` (the port is reserved by nobody listening on it)."""

    def __init__(self, target: str, port: int) -> None:
        self.target, self.port = target, port
        self.posts: list[dict[str, Any]] = []
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> None:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = urllib.request.Request(  # noqa: S310  (the test's own Alertmanager)
                    relay.target + self.path,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                        status = resp.status
                except urllib.error.HTTPError as err:
                    status = err.code
                relay.posts.append({"path": self.path, "body": json.loads(body), "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def notifications(self) -> list[tuple[str, str]]:
        """(alertname, firing|resolved) of every alert Alertmanager accepted, in order."""
        out = []
        for post in self.posts:
            if 200 <= post["status"] < 300:
                for a in post["body"]:
                    resolved = a.get("endsAt") and a["endsAt"] <= _now_iso()
                    out.append((a["labels"]["alertname"], "resolved" if resolved else "firing"))
        return out


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


def _wait(
    what: str, cond: Callable[[], bool], proc: subprocess.Popen[bytes], stderr: Callable[[], str]
) -> float:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(
                f"the daemon exited ({proc.returncode}) while waiting for {what}: {stderr()}"
            )
        assert time.monotonic() - t0 < WAIT_S, f"timed out after {WAIT_S} s waiting for {what}"
        time.sleep(0.3)
    return time.monotonic() - t0


@pytest.fixture
def relay(alertmanager_url: str) -> Iterator[Relay]:
    from tests.fixtures.alertmanager import free_port

    r = Relay(alertmanager_url, free_port())
    try:
        yield r
    finally:
        r.stop()


def _produce(bootstrap: str, topics: dict[str, str], model: str) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    n = 0
    try:
        for ev in eventgen.events(
            N, model=model, label_share=0.0, incident_from=INCIDENT[0], incident_to=INCIDENT[1]
        ):
            producer.send(topics[ev.role], key=model.encode(), value=ev.value)
            n += ev.role == "predictions"
        producer.flush(timeout=60)
    finally:
        producer.close()
    return n


def _committed(bootstrap: str, group: str, topic: str) -> int:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        got = admin.list_group_offsets({group: None}).get(group, {})
    except KafkaError as err:  # the group does not exist yet, or its coordinator is loading
        if not getattr(err, "retriable", False):
            raise
        return 0
    finally:
        admin.close()
    return sum(om.offset for tp, om in got.items() if tp.topic == topic and om.offset > 0)


def _records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in _consume_all(bootstrap, topic)]


def test_receivers_and_registry_down_monitoring_goes_on_and_every_action_lands_once(
    kafka_bootstrap: str,
    mlflow_tracking_uri: str,
    relay: Relay,
    webhook_server: Any,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    model = f"outage-{uuid.uuid4().hex[:8]}"
    registry = Registry(mlflow_tracking_uri)
    v1, v2 = register_two_versions(registry, model)
    mlflow = Forwarder(int(mlflow_tracking_uri.rsplit(":", 1)[1]))

    topics = {
        k: f"{k}-{model}"
        for k in ("predictions", "labels", "dlq", "decisions", "windows", "alerts", "routing")
    }
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()])
    finally:
        admin.close()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "outage.yaml").write_text(POLICY.format(model=model))
    eventgen.save_profile(tmp_path / "policies" / "profile.json", model)
    config = _config({"topics": topics, "base": tmp_path}, kafka_bootstrap, "outage")
    cfg = yaml.safe_load(config.read_text())
    cfg["checkpoint"]["every"] = "1s"
    cfg["mlflow"] = {"tracking_uri": f"http://127.0.0.1:{mlflow.port}"}
    cfg["scheduler"] = {"outbox": "0.5s", "alert_resend": "60s"}
    cfg["actions"] = {"retry_base": "0.5s", "retry_max": "2s"}
    cfg["log"] = {"level": "info"}
    config.write_text(yaml.safe_dump(cfg))
    group = cfg["kafka"]["group_id"]
    env = {
        **os.environ,
        "AM_URL": f"http://127.0.0.1:{relay.port}",
        "HOOK_URL": webhook_server.url,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }

    lives: list[Path] = []

    def start() -> subprocess.Popen[bytes]:
        # stderr to a file, not a pipe: an unread pipe fills up with the retry warnings of the
        # outage and then blocks every thread that logs.
        lives.append(tmp_path / f"daemon-{len(lives)}.stderr")
        with open(lives[-1], "wb") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "driftwarden.daemon.cli", "run", "--config", str(config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def stderr() -> str:
        return lives[-1].read_text(errors="replace")[-3000:]

    webhook_server.down = True
    n_pred = _produce(kafka_bootstrap, topics, model)
    t_down = time.monotonic()
    proc = start()
    passed = False
    try:
        # 1. Everything down: monitoring goes on — all input read and committed, 7 windows
        #    closed (the 8th stays open), the incident decided and published.
        _wait(
            "the daemon to commit the whole input",
            lambda: _committed(kafka_bootstrap, group, topics["predictions"]) == n_pred,
            proc,
            stderr,
        )
        windows = _records(kafka_bootstrap, topics["windows"])
        assert len(windows) == 7, [w.get("window") for w in windows]
        decisions = _records(kafka_bootstrap, topics["decisions"])
        assert [(d["rule"], d["status"]) for d in decisions] == [
            ("broken-input", "firing"),
            ("broken-input", "resolved"),
        ]
        _wait("the webhook to be tried", lambda: len(webhook_server.requests) >= 2, proc, stderr)
        assert webhook_server.delivered == [] and relay.posts == []
        assert registry.version_by_alias(model, "serving") == v2
        assert _records(kafka_bootstrap, topics["routing"]) == []

        # 2. SIGKILL with every action still pending; the restarted daemon has only its
        #    checkpoint and its outbox.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc = start()
        time.sleep(3)

        # 3. Receivers and registry back: each alert firing then resolved, once per receiver;
        #    serving moved to v1 and back to v2; one routing record each way.
        webhook_server.down = False
        relay.start()
        mlflow.start()
        outage = time.monotonic() - t_down
        want = Counter(
            {
                ("DriftwardenBrokenInput", "firing"): 1,
                ("DriftwardenBrokenInput", "resolved"): 1,
                ("ModelFallbackActive", "firing"): 1,
                ("ModelFallbackActive", "resolved"): 1,
            }
        )

        def hook_notes() -> Counter[tuple[str, str]]:
            return Counter(
                (a["labels"]["alertname"], a["status"])
                for r in webhook_server.delivered
                for a in r["body"]["alerts"]
            )

        took = _wait(
            "every action to be delivered",
            lambda: (
                hook_notes() == want
                and Counter(relay.notifications()) == want
                and len(_records(kafka_bootstrap, topics["routing"])) == 2
            ),
            proc,
            stderr,
        )
        # 4. Nothing more arrives while the daemon keeps running (several ticks and retries).
        time.sleep(max(5.0, took))
        assert hook_notes() == want
        assert set(webhook_server.deliveries_per_key().values()) == {1}
        assert Counter(relay.notifications()) == want
        for name in ("DriftwardenBrokenInput", "ModelFallbackActive"):
            seq = [s for n, s in relay.notifications() if n == name]
            assert seq == ["firing", "resolved"], (name, seq)
        routes = _records(kafka_bootstrap, topics["routing"])
        assert [(r["action"], r["version"]) for r in routes] == [
            ("fallback", v1),
            ("route_back", v2),
        ]
        assert registry.version_by_alias(model, "serving") == v2
        assert registry.version_by_alias(model, "champion") == v2
        assert am_alerts(str(relay.target), model) == []
        record_property("predictions", n_pred)
        record_property("windows_closed_while_down", len(windows))
        record_property("outage_s", round(outage, 1))
        record_property("webhook_attempts_refused", len(webhook_server.requests) - 4)
        record_property("all_delivered_after_recovery_s", round(took, 1))
        record_property("duplicate_notifications", 0)
        passed = True
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
            # A clean stop is part of the test, unless it already failed.
            assert proc.returncode == 0 or not passed, stderr()
        mlflow.stop()
