"""A failed offset commit (broker outage, rebalance) must not take the daemon down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kafka.errors import CommitFailedError, KafkaConnectionError, KafkaTimeoutError

from driftwarden.daemon.sources import KafkaSource


class _FailingConsumer:
    """Stands in for KafkaConsumer's commit calls only (what the outage test showed failing)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    def assignment(self) -> set[Any]:
        from kafka import TopicPartition

        return {TopicPartition("predictions", 0)}

    def commit(self, offsets: Any, timeout_ms: int | None = None) -> None:
        self.calls += 1
        self.timeout_ms = timeout_ms
        raise self.exc

    def commit_async(self, offsets: Any) -> None:
        self.calls += 1
        raise self.exc


def test_commit_errors_are_logged_not_raised(tmp_path: Path) -> None:
    """CommitFailedError and connection errors are absorbed: the checkpoint holds the offsets."""
    from structlog.testing import capture_logs

    for exc in (
        CommitFailedError("rebalanced"),
        KafkaConnectionError("broker down"),
        KafkaTimeoutError("no answer"),
    ):
        source = KafkaSource.__new__(KafkaSource)  # no broker: only commit() is exercised
        source._consumer = _FailingConsumer(exc)
        with capture_logs() as logs:
            source.commit({("predictions", 0): 42}, wait=True)
            source.commit({("predictions", 0): 43}, wait=False)
            # the idle daemon's ownership probe: bounded by its timeout, absorbed the same way
            source.confirm({("predictions", 0): 43}, 5.0)
        assert source._consumer.calls == 3 and source._consumer.timeout_ms == 5000
        assert [e["event"] for e in logs] == [
            "offset commit failed; the checkpoint holds the offsets"
        ] * 3
