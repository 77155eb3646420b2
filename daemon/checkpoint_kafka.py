"""Checkpoints in a compacted Kafka topic (``driftwarden.state``), shared by every replica.

The local directory store is enough for one daemon; when replicas of one consumer group hand
partitions to each other, the replica that takes a partition over must restore the state the
previous owner saved. This store keeps every checkpoint unit as one record of a compacted topic:

* **key** = the unit (``"p3"``, ``"actions"``), so compaction keeps the latest value per unit and
  the default partitioner always sends a unit to the same partition (its saves stay ordered);
* **value** = the wrapped checkpoint (``format``/``version``, see :mod:`.checkpoint`) as orjson,
  compressed with zlib (header ``driftwarden.codec: zlib``); a record without that header is
  read as plain JSON, so a value written by hand with the console producer still loads;
* a **tombstone** (value ``None``, see :meth:`KafkaCheckpointStore.delete`) means "no checkpoint".

``save`` produces and waits for the broker's acknowledgement (``acks=all``, idempotent
producer) before it returns (``save_all`` sends every unit of a checkpoint first, then waits for
them together), so the caller commits input offsets only after the state they cover
is durable. ``load`` first captures the topic's end offsets, reads with its own consumer (no
group: ``assign`` + position) up to them and answers from the newest value per key; what it read
is cached and later loads continue from there, so a takeover costs one read of the compacted
topic and then only the records written since. The cache holds every key's offset but only up
to ``cache_bytes`` of values (compressed, the newest records first): a replica does not keep
the whole group's state in memory; a load whose value was dropped fetches that one record
again.

The topic is created when missing with **one partition** (a handful of keys: one per input
partition plus ``actions``; a single partition gives one total order and one fetch), compaction,
``max.message.bytes`` = ``max_bytes`` (16 MiB by default, large states) and ``segment.ms`` = 10
minutes (the active segment is never compacted, so short segments keep a takeover's first read
small). An existing topic with more partitions is read in full; one that is not compacted is
refused, because retention would silently delete checkpoints. A checkpoint larger than the
topic's limit after compression is refused with a sentence naming the unit and its size.

The calls are safe on kafka-python's IO thread of *another* client (the daemon's rebalance
callbacks): this store's producer and consumer are separate clients with their own network loop.
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from .checkpoint import CheckpointError, CheckpointStore, unwrap, wrap

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_TOPIC", "KafkaCheckpointStore"]

log = structlog.get_logger(__name__)

DEFAULT_TOPIC = "driftwarden.state"
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
CODEC_HEADER = "driftwarden.codec"
# Room for the record batch header, the record framing, the key and our header: the broker
# checks max.message.bytes against the whole batch, we check the value, so keep a margin.
_RECORD_OVERHEAD = 1024
# A corrupted or hostile value must not inflate without bound while it is decompressed.
_MAX_INFLATE_FACTOR = 64
_SEGMENT_MS = 10 * 60 * 1000


DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Stored:
    """The newest record read for one key (value kept compressed until it is asked for;
    ``None`` once dropped from the cache: fetched again by offset when asked for)."""

    partition: int
    offset: int
    value: bytes | None
    codec: str


class KafkaCheckpointStore(CheckpointStore):
    """Checkpoints as records of a compacted Kafka topic (key = unit), readable by any replica.

    Parameters
    ----------
    bootstrap_servers
        ``host:port[,host:port]`` of the cluster.
    topic
        The state topic; created (1 partition, compacted) when it does not exist.
    security
        kafka-python client settings passed through as-is (``security_protocol``, ``sasl_*``,
        ``ssl_*``), the same dict the daemon's consumer and producer get.
    client_id
        Prefix of the client ids (``<client_id>-state-producer`` / ``-state-reader``).
    max_bytes
        Largest record the topic takes (its ``max.message.bytes`` at creation). For an existing
        topic the smaller of this and the topic's own setting applies.
    timeout_s
        How long a save waits for its acknowledgement and a load for the end of the topic.
    compress_level
        zlib level (1 is fast and already shrinks JSON states several times).
    create_topic
        Create the topic when missing (turn off where the operator provisions topics).
    topic_configs
        Extra topic configs used at creation (strings, e.g. ``{"min.insync.replicas": "2"}``).
    replication_factor
        Replication of a created topic; -1 takes the broker's default.
    cache_bytes
        Most bytes of (compressed) values kept from what the store has read; beyond it the
        oldest records' values are dropped and a load of one fetches it again.
    kind
        What the topic holds, in messages and logs (``"silence"`` for the silence store's
        topic, which is a store of this kind too).

    Examples
    --------
    >>> store = KafkaCheckpointStore("broker:9092", "driftwarden.state")  # doctest: +SKIP
    >>> store.save("p0", {"offsets": [["predictions", 0, 42]], "models": {}})  # doctest: +SKIP
    >>> store.load("p0")["offsets"]  # doctest: +SKIP
    [['predictions', 0, 42]]
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = DEFAULT_TOPIC,
        *,
        security: Mapping[str, Any] | None = None,
        client_id: str = "driftwarden",
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout_s: float = 30.0,
        compress_level: int = 1,
        create_topic: bool = True,
        topic_configs: Mapping[str, str] | None = None,
        replication_factor: int = -1,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        kind: str = "checkpoint",
    ) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        if max_bytes <= _RECORD_OVERHEAD:
            raise CheckpointError(
                f"max_bytes {max_bytes} of the Kafka checkpoint store is too small; "
                f"it must exceed {_RECORD_OVERHEAD} bytes."
            )
        self.topic = topic
        self.kind = kind
        self.timeout_s = timeout_s
        self.compress_level = compress_level
        sec = dict(security or {})
        topic_limit = self._prepare_topic(
            bootstrap_servers,
            sec,
            client_id,
            max_bytes,
            create_topic,
            dict(topic_configs or {}),
            replication_factor,
        )
        #: The largest record (key + compressed value + framing) this store will send.
        self.max_bytes = min(max_bytes, topic_limit) if topic_limit else max_bytes
        request = self.max_bytes + _RECORD_OVERHEAD
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=f"{client_id}-state-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            max_request_size=request,
            request_timeout_ms=int(timeout_s * 1000),
            **sec,
        )
        self._reader_config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            # A record larger than the fetch limits still arrives (KIP-74), but in one fetch.
            "max_partition_fetch_bytes": request,
            "fetch_max_bytes": max(52_428_800, request),
            **sec,
        }
        self._client_id = client_id
        self._consumer = KafkaConsumer(client_id=f"{client_id}-state-reader", **self._reader_config)
        # Fetches a record whose value left the cache: a consumer of its own, so the reader's
        # positions and fetch state stay as they are. Opened at the first such fetch.
        self._refetcher: Any = None
        partitions = self._partitions()
        self._tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._tps)
        self._consumer.seek_to_beginning(*self._tps)
        self._latest: dict[str, _Stored] = {}
        self.cache_bytes = cache_bytes
        self._cached = 0  # bytes of the values held in _latest
        # The consumer is not thread-safe; the daemon's main loop and a rebalance callback may
        # both reach the store, so loads are serialised.
        self._lock = threading.Lock()
        self._closed = False

    # -- topic ------------------------------------------------------------------------------
    def _prepare_topic(
        self,
        bootstrap_servers: str,
        security: dict[str, Any],
        client_id: str,
        max_bytes: int,
        create: bool,
        extra: dict[str, str],
        replication_factor: int,
    ) -> int | None:
        """Create the topic if missing; return its ``max.message.bytes`` (None if unknown)."""
        from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers, client_id=f"{client_id}-state-admin", **security
        )
        try:
            exists = self.topic in set(admin.list_topics())
            if not exists and create:
                configs = {
                    "cleanup.policy": "compact",
                    "max.message.bytes": str(max_bytes),
                    "segment.ms": str(_SEGMENT_MS),
                    **{str(k): str(v) for k, v in extra.items()},
                }
                try:
                    admin.create_topics(
                        {
                            self.topic: {
                                "num_partitions": 1,
                                "replication_factor": replication_factor,
                                "configs": configs,
                            }
                        },
                        timeout_ms=int(self.timeout_s * 1000),
                        wait_for_metadata=True,
                    )
                    log.info("topic created", kind=self.kind, topic=self.topic, max_bytes=max_bytes)
                except TopicAlreadyExistsError:
                    pass  # another replica created it first: the same topic is fine
            elif not exists:
                raise CheckpointError(
                    f"{self.kind} topic {self.topic!r} does not exist and creating it is turned off."
                )
            described = admin.describe_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC,
                        self.topic,
                        {"cleanup.policy": None, "max.message.bytes": None},
                    )
                ],
                config_filter="all",
            )
        except KafkaError as exc:
            raise CheckpointError(
                f"{self.kind} topic {self.topic!r} could not be prepared on {bootstrap_servers}: "
                f"{exc}."
            ) from None
        finally:
            admin.close()
        entries = described.get("topic", {}).get(self.topic, {})
        policy = str(entries.get("cleanup.policy", {}).get("value", ""))
        if "compact" not in policy.split(","):
            raise CheckpointError(
                f"{self.kind} topic {self.topic!r} has cleanup.policy={policy or '?'}; it must be "
                f"compacted, or retention would delete {self.kind}s."
            )
        limit = entries.get("max.message.bytes", {}).get("value")
        return int(limit) if limit is not None else None

    def _partitions(self) -> set[int]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            parts = self._consumer.partitions_for_topic(self.topic)
            if parts:
                return set(parts)
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"{self.kind} topic {self.topic!r} has no partitions visible after "
                    f"{self.timeout_s:.0f} s."
                )
            time.sleep(0.1)

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, unit: str, payload: dict[str, Any]) -> tuple[bytes, bytes]:
        """The record (key, value) for a unit's checkpoint; refuses one over the size limit."""
        data = orjson.dumps(wrap(payload), option=orjson.OPT_SERIALIZE_NUMPY)
        value = zlib.compress(data, self.compress_level)
        key = unit.encode()
        size = len(key) + len(value) + _RECORD_OVERHEAD
        if size > self.max_bytes:
            raise CheckpointError(
                f"checkpoint for unit {unit!r} is {len(value)} bytes compressed ({len(data)} "
                f"bytes of JSON), over the {self.max_bytes}-byte limit of topic {self.topic!r}; "
                "raise max.message.bytes of the topic and the store's max_bytes."
            )
        return key, value

    def _decode(self, unit: str, stored: _Stored) -> dict[str, Any]:
        where = (
            f"checkpoint for unit {unit!r} in topic {self.topic!r} "
            f"(partition {stored.partition}, offset {stored.offset})"
        )
        data = stored.value
        if data is None:  # a dropped value is fetched again before it is decoded
            raise RuntimeError(f"{where}: its value left the cache and was not fetched again.")
        if stored.codec == "zlib":
            inflater = zlib.decompressobj()
            try:
                limit = max(self.max_bytes, len(data)) * _MAX_INFLATE_FACTOR
                data = inflater.decompress(data, limit)
            except zlib.error as exc:
                raise CheckpointError(f"{where} is corrupted: zlib says {exc}.") from None
            if inflater.unconsumed_tail:
                raise CheckpointError(f"{where} inflates beyond {limit} bytes; refused.")
            if not inflater.eof:
                raise CheckpointError(f"{where} is corrupted: the zlib stream is truncated.")
        elif stored.codec != "":
            raise CheckpointError(f"{where} uses the unknown codec {stored.codec!r}.")
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CheckpointError(f"{where} is corrupted: not valid JSON ({exc}).") from None
        return unwrap(doc, where)

    # -- CheckpointStore --------------------------------------------------------------------
    def save(self, unit: str, payload: dict[str, Any]) -> None:
        """Produce the unit's checkpoint and return once the broker has acknowledged it."""
        self.save_all([(unit, payload)])

    def save_all(self, units: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Produce every unit's checkpoint, then wait for the acknowledgements: the writes are
        in flight together instead of one round trip each (the idempotent producer keeps them in
        order). Encoding is the store's own work; sending and acknowledgements count in
        :attr:`waited_s`. A unit that cannot be written raises :class:`CheckpointError` naming
        it; others of the call may be written all the same (each is a whole checkpoint, and the
        daemon commits no offsets after a failed save)."""
        from kafka.errors import KafkaError

        sent: list[tuple[str, Any]] = []
        try:
            for unit, payload in units:
                key, value = self.encode(unit, payload)
                t0 = time.perf_counter()
                try:  # blocks only while the producer has no metadata or no buffer room
                    future = self._producer.send(
                        self.topic, key=key, value=value, headers=[(CODEC_HEADER, b"zlib")]
                    )
                except KafkaError as exc:
                    raise self._write_error(unit, exc) from None
                finally:
                    self.waited_s += time.perf_counter() - t0
                sent.append((unit, future))
        except BaseException:
            # Leave nothing of this call in flight: what was sent is acknowledged (or has
            # failed) before the error is raised.
            with contextlib.suppress(KafkaError):
                self._producer.flush(timeout=self.timeout_s)
            raise
        t0 = time.perf_counter()
        try:
            for unit, future in sent:
                try:
                    future.get(timeout=self.timeout_s)
                except KafkaError as exc:
                    raise self._write_error(unit, exc) from None
        finally:
            self.waited_s += time.perf_counter() - t0

    def delete(self, unit: str) -> None:
        """Write a tombstone: the unit has no checkpoint any more (compaction drops it)."""
        self._send(unit, unit.encode(), None, [])

    def _send(
        self, unit: str, key: bytes, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        from kafka.errors import KafkaError

        try:
            future = self._producer.send(self.topic, key=key, value=value, headers=headers)
            future.get(timeout=self.timeout_s)
        except KafkaError as exc:
            raise self._write_error(unit, exc) from None

    def _write_error(self, unit: str, exc: Exception) -> CheckpointError:
        return CheckpointError(
            f"checkpoint for unit {unit!r} could not be written to topic {self.topic!r}: {exc}."
        )

    def units(self) -> list[str]:
        """The units with a checkpoint in the topic (read up to the current end)."""
        with self._lock:
            self._catch_up()
            return sorted(self._latest)

    def versions(self) -> dict[str, Hashable | None]:
        """Each unit's newest record's position in the topic (read up to the current end)."""
        with self._lock:
            self._catch_up()
            return {u: (s.partition, s.offset) for u, s in self._latest.items()}

    def load(self, unit: str) -> dict[str, Any] | None:
        """The unit's newest checkpoint in the topic (read up to the current end), or None."""
        with self._lock:
            self._catch_up()
            stored = self._latest.get(unit)
            if stored is not None and stored.value is None:
                stored = self._fetch(unit, stored)
        return None if stored is None else self._decode(unit, stored)

    def _fetch(self, unit: str, stored: _Stored) -> _Stored | None:
        """Read the record of ``stored`` again (its value left the cache) with a consumer of
        its own, seeked to the offset. If compaction removed it (a newer record of the key was
        written and compacted since), catch up and take the newest."""
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        for _ in range(3):
            tp = TopicPartition(self.topic, stored.partition)
            try:
                if self._refetcher is None:
                    self._refetcher = KafkaConsumer(
                        client_id=f"{self._client_id}-state-refetch", **self._reader_config
                    )
                self._refetcher.assign([tp])
                self._refetcher.seek(tp, stored.offset)
                rec = self._poll_offset(tp, stored.offset)
            except KafkaError as exc:
                raise CheckpointError(
                    f"{self.kind} topic {self.topic!r} could not be read: {exc}."
                ) from None
            if rec is not None:
                return _Stored(stored.partition, stored.offset, rec.value, stored.codec)
            self._catch_up()
            newer = self._latest.get(unit)
            if newer is None or newer.value is not None:
                return newer
            stored = newer
        raise CheckpointError(
            f"{self.kind} for unit {unit!r} in topic {self.topic!r} could not be read again "
            "(compacted away while it was fetched, three times)."
        )

    def _poll_offset(self, tp: Any, offset: int) -> Any:
        """The record at ``offset`` of ``tp`` (the refetcher positioned there), or None when
        the partition's next record is past it."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"{self.kind} topic {self.topic!r} partition {tp.partition} offset "
                    f"{offset} could not be read within {self.timeout_s:.0f} s."
                )
            for rec in self._refetcher.poll(timeout_ms=200, max_records=1).get(tp, ()):
                return rec if rec.offset == offset else None

    def _catch_up(self) -> None:
        """Read every partition up to the end offsets captured now, newest value per key."""
        from kafka.errors import KafkaError

        try:
            ends = self._consumer.end_offsets(self._tps)
            deadline = time.monotonic() + self.timeout_s
            behind = [tp for tp in self._tps if self._consumer.position(tp) < ends[tp]]
            while behind:
                if time.monotonic() > deadline:
                    raise CheckpointError(
                        f"{self.kind} topic {self.topic!r} could not be read up to its end "
                        f"within {self.timeout_s:.0f} s."
                    )
                batches = self._consumer.poll(timeout_ms=200, max_records=10_000)
                for tp, records in batches.items():
                    for rec in records:
                        self._keep(tp.partition, rec)
                behind = [tp for tp in behind if self._consumer.position(tp) < ends[tp]]
            self._trim()
        except KafkaError as exc:
            raise CheckpointError(
                f"{self.kind} topic {self.topic!r} could not be read: {exc}."
            ) from None

    def _keep(self, partition: int, rec: Any) -> None:
        if rec.key is None:
            log.warning(
                "record without a key is ignored",
                kind=self.kind,
                topic=self.topic,
                partition=partition,
                offset=rec.offset,
            )
            return
        unit = rec.key.decode("utf-8", errors="replace")
        old = self._latest.pop(unit, None)
        if old is not None and old.value is not None:
            self._cached -= len(old.value)
        if rec.value is None:
            return
        codec = ""
        for name, value in rec.headers or ():
            if name == CODEC_HEADER:
                codec = value.decode("utf-8", errors="replace")
        self._latest[unit] = _Stored(partition, rec.offset, rec.value, codec)
        self._cached += len(rec.value)

    def _trim(self) -> None:
        """Drop values, oldest records first, until the cache holds at most ``cache_bytes``."""
        if self._cached <= self.cache_bytes:
            return
        held = sorted((s.offset, u) for u, s in self._latest.items() if s.value is not None)
        for _, unit in held:
            s = self._latest[unit]
            assert s.value is not None
            self._cached -= len(s.value)
            self._latest[unit] = _Stored(s.partition, s.offset, None, s.codec)
            if self._cached <= self.cache_bytes:
                return

    def close(self) -> None:
        """Flush pending saves and close the producer and the reader."""
        if self._closed:
            return
        self._closed = True
        try:
            self._producer.flush(timeout=self.timeout_s)
            self._producer.close(timeout=self.timeout_s)
        finally:
            self._consumer.close()
            if self._refetcher is not None:
                self._refetcher.close()
