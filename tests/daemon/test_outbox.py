"""Tests for the durable action outbox (``driftwarden.daemon.outbox``): time is passed in."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftwarden.daemon.outbox import Outbox, backoff_delay
from driftwarden.policies.receivers import WebhookReceiver, alert_handler, alert_job_payload
from driftwarden.policies.receivers.base import Delivery
from tests.policies.test_receivers import unique_alert


class Scripted:
    """A handler that answers from a script of deliveries and records its calls."""

    def __init__(self, *answers: Delivery) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, payload: dict[str, Any]) -> Delivery:
        self.calls.append(payload)
        return self.answers.pop(0) if self.answers else Delivery.success()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    """A fresh outbox in a temporary state directory (closed after the test)."""
    with Outbox(tmp_path / "state" / "outbox.sqlite") as b:
        yield b


def test_enqueue_is_idempotent_by_key(box: Outbox) -> None:
    """The same key enqueued twice is stored once; the second call says so."""
    assert box.enqueue("churn/r/w1/alert/oncall", "alert", {"n": 1}, now=0.0) is True
    assert box.enqueue("churn/r/w1/alert/oncall", "alert", {"n": 2}, now=1.0) is False
    (job,) = box.pending()
    assert job.payload == {"n": 1} and job.attempts == 0


def test_uses_wal_journal(box: Outbox) -> None:
    """The database runs in WAL mode (durable appends without blocking readers)."""
    db = sqlite3.connect(box.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_done_job_never_runs_again_even_if_replayed(box: Outbox) -> None:
    """After success the job is done; a later run or a replayed enqueue does not repeat it."""
    h = Scripted(Delivery.success())
    box.enqueue("k", "alert", {"x": 1})
    [res] = box.run_due(10.0, {"alert": h})
    assert res.outcome == "done" and res.attempts == 1
    assert box.enqueue("k", "alert", {"x": 1}) is False
    assert box.run_due(10_000.0, {"alert": h}) == []
    assert len(h.calls) == 1
    assert box.stats() == {"pending": 0, "done": 1, "dead": 0, "released": 0, "attempts": 1}


def test_retryable_failure_backs_off_then_succeeds(box: Outbox) -> None:
    """A retryable failure schedules the next attempt by the backoff; not due before it."""
    h = Scripted(Delivery.retry("503"), Delivery.retry("503"), Delivery.success())
    box.enqueue("k", "alert", {})
    [r1] = box.run_due(100.0, {"alert": h})
    assert r1.outcome == "retry" and r1.error == "503"
    assert r1.next_at == pytest.approx(100.0 + backoff_delay("k", 1))
    assert r1.next_at is not None
    assert box.run_due(r1.next_at - 0.001, {"alert": h}) == []
    [r2] = box.run_due(r1.next_at, {"alert": h})
    assert r2.outcome == "retry" and r2.attempts == 2
    assert r2.next_at == pytest.approx(r1.next_at + backoff_delay("k", 2))
    assert r2.next_at is not None
    [r3] = box.run_due(r2.next_at, {"alert": h})
    assert r3.outcome == "done" and r3.attempts == 3
    job = box.get("k")
    assert job is not None and job.state == "done" and job.last_error is None


def test_backoff_is_exponential_capped_and_jittered_deterministically() -> None:
    """Delays double up to the cap, lie in [0.5, 1) of the raw delay, and depend on the key."""
    for n in range(1, 15):
        raw = min(300.0, 2.0 ** (n - 1))
        d = backoff_delay("job-a", n)
        assert 0.5 * raw <= d < raw
        assert d == backoff_delay("job-a", n)
    assert backoff_delay("job-a", 20) <= 300.0
    assert len({backoff_delay(f"job-{i}", 5) for i in range(20)}) == 20


def test_non_retryable_failure_is_dead_and_not_retried(box: Outbox) -> None:
    """A final failure marks the job dead with its error; later runs leave it alone."""
    h = Scripted(Delivery.dead("http://hook answered HTTP 404."))
    box.enqueue("k", "alert", {})
    [res] = box.run_due(0.0, {"alert": h})
    assert res.outcome == "dead"
    assert box.run_due(1e9, {"alert": h}) == []
    (job,) = box.dead()
    assert job.last_error == "http://hook answered HTTP 404." and job.attempts == 1
    assert len(h.calls) == 1
    assert box.retry_dead("k", now=5.0) is True
    assert [r.outcome for r in box.run_due(5.0, {"alert": h})] == ["done"]


def test_handler_exception_is_a_retryable_failure(box: Outbox) -> None:
    """A raising handler does not stop the loop; the job is retried later."""

    def boom(payload: dict[str, Any]) -> Delivery:
        raise RuntimeError("mlflow unreachable")

    box.enqueue("k", "retrain", {})
    [res] = box.run_due(0.0, {"retrain": boom})
    assert res.outcome == "retry" and res.error is not None and "mlflow unreachable" in res.error


def test_max_attempts_turns_a_job_dead(tmp_path: Path) -> None:
    """A job that keeps failing retryably gives up after max_attempts."""
    box = Outbox(tmp_path / "o.sqlite", max_attempts=3)
    box.enqueue("k", "alert", {})
    h = Scripted(*[Delivery.retry("down")] * 5)
    now, outcomes = 0.0, []
    for _ in range(3):
        [res] = box.run_due(now, {"alert": h})
        outcomes.append(res.outcome)
        now = res.next_at or now
    assert outcomes == ["retry", "retry", "dead"]
    (job,) = box.dead()
    assert job.last_error is not None and "gave up after 3 attempts" in job.last_error


def test_jobs_without_a_handler_wait(box: Outbox) -> None:
    """Only kinds with a handler run; other jobs stay pending and untouched."""
    box.enqueue("a", "alert", {})
    box.enqueue("f", "fallback", {})
    assert [r.key for r in box.run_due(0.0, {"alert": Scripted()})] == ["a"]
    (job,) = box.pending()
    assert job.key == "f" and job.attempts == 0


def test_restart_continues_pending_jobs(tmp_path: Path) -> None:
    """A new Outbox on the same file keeps the schedule, the attempts and the done keys."""
    path = tmp_path / "o.sqlite"
    first = Outbox(path)
    first.enqueue("done-one", "alert", {})
    first.enqueue("pending-one", "alert", {"p": 1})
    h = Scripted(Delivery.success(), Delivery.retry("down"))
    first.run_due(0.0, {"alert": h})
    first.close()

    second = Outbox(path)
    (job,) = second.pending()
    assert job.key == "pending-one" and job.attempts == 1 and job.payload == {"p": 1}
    assert second.enqueue("done-one", "alert", {}) is False
    [res] = second.run_due(job.next_at, {"alert": h})
    assert res.key == "pending-one" and res.outcome == "done" and res.attempts == 2


def test_prune_removes_only_old_done_jobs(box: Outbox) -> None:
    """Pruning deletes done jobs older than the bound and keeps pending ones."""
    box.enqueue("old", "alert", {})
    box.enqueue("waiting", "alert", {}, not_before=1e9)
    box.run_due(10.0, {"alert": Scripted()})
    assert box.prune_done(before=5.0) == 0
    assert box.prune_done(before=11.0) == 1
    assert [j.key for j in box.pending()] == ["waiting"]


def test_webhook_down_then_up_delivers_exactly_once_across_restart(
    tmp_path: Path, webhook_server: Any
) -> None:
    """Webhook down → retries with backoff, also after a restart; once up → one delivery."""
    path = tmp_path / "o.sqlite"
    receivers = {"ml-team": WebhookReceiver("ml-team", webhook_server.url, timeout_s=5)}
    handlers = {"alert": alert_handler(receivers)}
    key = "churn/drifted/2026-11-26T10:15:00Z/alert/ml-team"
    alert = unique_alert()

    webhook_server.down = True
    box = Outbox(path)
    assert box.enqueue(key, "alert", alert_job_payload("ml-team", [alert], key))
    now = 0.0
    for _ in range(2):
        [res] = box.run_due(now, handlers)
        assert res.outcome == "retry"
        assert res.next_at is not None
        now = res.next_at
    box.close()

    box = Outbox(path)  # the daemon restarted; the replayed window enqueues the same key
    assert box.enqueue(key, "alert", alert_job_payload("ml-team", [alert], key)) is False
    [res] = box.run_due(now, handlers)
    assert res.outcome == "retry" and res.attempts == 3 and res.next_at is not None
    webhook_server.down = False
    assert box.run_due(res.next_at - 0.001, handlers) == []
    [res] = box.run_due(res.next_at, handlers)
    assert res.outcome == "done" and res.attempts == 4
    assert box.run_due(now + 10_000, handlers) == []

    assert len(webhook_server.requests) == 4
    assert webhook_server.deliveries_per_key() == {key: 1}
    assert webhook_server.delivered[0]["body"]["alerts"][0]["fingerprint"] == alert.fingerprint


def test_webhook_client_error_is_dead_not_retried(tmp_path: Path, webhook_server: Any) -> None:
    """A 4xx from the webhook marks the job dead after one attempt."""
    webhook_server.status_when_up = 400
    box = Outbox(tmp_path / "o.sqlite")
    handlers = {"alert": alert_handler({"w": WebhookReceiver("w", webhook_server.url)})}
    box.enqueue("k", "alert", alert_job_payload("w", [unique_alert()], "k"))
    [res] = box.run_due(0.0, handlers)
    assert res.outcome == "dead" and res.error is not None and "400" in res.error
    assert box.run_due(1e9, handlers) == []
    assert len(webhook_server.requests) == 1


def test_refuses_an_outbox_with_an_unknown_schema_version(tmp_path: Path) -> None:
    """A database written by a newer schema is refused with a sentence naming the file."""
    path = tmp_path / "o.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.close()
    with pytest.raises(ValueError, match="schema version 7"):
        Outbox(path)
