"""Where raw records come from: a Kafka consumer, or a JSONL file (embedded runs and replay).

Both hand the daemon :class:`RawRecord` lists in the order they must be processed, and accept
the offsets to resume from. Values stay bytes: decoding is the daemon's job (events.py).
"""

from __future__ import annotations

import gzip
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import structlog

from .kafka_rejoin import keep_pending_rejoins

__all__ = ["FileSource", "KafkaSource", "RawRecord", "Source", "SourceFenced"]

log = structlog.get_logger(__name__)


class SourceFenced(RuntimeError):
    """Another consumer took this one's place in the group (the same static member id): the
    daemon must stop at once, without a checkpoint, since its partitions are someone else's."""


class RawRecord(msgspec.Struct, frozen=True):
    """One record as it came from the source (a frozen msgspec struct: one is made per
    record, about 6x faster than a frozen dataclass)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


class Source(ABC):
    """A source of raw records with explicit offsets."""

    #: topic role for each topic name this source yields ("predictions" / "labels" / None=any)
    roles: dict[str, str | None]

    @abstractmethod
    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """The next records (possibly none), in processing order."""

    @abstractmethod
    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        """Resume from these next offsets (per topic, partition)."""

    def commit(self, offsets: dict[tuple[str, int], int], *, wait: bool = True) -> None:
        """Record that everything before these offsets is covered by a durable checkpoint.

        ``wait=False`` must be used inside rebalance callbacks (they run on the client's IO
        thread, where blocking consumer calls are refused).
        """

    def confirm(self, offsets: dict[tuple[str, int], int], timeout_s: float) -> None:
        """Commit ``offsets`` (already committed once) again to learn whether the partitions
        are still this consumer's: raises :class:`SourceFenced` if not. Waits at most
        ``timeout_s`` for the broker (an unanswered commit is logged, not raised)."""
        self.commit(offsets, wait=True)

    @property
    def exhausted(self) -> bool:
        """True when a finite source has nothing more to give."""
        return False

    def end_offsets(self) -> dict[tuple[str, int], int]:
        """The next offset past the end of each (topic, partition), as far as the source knows
        without asking anyone (for the consumer-lag gauge); empty when it does not know."""
        return {}

    def close(self) -> None:
        """Release resources."""


class FileSource(Source):
    """Events from a JSONL file (``.jsonl`` or ``.jsonl.gz``), one event per line.

    The file is one topic, ``file``, with one partition; the offset is the line number. The
    event's ``schema`` field tells predictions from labels.
    """

    TOPIC = "file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"events file {self.path} does not exist")
        self.roles = {self.TOPIC: None}
        self._next = 0
        self._lines: Iterator[bytes] | None = None
        self._pos = 0
        self._done = False

    def _open(self) -> Iterator[bytes]:
        opener: Callable[..., Any] = gzip.open if self.path.suffix == ".gz" else open
        with opener(self.path, "rb") as fh:
            yield from fh

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        self._next = offsets.get((self.TOPIC, 0), 0)
        self._lines = None
        self._pos = 0
        self._done = False

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        if self._lines is None:
            self._lines = self._open()
            self._pos = 0
        out: list[RawRecord] = []
        for line in self._lines:
            pos = self._pos
            self._pos += 1
            if pos < self._next:
                continue
            self._next = pos + 1
            value = line.rstrip(b"\r\n")
            out.append(RawRecord(self.TOPIC, 0, pos, _key_of(value), value, None))
            if len(out) >= max_records:
                return out
        self._done = True
        return out

    @property
    def exhausted(self) -> bool:
        return self._done


def _key_of(value: bytes) -> bytes | None:
    # The file carries no keys; use the model name as a producer would (best effort).
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    model = obj.get("model") if isinstance(obj, dict) else None
    return model.encode() if isinstance(model, str) else None


class KafkaSource(Source):
    """A kafka-python consumer in a consumer group, with manual commits.

    ``on_assign`` / ``on_revoke`` are called with the partition numbers gained or lost; the
    daemon restores or checkpoints state there. kafka-python runs rebalance callbacks on its
    IO thread inside ``poll()``, so they are kept short.

    Reads ahead: kafka-python sends the next fetch only once everything it has fetched has
    been handed out, so a consumer that takes its records ``max_records`` at a time waits for
    a fetch round trip every few polls. This source takes up to :attr:`READ_AHEAD` records from
    the consumer at once and hands them out ``max_records`` at a time: the next fetch is in
    flight while the daemon works on them. Records read ahead are not processed, so they are
    not in any checkpoint or commit; those of revoked or re-seeked partitions are dropped (the
    next owner, or the seek, reads them again).
    """

    #: Records taken from the consumer at once (at most what its fetches have buffered).
    READ_AHEAD = 20_000

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        client_id: str,
        topics: dict[str, str],
        security: dict[str, Any],
        auto_offset_reset: str,
        session_timeout_ms: int,
        max_poll_interval_ms: int,
        max_partition_fetch_bytes: int,
        fetch_max_wait_ms: int,
        on_assign: Callable[[list[int]], dict[tuple[str, int], int]],
        on_revoke: Callable[[list[int]], None],
        group_instance_id: str | None = None,
        metadata_max_age_ms: int = 300_000,
    ) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        self.roles = {topics["predictions"]: "predictions", topics["labels"]: "labels"}
        self._ahead: list[RawRecord] = []
        self._at = 0
        self._group = (group_id, group_instance_id)
        # A static member (KIP-345) keeps its partitions across a restart within the session
        # timeout: no rebalance, and the replica finds its own outbox and labeled store again.
        static = {} if group_instance_id is None else {"group_instance_id": group_instance_id}
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            session_timeout_ms=session_timeout_ms,
            max_poll_interval_ms=max_poll_interval_ms,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_wait_ms=fetch_max_wait_ms,
            metadata_max_age_ms=metadata_max_age_ms,
            reconnect_backoff_max_ms=5000,  # back within 5 s of a broker's return (default 30)
            **static,
            **security,
        )
        keep_pending_rejoins(self._consumer)  # else a rebalance can be lost: see kafka_rejoin
        source = self

        # kafka-python wraps an error raised in a rebalance callback into a bare "User
        # rebalance callback throws an error": it is kept here and raised as it is by the
        # poll() that ran the callback, before any record of the new assignment is handed out.
        self._callback_error: BaseException | None = None

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                parts = sorted({tp.partition for tp in revoked})
                if parts:
                    source._drop_ahead({(tp.topic, tp.partition) for tp in revoked})
                    try:
                        on_revoke(parts)
                    except Exception as exc:
                        source._callback_error = source._callback_error or exc
                        raise

            def on_partitions_assigned(self, assigned: Any) -> None:
                parts = sorted({tp.partition for tp in assigned})
                if parts:
                    try:
                        offsets = on_assign(parts)
                    except Exception as exc:  # e.g. a checkpoint this build cannot read
                        source._callback_error = source._callback_error or exc
                        raise
                    source.seek(offsets)

        self._consumer.subscribe(topics=list(self.roles), listener=_Listener())

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        if self._at >= len(self._ahead):
            self._ahead = self._read(max(max_records, self.READ_AHEAD), timeout_s)
            self._at = 0
        out = self._ahead[self._at : self._at + max_records]
        self._at += len(out)
        return out

    def _read(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        from kafka.errors import KafkaError

        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError:
            if self._callback_error is None:
                raise
            batches = {}
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error
        out: list[RawRecord] = []
        # Predictions before labels within one read: fewer labels wait as "early".
        for tp in sorted(
            batches, key=lambda t: (self.roles.get(t.topic) != "predictions", t.partition)
        ):
            for r in batches[tp]:
                out.append(RawRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp))
        return out

    def _drop_ahead(self, partitions: set[tuple[str, int]]) -> None:
        """Forget the records read ahead for these (topic, partition) pairs."""
        rest = self._ahead[self._at :]
        kept = [r for r in rest if (r.topic, r.partition) not in partitions]
        if len(kept) != len(rest):
            self._ahead, self._at = kept, 0

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        from kafka import TopicPartition

        self._drop_ahead(set(offsets))
        assigned = self._consumer.assignment()
        for (topic, partition), offset in offsets.items():
            tp = TopicPartition(topic, partition)
            if tp in assigned:
                self._consumer.seek(tp, offset)

    def commit(self, offsets: dict[tuple[str, int], int], *, wait: bool = True) -> None:
        self._commit(offsets, wait=wait, timeout_ms=None)

    def confirm(self, offsets: dict[tuple[str, int], int], timeout_s: float) -> None:
        self._commit(offsets, wait=True, timeout_ms=int(timeout_s * 1000))

    def _commit(
        self, offsets: dict[tuple[str, int], int], *, wait: bool, timeout_ms: int | None
    ) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        assigned = self._consumer.assignment()
        todo = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for (t, p), o in offsets.items()
            if TopicPartition(t, p) in assigned
        }
        from kafka.errors import FencedInstanceIdError, KafkaError

        try:
            if todo and wait and timeout_ms is not None:
                self._consumer.commit(todo, timeout_ms=timeout_ms)
            elif todo and wait:
                self._consumer.commit(todo)
            elif todo:
                self._consumer.commit_async(todo)
        except FencedInstanceIdError:
            # kafka-python only logs a fenced heartbeat and keeps its assignment; the refused
            # commit is where this replica learns that another one holds its id.
            group, instance = self._group
            raise SourceFenced(
                f"kafka: this replica was fenced: another consumer joined group {group!r} with "
                f"kafka.group_instance_id {instance!r} and now owns its partitions. Each "
                "replica needs its own id (e.g. the pod name); this one stops."
            ) from None
        except KafkaError as exc:
            # The durable checkpoint already holds these offsets (it is what a restart or a new
            # owner seeks to): a commit lost to a broker outage or a rebalance loses nothing
            # and is made again at the next checkpoint.
            log.warning("offset commit failed; the checkpoint holds the offsets", error=repr(exc))

    def end_offsets(self) -> dict[tuple[str, int], int]:
        # The high watermarks of the latest fetch responses: no request of its own.
        out: dict[tuple[str, int], int] = {}
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            if end is not None:
                out[(tp.topic, tp.partition)] = int(end)
        return out

    def partitions_for(self, topic: str) -> set[int] | None:
        return self._consumer.partitions_for_topic(topic)

    def close(self) -> None:
        self._consumer.close(autocommit=False)
