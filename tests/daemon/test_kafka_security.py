"""The daemon against a broker whose client port requires SASL_SSL with SCRAM-SHA-512.

The module starts its own broker (``scripts/kafka_broker.py``, ``security="sasl_ssl"``: a TLS
listener with a throw-away CA, one SCRAM user). Everything the tests send and read goes through
that secured port. The daemon's config file holds the non-secret ``kafka.security`` keys
(protocol, mechanism, user, CA file); the password reaches it only through
``DRIFTWARDEN_KAFKA__SECURITY__SASL_PLAIN_PASSWORD`` in the environment.
A seeded input (two models, one with an incident, a few malformed records) is consumed; window
summaries, decisions and the DLQ come back over the same listener with exact counts, with the
state in a local directory or in the Kafka state topic. A wrong password and a client without
TLS/SASL are refused.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from driftwarden.daemon.checkpoint import LocalCheckpointStore
from tests.daemon.test_kafka_ingest import _consume_all as consume_all
from tests.fixtures.kafka import load_broker_module

from . import eventgen

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

kb = load_broker_module()

MODELS = ("churn", "fraud")
N_PER_MODEL = 2_500  # 10 events/s of event time: 250 s, two closed 100 s windows per stream
N_BAD = 12
MAX_BYTES = 100_000
START_TIMEOUT_S = 180.0  # a cold JVM plus keytool on a busy 2-core machine; normally ~10 s
RUN_TIMEOUT_S = 120.0  # bound on one daemon run; a healthy one needs ~10 s
REFUSED_WITHIN_S = 60.0  # a refused login must end the daemon within this bound

POLICY = """\
apiVersion: driftwarden/v1
kind: Policy
model: "*"
reference: file:profile.json
window: {duration: 100s, labeled: {duration: 100s}, allowed_lateness: 0s}
detectors:
  - {name: quality, type: data_quality}
  - {name: drift, type: feature_drift, method: js, threshold: 0.1}
rules:
  - name: input-drift
    when: drift
    severity: warning
    actions: [{alert: log}]
receivers:
  log: {type: log}
"""


# --------------------------------------------------------------------------- broker and input


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A broker of its own whose only client port is SASL_SSL (SCRAM-SHA-512)."""
    b = kb.Broker(tmp_path_factory.mktemp("kafka-sasl-ssl"), security="sasl_ssl")
    try:
        b.start(timeout=START_TIMEOUT_S)
    except kb.BrokerError as err:
        pytest.fail(f"The SASL_SSL Kafka broker did not start: {err}", pytrace=False)
    try:
        yield b
    finally:
        b.stop()


def _consume_all(broker: Any, topic: str, timeout_s: float = 60.0) -> list[Any]:
    """Every record of a topic, read over the secured listener."""
    return consume_all(broker.bootstrap, topic, timeout_s, **broker.client_security())


@pytest.fixture(scope="module")
def stream(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Topics created and filled over the secured listener, with the expected counts."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    sec = broker.client_security()
    tag = uuid.uuid4().hex[:8]
    topics = {k: f"{k}-{tag}" for k in ("predictions", "labels")}
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, **sec)
    try:
        admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()])
    finally:
        admin.close()

    base = tmp_path_factory.mktemp("secured")
    (base / "policies").mkdir()
    (base / "policies" / "all.yaml").write_text(POLICY)
    eventgen.save_profile(base / "policies" / "profile.json")

    streams = [
        iter(
            eventgen.events(
                N_PER_MODEL, seed=41 + i, model=m, incident_from=1_000 if m == "churn" else None
            )
        )
        for i, m in enumerate(MODELS)
    ]
    bad = eventgen.malformed(N_BAD, max_bytes=MAX_BYTES)
    expected: Counter[str] = Counter()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, acks="all", **sec)
    try:
        for role, model, value, malformed in eventgen.interleave(
            streams, MODELS, bad, 0.004, random.Random(3)
        ):
            producer.send(topics[role], key=model.encode(), value=value)
            expected["bad" if malformed else role] += 1
        producer.flush(timeout=60)
    finally:
        producer.close()
    return {"topics": topics, "base": base, "expected": expected}


# --------------------------------------------------------------------------- the daemon


def _output_topics(broker: Any, name: str) -> dict[str, str]:
    """Output topics of one run, created over the secured listener (the state topic is not:
    the daemon's Kafka state backend creates it)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    topics = {k: f"{k}-{tag}" for k in ("dlq", "decisions", "windows", "alerts", "routing")}
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, **broker.client_security())
    try:
        admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()])
    finally:
        admin.close()
    return {**topics, "state": f"state-{tag}", "labeled": f"labeled-{tag}"}


def _config(stream: dict[str, Any], broker: Any, name: str, backend: str) -> Path:
    """A config file with every ``kafka.security`` key except the password."""
    base: Path = stream["base"]
    security = {k: v for k, v in broker.client_security().items() if k != "sasl_plain_password"}
    cfg = {
        "source": "kafka",
        "kafka": {
            "bootstrap_servers": broker.bootstrap,
            "group_id": f"dw-{name}-{uuid.uuid4().hex[:6]}",
            "client_id": f"dw-{name}",
            "topics": {**stream["topics"], **_output_topics(broker, name)},
            "poll_timeout_ms": 200,
            "session_timeout_ms": 10000,
            "security": security,
        },
        "policies": str(base / "policies"),
        "state": {"dir": str(base / f"state-{name}"), "backend": backend},
        "checkpoint": {"every_events": 100_000, "every": "1h"},
        "join": {"ttl": "30d"},
        "limits": {"max_message_bytes": MAX_BYTES},
        "http": {"enabled": False},
        "log": {"level": "warning", "json": True},
    }
    path = base / f"driftwarden-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(config: Path, password: str, timeout_s: float) -> tuple[int, str, str]:
    """``driftwarden run`` as a subprocess, with the SASL password in the environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTWARDEN_")}
    env["DRIFTWARDEN_KAFKA__SECURITY__SASL_PLAIN_PASSWORD"] = password
    cmd = [sys.executable, "-m", "driftwarden.daemon.cli", "run", "--config", str(config)]
    cmd += ["--idle-timeout", "6", "--timeout", str(RUN_TIMEOUT_S)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        pytest.fail(
            f"`driftwarden run` did not end within {timeout_s:.0f} s; stderr:\n{err[-3000:]}"
        )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("backend", ["local", "kafka"])
def test_daemon_consumes_and_publishes_over_sasl_ssl(
    broker: Any, stream: dict[str, Any], backend: str
) -> None:
    """Every valid event counted, windows/decisions/DLQ published, state saved, over SASL_SSL."""
    sec = broker.client_security()
    config = _config(stream, broker, f"ok-{backend}", backend)
    assert sec["sasl_plain_password"] not in config.read_text()
    topics = yaml.safe_load(config.read_text())["kafka"]["topics"]
    code, out, err = _run(config, sec["sasl_plain_password"], RUN_TIMEOUT_S + 60)
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    exp = stream["expected"]
    assert summary["valid"] == exp["predictions"] + exp["labels"], err[-3000:]
    assert summary["invalid"] == exp["bad"] > 0
    assert summary["windows"] >= 2 * len(MODELS)
    assert summary["decisions"] >= 1  # the churn incident drifts

    # The outputs, read back through the secured listener.
    windows = [orjson.loads(r.value) for r in _consume_all(broker, topics["windows"])]
    assert len(windows) == summary["windows"]
    assert {w["model"] for w in windows} == set(MODELS)
    decisions = [orjson.loads(r.value) for r in _consume_all(broker, topics["decisions"])]
    assert len(decisions) == summary["decisions"]
    assert any(d["model"] == "churn" and d["rule"] == "input-drift" for d in decisions)
    assert len(_consume_all(broker, topics["dlq"])) == exp["bad"]

    store: Any
    if backend == "kafka":
        from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

        store = KafkaCheckpointStore(
            broker.bootstrap, topics["state"], security=sec, create_topic=False
        )
    else:
        store = LocalCheckpointStore(stream["base"] / f"state-ok-{backend}")
    try:
        doc = store.load("p0")
    finally:
        store.close()
    assert doc is not None, f"no checkpoint in the {backend} state backend"
    assert sum(st["events"] for st in doc["models"].values()) == exp["predictions"]
    assert doc["invalid"] == exp["bad"]


@pytest.fixture(scope="module")
def refused_run(broker: Any, stream: dict[str, Any]) -> dict[str, Any]:
    """One `driftwarden run` whose SCRAM password is wrong: exit code, stderr and duration."""
    config = _config(stream, broker, "bad-password", "local")
    began = time.monotonic()
    code, out, err = _run(config, "not-the-password", REFUSED_WITHIN_S)
    return {"code": code, "out": out, "err": err, "took": time.monotonic() - began}


def test_wrong_password_ends_the_daemon_in_bounded_time(refused_run: dict[str, Any]) -> None:
    """A refused SCRAM login never looks like a running daemon: exit 2 (cannot run), no summary."""
    assert refused_run["code"] == 2, refused_run["err"][-2000:]
    assert refused_run["took"] < REFUSED_WITHIN_S
    assert refused_run["out"].strip() == ""


def test_wrong_password_error_is_one_line_naming_authentication(
    refused_run: dict[str, Any],
) -> None:
    """The refusal is one `driftwarden:` line on stderr that names authentication, no traceback."""
    err = refused_run["err"]
    assert "Traceback" not in err, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("driftwarden: ")]
    assert len(ours) == 1 and "authenticat" in ours[0].lower(), err[-3000:]


def test_client_without_tls_and_sasl_is_refused(broker: Any) -> None:
    """A PLAINTEXT client gets no metadata from the SASL_SSL port; the internal port answers."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    with pytest.raises(OSError):
        kb.probe_metadata("127.0.0.1", broker.port, 10.0)
    assert broker.internal_port in {
        p for _, _, p in kb.probe_metadata("127.0.0.1", broker.internal_port)
    }
    began = time.monotonic()
    with pytest.raises(KafkaError):
        admin = KafkaAdminClient(
            bootstrap_servers=broker.bootstrap,
            api_version_auto_timeout_ms=5_000,
            request_timeout_ms=5_000,
        )
        admin.close()
    assert time.monotonic() - began < REFUSED_WITHIN_S
