"""Tests for the alert receivers: spec validation, a real Alertmanager, a local webhook,
the Kafka receiver through a fake producer, and the log receiver."""

from __future__ import annotations

import json
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from driftwarden.policies.alerts import Alert, AlertBook, alert_from_decision, parse_time
from driftwarden.policies.model import ReceiverSpec
from driftwarden.policies.receivers import (
    AlertmanagerReceiver,
    Delivery,
    KafkaTopicReceiver,
    LogReceiver,
    WebhookReceiver,
    alert_handler,
    alert_job_payload,
    build_receiver,
    build_receivers,
    validate_receiver_spec,
)
from tests.fixtures.alertmanager import free_port
from tests.policies.test_alerts import make_decision


def unique_alert(status: str = "firing") -> Alert:
    """A firing alert for a model name no other test uses (the Alertmanager is shared)."""
    model = f"m-{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    return alert_from_decision(make_decision(status, model=model, window_end=now))


def am_alerts(url: str, model: str, active_only: bool = True) -> list[dict[str, Any]]:
    """The alerts Alertmanager's API returns for one model."""
    q = f"{url}/api/v2/alerts?filter=model%3D%22{model}%22"
    if not active_only:
        q += "&active=true&silenced=true&inhibited=true&unprocessed=true"
    with urllib.request.urlopen(q, timeout=5) as resp:  # noqa: S310
        return list(json.loads(resp.read()))


# --- spec validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "pagerduty", "url": "http://x"}, "unknown type 'pagerduty'"),
        ({"type": "webhook"}, "needs a url"),
        ({"type": "alertmanager", "url": "ftp://am:9093"}, "only http:// and https://"),
        ({"type": "webhook", "url": "http://"}, "names no host"),
        ({"type": "webhook", "url": "http://h", "secret": 1}, "unknown key 'secret'"),
        ({"type": "webhook", "url": "http://h", "timeout_s": 0}, "timeout_s 0"),
        ({"type": "kafka", "topic": ""}, "topic"),
        ("oops", "must be a mapping"),
    ],
)
def test_bad_receiver_specs_are_refused_with_a_sentence_naming_the_receiver(
    spec: Any, message: str
) -> None:
    """Every invalid spec raises ValueError naming the receiver and the problem."""
    with pytest.raises(ValueError, match=message) as exc:
        build_receiver("oncall", spec)
    assert "'oncall'" in str(exc.value)


def test_all_problems_of_a_spec_are_listed() -> None:
    """Validation reports every problem of a spec at once."""
    errors = validate_receiver_spec("x", {"type": "webhook", "url": "gopher://h", "extra": 1})
    assert len(errors) == 2


def test_kafka_receiver_needs_a_producer() -> None:
    """A kafka spec without the daemon's producer is refused plainly."""
    with pytest.raises(ValueError, match="no Kafka producer"):
        build_receiver("audit", {"type": "kafka"})


def test_build_receivers_from_policy_specs() -> None:
    """Every type builds from its spec, including a policies.model.ReceiverSpec."""
    rs = build_receivers(
        {
            "oncall": {"type": "alertmanager", "url": "http://127.0.0.1:9093/"},
            "ml-team": ReceiverSpec("ml-team", "webhook", {"url": "https://h/x", "timeout_s": 2}),
            "audit": {"type": "kafka"},
            "debug": {"type": "log"},
        },
        kafka_producer=FakeProducer(),
    )
    assert isinstance(rs["oncall"], AlertmanagerReceiver)
    assert rs["oncall"].endpoint == "http://127.0.0.1:9093/api/v2/alerts"
    assert isinstance(rs["ml-team"], WebhookReceiver) and rs["ml-team"].timeout_s == 2
    assert isinstance(rs["audit"], KafkaTopicReceiver) and rs["audit"].topic == "driftwarden.alerts"
    assert isinstance(rs["debug"], LogReceiver)


# --- Alertmanager (real) ---------------------------------------------------------------------


@pytest.mark.alertmanager
def test_alertmanager_receives_firing_alert_without_duplicates_then_resolution(
    alertmanager_url: str,
) -> None:
    """Firing → visible with labels and annotations; resends → still one; resolved → gone."""
    rcv = build_receiver("oncall", {"type": "alertmanager", "url": alertmanager_url})
    alert = unique_alert()
    for _ in range(3):  # the first send and two resends
        d = rcv.send([alert])
        assert d.ok, d.error
    got = am_alerts(alertmanager_url, alert.model)
    assert len(got) == 1
    am = got[0]
    assert am["labels"] == dict(alert.labels)
    assert am["annotations"]["summary"] == alert.annotations["summary"]
    assert json.loads(am["annotations"]["evidence_json"])["quality"]["triggered"] is True
    assert am["status"]["state"] == "active"
    assert parse_time(am["endsAt"]) > datetime.now(UTC)

    resolved = AlertBook()
    resolved.fire(alert)
    r = resolved.resolve(alert.fingerprint, datetime.now(UTC))
    assert r is not None
    d = rcv.send([r])
    assert d.ok, d.error
    assert am_alerts(alertmanager_url, alert.model) == []


@pytest.mark.alertmanager
def test_alertmanager_refusal_is_not_retryable(alertmanager_url: str) -> None:
    """A 400 (an invalid label name) is a final failure, not retried."""
    bad = Alert(
        fingerprint="bad",
        labels={"alertname": "X", "not a label": "v"},
        annotations={},
        starts_at="2026-01-01T00:00:00Z",
    )
    d = AlertmanagerReceiver("oncall", alertmanager_url).send([bad])
    assert not d.ok and not d.retryable
    assert d.error is not None and "400" in d.error


def test_alertmanager_down_is_retryable() -> None:
    """Nobody listening on the port → a retryable failure naming the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    d = AlertmanagerReceiver("oncall", url, timeout_s=2).send([unique_alert()])
    assert not d.ok and d.retryable
    assert d.error is not None and url in d.error


# --- webhook ---------------------------------------------------------------------------------


def test_webhook_posts_notification_with_idempotency_key(webhook_server: Any) -> None:
    """The body follows Alertmanager's webhook shape and the key is in header and body."""
    rcv = build_receiver(
        "ml-team", {"type": "webhook", "url": webhook_server.url, "headers": {"X-Team": "ml"}}
    )
    alert = unique_alert()
    d = rcv.send([alert], key="churn/drifted/2026-11-26T10:15:00Z/alert/ml-team")
    assert d.ok, d.error
    (req,) = webhook_server.requests
    assert req["headers"]["Idempotency-Key"] == "churn/drifted/2026-11-26T10:15:00Z/alert/ml-team"
    assert req["headers"]["X-Team"] == "ml"
    body = req["body"]
    assert body["idempotency_key"] == req["headers"]["Idempotency-Key"]
    assert body["status"] == "firing" and body["receiver"] == "ml-team"
    assert body["alerts"][0]["labels"] == dict(alert.labels)
    assert body["alerts"][0]["fingerprint"] == alert.fingerprint
    assert body["alerts"][0]["endsAt"] is None


def test_webhook_without_key_derives_a_stable_one(webhook_server: Any) -> None:
    """Two sends of the same alerts without a key carry the same derived key."""
    rcv = WebhookReceiver("ml-team", webhook_server.url)
    alert = unique_alert()
    assert rcv.send([alert]).ok and rcv.send([alert]).ok
    assert len(webhook_server.deliveries_per_key()) == 1


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (429, True), (404, False)])
def test_webhook_failures_are_classified(webhook_server: Any, status: int, retryable: bool) -> None:
    """5xx and 429 can be retried, other 4xx cannot."""
    webhook_server.status_when_up = status
    d = WebhookReceiver("ml-team", webhook_server.url).send([unique_alert()])
    assert not d.ok and d.retryable is retryable
    assert d.error is not None and str(status) in d.error


# --- Kafka (fake producer) -------------------------------------------------------------------


class FakeFuture:
    """kafka-python's FutureRecordMetadata, reduced to ``get``."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> None:
        if self.error:
            raise self.error


class FakeProducer:
    """Records ``send`` calls; can fail every future with a given error."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.flushed = 0
        self.error = error

    def send(self, topic: str, key: bytes, value: bytes) -> FakeFuture:
        self.sent.append((topic, key, value))
        return FakeFuture(self.error)

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1


class RetriableBrokerError(Exception):
    """Stands in for a kafka.errors class with ``retriable = True``."""

    retriable = True


class RecordTooLargeError(Exception):
    """Stands in for a kafka.errors class with ``retriable = False``."""

    retriable = False


def test_kafka_receiver_publishes_each_alert_keyed_by_fingerprint() -> None:
    """One JSON record per alert on the topic, key = fingerprint, then a flush."""
    producer = FakeProducer()
    rcv = build_receiver("audit", {"type": "kafka", "topic": "t.alerts"}, kafka_producer=producer)
    a, b = unique_alert(), unique_alert()
    assert rcv.send([a, b], key="k1").ok
    assert [(t, k) for t, k, _ in producer.sent] == [
        ("t.alerts", a.fingerprint.encode()),
        ("t.alerts", b.fingerprint.encode()),
    ]
    record = json.loads(producer.sent[0][2])
    assert Alert.from_dict(record) == a and record["idempotency_key"] == "k1"
    assert producer.flushed == 1


@pytest.mark.parametrize(
    ("error", "retryable"),
    [(RetriableBrokerError("leader moved"), True), (RecordTooLargeError("too big"), False)],
)
def test_kafka_failures_follow_the_error_retriable_flag(error: Exception, retryable: bool) -> None:
    """A failed future gives a failed delivery, retryable as the Kafka error says."""
    d = KafkaTopicReceiver("audit", FakeProducer(error)).send([unique_alert()])
    assert not d.ok and d.retryable is retryable
    assert d.error is not None and "driftwarden.alerts" in d.error


# --- log and the outbox handler --------------------------------------------------------------


def test_log_receiver_logs_one_line_per_alert() -> None:
    """Firing alerts log at warning level with their labels and summary."""
    a = unique_alert()
    with capture_logs() as logs:
        assert LogReceiver("debug").send([a, a.resolved(a.starts_at)]).ok
    assert [(e["log_level"], e["status"]) for e in logs] == [
        ("warning", "firing"),
        ("info", "resolved"),
    ]
    assert logs[0]["labels"] == dict(a.labels) and logs[0]["receiver"] == "debug"


def test_alert_handler_delivers_jobs_and_refuses_unknown_receivers(webhook_server: Any) -> None:
    """The outbox handler routes a job to its receiver with the job's key."""
    handle = alert_handler({"ml-team": WebhookReceiver("ml-team", webhook_server.url)})
    a = unique_alert()
    assert handle(alert_job_payload("ml-team", [a], "job-1")).ok
    assert webhook_server.deliveries_per_key() == {"job-1": 1}
    d = handle(alert_job_payload("gone", [a], "job-2"))
    assert not d.ok and not d.retryable and d.error is not None and "'gone'" in d.error


# --- the contract every receiver type meets --------------------------------------------------


@pytest.fixture(params=["alertmanager", "webhook", "kafka", "log"])
def any_receiver(request: pytest.FixtureRequest) -> Any:
    """One working receiver of each type (Alertmanager real, Kafka through a fake producer)."""
    kind = request.param
    if kind == "alertmanager":
        spec = {"type": kind, "url": request.getfixturevalue("alertmanager_url")}
    elif kind == "webhook":
        spec = {"type": kind, "url": request.getfixturevalue("webhook_server").url}
    else:
        spec = {"type": kind}
    return build_receiver(f"contract-{kind}", spec, kafka_producer=FakeProducer())


def test_receiver_contract(any_receiver: Any) -> None:
    """Every receiver: named, typed, ok on nothing, ok on firing then resolved, never raises."""
    assert any_receiver.name.startswith("contract-") and any_receiver.type
    # Only Alertmanager forgets alerts that are not re-sent.
    assert any_receiver.wants_resends is (any_receiver.type == "alertmanager")
    assert any_receiver.send([]).ok
    a = unique_alert()
    first = any_receiver.send([a], key="contract-1")
    assert isinstance(first, Delivery) and first.ok, first.error
    assert any_receiver.send([a.resolved(datetime.now(UTC))], key="contract-2").ok
