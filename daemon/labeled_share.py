"""Labeled examples that move with their partition (``state.backend: kafka``).

Each replica keeps the examples its retrains draw on in its own labeled store
(``state.dir/labeled``, :mod:`driftwarden.retrain.labeled_store`). With the Kafka state backend
a partition moves between replicas, and its models' examples move with it through the topic
``kafka.topics.labeled`` (``driftwarden.labeled``): partition p of it holds the examples of the
models of input partition p, keyed by model, as zlib-compressed JSON lines (the lines the store
appended; one record per model and checkpoint, split to stay under ``chunk_bytes``).

* At each checkpoint the rows stored since the last one are published and acknowledged before
  the partition's checkpoint is written. The checkpoint records (``labeled``) the topic offset
  its rows reach (``end``) and, per model, a few offsets with the number of that model's rows
  published before each (``marks``): the newest ``max_rows`` rows of every model follow the
  first mark, so a reader starts there, not at the beginning of the retained topic.
* Each replica remembers per partition the offset below which its own store holds every row of
  the topic's partition (``state.dir/labeled-shared.json``, written after the store's fsync,
  before the checkpoint). A replica restoring a partition whose checkpoint's ``end`` is past
  that reads the topic's partition from there (at least from the first mark) up to ``end``
  into its store (rows it holds already are skipped by id), before the partition's first
  record is processed, so rows are stored in the order they were joined. A restart of the
  replica that wrote the checkpoint reads nothing.
* Records past ``end`` (the old owner published, then crashed before its checkpoint, or a
  fenced replica published late) hold rows the new owner joins again from the input it
  replays, and are never read: the next mark covers them.
* The handover of examples never holds the pipeline up for good: a topic that cannot be read
  is logged (the partition's earlier examples are then missing on this replica) and the
  partition is marked read, so later rows are never followed by older ones.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

__all__ = [
    "LabeledShare",
    "LabeledShareError",
    "LabeledTopicMissing",
    "first_mark",
    "read_partition",
]

log = structlog.get_logger(__name__)

#: Header naming the value's encoding (zlib-compressed JSON lines).
CODEC_HEADER = "driftwarden.codec"
_CODEC = b"zlib+jsonl"
#: Marks kept per model; beyond it every other inner mark is dropped (a reader then starts at
#: an earlier one: more to read, never a row missed).
MAX_MARKS = 64
#: Uncompressed JSON lines per record (compressed, well under Kafka's 1 MB default limit).
DEFAULT_CHUNK_BYTES = 512 * 1024


class LabeledShareError(RuntimeError):
    """The labeled topic is not usable; ``str()`` says why."""


class LabeledTopicMissing(LabeledShareError):
    """The labeled topic does not exist and creating it is turned off."""


@dataclass
class _Partition:
    #: offset of the topic's partition that the published rows reach (exclusive); -1: none yet
    end: int = -1
    #: model -> [[offset, rows of the model published before that record], ...]
    marks: dict[str, list[list[int]]] = field(default_factory=dict)
    #: model -> rows published in all
    rows: dict[str, int] = field(default_factory=dict)
    #: model -> JSON-lines payloads stored since the last publish
    pending: dict[str, list[bytes]] = field(default_factory=dict)


class LabeledShare:
    """Publishes a partition's new labeled rows at its checkpoints and reads the rows of a
    partition handed over to this replica into the local store (see the module docstring).

    ``store`` is the replica's :class:`~driftwarden.retrain.labeled_store.LabeledStore`,
    ``keeps(model)`` says whether a model's examples are kept (its policy retrains),
    ``partitions`` the input topics' partition count (the topic is created with as many, and
    must have at least as many).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        store: Any,
        keeps: Callable[[str], bool],
        max_rows: int,
        marks_path: Path,
        partitions: int,
        security: Mapping[str, Any] | None = None,
        client_id: str = "driftwarden",
        create_topic: bool = True,
        retention_ms: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout_s: float = 30.0,
        compress_level: int = 1,
    ) -> None:
        self.topic = topic
        self.store = store
        self.keeps = keeps
        self.max_rows = max_rows
        self.marks_path = Path(marks_path)
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self.compress_level = compress_level
        self._sec = dict(security or {})
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._create = create_topic
        #: the topic's partition count as last seen (it follows the input topics')
        self._topic_partitions = 0
        #: input partitions this topic lacks and could not be given (logged once each)
        self._unreachable: set[int] = set()
        self._prepare_topic(partitions, create_topic, retention_ms)
        self._producer = self._new_producer()
        self._parts: dict[int, _Partition] = {}
        self._local = self._load_local()
        #: rows read into the store from the topic (handed-over partitions), in all
        self.rows_read = 0
        #: the daemon's metrics (driftwarden_labeled_rows_shared_total), once it has them
        self.metrics: Any = None
        self._closed = False

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=f"{self._client_id}-labeled-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            max_request_size=2 * 1024 * 1024,
            request_timeout_ms=int(self.timeout_s * 1000),
            reconnect_backoff_max_ms=5000,
            **self._sec,
        )

    # -- topic ------------------------------------------------------------------------------
    def _reach(self, partition: int) -> bool:
        """Whether the topic has ``partition``. The input topics may gain partitions while the
        daemon runs: the topic then gets as many (``kafka.create_topics``), and a new producer
        that knows them; else the partition's examples stay with this replica (logged once)."""
        if partition < self._topic_partitions:
            return True
        try:
            self._prepare_topic(partition + 1, self._create, None)
        except LabeledShareError as exc:
            if partition not in self._unreachable:
                self._unreachable.add(partition)
                log.error(
                    "labeled examples of this input partition cannot be published; they stay "
                    "with this replica",
                    topic=self.topic,
                    partition=partition,
                    reason=str(exc),
                )
            return False
        self._producer.close(timeout=self.timeout_s)
        self._producer = self._new_producer()
        return True

    def _prepare_topic(self, partitions: int, create: bool, retention_ms: int | None) -> None:
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        where = f"on {self._bootstrap}"
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self._bootstrap,
                client_id=f"{self._client_id}-labeled-admin",
                request_timeout_ms=int(self.timeout_s * 1000),
                **self._sec,
            )
        except KafkaError as exc:
            raise LabeledShareError(
                f"labeled topic {self.topic!r} could not be prepared {where}: {exc}."
            ) from None
        try:
            have = self._partition_count(admin)
            if have is None and create:
                configs = {"cleanup.policy": "delete"}
                if retention_ms is not None:
                    configs["retention.ms"] = str(retention_ms)
                try:
                    admin.create_topics(
                        {
                            self.topic: {
                                "num_partitions": partitions,
                                "replication_factor": -1,
                                "configs": configs,
                            }
                        },
                        timeout_ms=int(self.timeout_s * 1000),
                        wait_for_metadata=True,
                    )
                    log.info(
                        "topic created", kind="labeled", topic=self.topic, partitions=partitions
                    )
                except TopicAlreadyExistsError:
                    pass  # another replica created it first
                have = self._partition_count(admin) or partitions
            elif have is None:
                raise LabeledTopicMissing(
                    f"labeled topic {self.topic!r} (kafka.topics.labeled) does not exist {where} "
                    f"and creating it is turned off (kafka.create_topics); create it with "
                    f"{partitions} partitions, as many as the input topics."
                )
            if have < partitions and create:
                # Input topics scaled out: partition p of this topic belongs to input
                # partition p (chosen explicitly, not by key), so new ones move no record.
                from kafka.admin import NewPartitions

                admin.create_partitions(
                    {self.topic: NewPartitions(total_count=partitions)},
                    timeout_ms=int(self.timeout_s * 1000),
                )
                log.info(
                    "topic partitions added",
                    kind="labeled",
                    topic=self.topic,
                    partitions=partitions,
                )
                have = partitions
            if retention_ms is not None:
                self._align_retention(admin, retention_ms, create)
        except KafkaError as exc:
            raise LabeledShareError(
                f"labeled topic {self.topic!r} could not be prepared {where}: {exc}."
            ) from None
        finally:
            admin.close()
        self._topic_partitions = max(self._topic_partitions, have)
        if have < partitions:
            raise LabeledShareError(
                f"labeled topic {self.topic!r} (kafka.topics.labeled) has {have} partitions "
                f"{where}, fewer than the input topics' {partitions}: the examples of the models "
                "of input partition p go to its partition p. Add partitions to it, or set "
                "kafka.create_topics: true to let the daemon add them."
            )

    def _align_retention(self, admin: Any, retention_ms: int, create: bool) -> None:
        """The topic keeps records ``retrain.labeled_retention``: set when the daemon created
        it, set again at start-up when the setting changed since (``kafka.create_topics``; else
        a warning says the two differ). Not being allowed to read or change topic configs
        (a secured cluster without DescribeConfigs / AlterConfigs) is a warning, not a stop:
        retention bounds how far back a takeover reaches, it does not stop monitoring."""
        from kafka.admin import ConfigResource, ConfigResourceType
        from kafka.errors import KafkaError

        def resource(value: str | None) -> Any:
            return ConfigResource(
                ConfigResourceType.TOPIC, self.topic, configs={"retention.ms": value}
            )

        try:
            described = admin.describe_configs([resource(None)], config_filter="all")
            have = described["topic"][self.topic]["retention.ms"]["value"]
        except (KafkaError, KeyError, TypeError) as exc:
            log.warning(
                "labeled topic's retention could not be read; it stays as it is",
                topic=self.topic,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        if have is not None and int(have) == retention_ms:
            return
        if not create:
            log.warning(
                "labeled topic keeps records for another time than retrain.labeled_retention; "
                "with kafka.create_topics false the daemon leaves it (set retention.ms on the "
                "topic)",
                topic=self.topic,
                retention_ms=have,
                labeled_retention_ms=retention_ms,
            )
            return
        try:
            result = admin.alter_configs([resource(str(retention_ms))])["topic"][self.topic]
        except (KafkaError, KeyError, TypeError, ValueError) as exc:
            result = f"{type(exc).__name__}: {exc}"
        if result == "OK":
            log.info(
                "labeled topic's retention set to retrain.labeled_retention",
                topic=self.topic,
                retention_ms=retention_ms,
                was=have,
            )
        else:
            log.warning(
                "labeled topic's retention could not be set to retrain.labeled_retention",
                topic=self.topic,
                retention_ms=have,
                labeled_retention_ms=retention_ms,
                error=str(result),
            )

    def _partition_count(self, admin: Any) -> int | None:
        import kafka.errors as errors

        for t in admin.describe_topics([self.topic]):
            code = t.get("error_code", 0)
            parts = t.get("partitions") or []
            if code == 0 and parts:
                return len(parts)
            if code not in (0, errors.UnknownTopicOrPartitionError.errno):
                raise LabeledShareError(
                    f"labeled topic {self.topic!r} cannot be described: "
                    f"{errors.for_code(code).__name__} (the daemon's principal needs Describe, "
                    "Read and Write on it)."
                )
        return None

    # -- this replica's marks ---------------------------------------------------------------
    def _load_local(self) -> dict[int, int]:
        try:
            doc = json.loads(self.marks_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(
                "labeled-share marks unreadable; handed-over partitions are read again",
                path=str(self.marks_path),
                error=str(exc),
            )
            return {}
        if not isinstance(doc, dict) or doc.get("topic") != self.topic:
            return {}  # written for another topic: its offsets mean nothing here
        return {int(p): int(o) for p, o in (doc.get("partitions") or {}).items()}

    def _save_local(self) -> None:
        tmp = self.marks_path.with_name(self.marks_path.name + ".tmp")
        data = {
            "topic": self.topic,
            "partitions": {str(p): o for p, o in sorted(self._local.items())},
        }
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.marks_path)

    # -- writing ----------------------------------------------------------------------------
    def add(self, partition: int, model: str, lines: Iterable[bytes]) -> None:
        """Rows of ``model`` just stored (their JSON lines): published at the next checkpoint."""
        part = self._parts.setdefault(partition, _Partition())
        part.pending.setdefault(model, []).extend(b for b in lines if b)

    def checkpoint(self, partitions: Iterable[int]) -> None:
        """Publish the pending rows of ``partitions`` and wait for the broker's acknowledgement;
        then (the store must be fsync'ed by now) remember that this replica holds them."""
        sent: list[tuple[_Partition, str, int, Any]] = []
        parts = [p for p in partitions if p in self._parts]
        for p in parts:
            part = self._parts[p]
            pending, part.pending = part.pending, {}
            if pending and not self._reach(p):
                rows = sum(b"".join(v).count(b"\n") for v in pending.values())
                self._count("failed", rows)
                continue
            for model, payloads in sorted(pending.items()):
                for value, rows in self._chunks(payloads):
                    try:
                        future = self._producer.send(
                            self.topic,
                            key=model.encode(),
                            value=value,
                            partition=p,
                            headers=[(CODEC_HEADER, _CODEC)],
                        )
                    except Exception as exc:  # noqa: BLE001 - refused before sending: as below
                        future = _Refused(exc)
                    sent.append((part, model, rows, future))
        if sent:
            self._producer.flush()
        for part, model, rows, future in sent:
            try:
                meta = future.get(timeout=self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - a record refused (too large...) is logged
                self._count("failed", rows)
                log.warning(
                    "labeled examples not published: another replica taking the model over "
                    "will not have them",
                    topic=self.topic,
                    model=model,
                    rows=rows,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            self._count("published", rows)
            before = part.rows.get(model, 0)
            part.rows[model] = before + rows
            marks = part.marks.setdefault(model, [])
            marks.append([int(meta.offset), before])
            part.end = max(part.end, int(meta.offset) + 1)
            self._prune(marks, before + rows)
        changed = False
        for p in parts:
            end = self._parts[p].end
            if end >= 0 and self._local.get(p) != end:
                self._local[p] = end
                changed = True
        if changed:
            self._save_local()

    def _chunks(self, payloads: list[bytes]) -> Iterable[tuple[bytes, int]]:
        """(compressed value, rows) per record: whole lines, up to ``chunk_bytes`` each."""
        lines = [ln for payload in payloads for ln in payload.splitlines(keepends=True)]
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > self.chunk_bytes:
                yield zlib.compress(b"".join(chunk), self.compress_level), len(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            yield zlib.compress(b"".join(chunk), self.compress_level), len(chunk)

    def _prune(self, marks: list[list[int]], total: int) -> None:
        """Drop the marks a reader no longer needs: the newest ``max_rows`` rows follow the
        second one already. Past :data:`MAX_MARKS`, thin the inner ones (conservative)."""
        while len(marks) > 1 and total - marks[1][1] >= self.max_rows:
            del marks[0]
        if len(marks) > MAX_MARKS:
            marks[:] = [marks[0], *marks[1:-1][1::2], marks[-1]]

    def state(self, partition: int, models: Iterable[str]) -> dict[str, Any]:
        """What the partition's checkpoint records (see the module docstring)."""
        part = self._parts.get(partition) or _Partition()
        names = set(models)
        return {
            "topic": self.topic,
            "end": part.end,
            "marks": {m: [list(x) for x in v] for m, v in sorted(part.marks.items()) if m in names},
            "rows": {m: n for m, n in sorted(part.rows.items()) if m in names},
        }

    # -- handover ---------------------------------------------------------------------------
    def restore(self, partition: int, doc: Mapping[str, Any] | None, models: Iterable[str]) -> int:
        """Take a partition over from its checkpoint's ``labeled`` record; reads the rows this
        replica's store lacks. Returns how many rows were read into the store."""
        part = _Partition()
        self._parts[partition] = part
        self._reach(partition)  # a partition the input topics gained since start-up
        if not doc or doc.get("topic") != self.topic or int(doc.get("end", -1)) < 0:
            return 0
        part.end = int(doc["end"])
        part.marks = {str(m): [[int(o), int(n)] for o, n in v] for m, v in doc["marks"].items()}
        part.rows = {str(m): int(n) for m, n in doc["rows"].items()}
        have = self._local.get(partition)
        if have is not None and have >= part.end:
            return 0  # this replica wrote them (or read them already)
        start = first_mark(doc, self.keeps)
        if start is None:
            self._local[partition] = part.end
            self._save_local()
            return 0
        if have is not None:
            start = max(start, have)
        kept = {m for m in models if self.keeps(m)}
        t0 = time.monotonic()
        n = self._read_or_log(
            partition,
            start,
            part.end,
            kept,
            "labeled examples of a handed-over partition could not be read; retrains of its "
            "models draw only on the examples this replica joins from now on",
        )
        if n is not None:
            log.info(
                "labeled examples handed over",
                topic=self.topic,
                partition=partition,
                offsets=[start, part.end],
                rows=n,
                seconds=round(time.monotonic() - t0, 3),
            )
        self.store.sync()
        self._local[partition] = part.end
        self._save_local()
        return n or 0

    def _read_or_log(
        self, partition: int, start: int, end: int, models: set[str], failed: str, **fields: Any
    ) -> int | None:
        """:meth:`_read`, counted; a read that fails is logged as ``failed`` (with ``fields``)
        and gives None: examples are help for retrains, not the pipeline."""
        try:
            n = self._read(partition, start, end, models)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.error(
                failed,
                topic=self.topic,
                partition=partition,
                offsets=[start, end],
                error=f"{type(exc).__name__}: {exc}",
                **fields,
            )
            return None
        self.rows_read += n
        self._count("read", n)
        return n

    def _read(self, partition: int, start: int, end: int, models: set[str]) -> int:
        """Read offsets [start, end) of the topic's partition into the store; rows stored."""
        return read_partition(
            self._bootstrap,
            self.topic,
            partition,
            start,
            end,
            models,
            self.store,
            security=self._sec,
            client_id=self._client_id,
            timeout_s=self.timeout_s,
        )

    def _count(self, direction: str, rows: int) -> None:
        if self.metrics is not None and rows:
            self.metrics.labeled_shared.labels(direction).inc(rows)

    def adopt(
        self, model: str, source: int, doc: Mapping[str, Any] | None, target: int, *, read: bool
    ) -> int:
        """``model``'s events moved from input partition ``source`` to ``target`` (the input
        topics gained partitions). With ``read`` (``source`` is another replica's) the rows
        ``source``'s checkpoint published for the model (``doc``: its ``labeled`` record) are
        read into the store first (rows it holds are skipped). Then the model's newest
        ``max_rows`` stored rows are published again, to ``target``, at the next checkpoint,
        ahead of the rows joined there: whoever takes ``target`` over later, or
        ``driftwarden retrain``, finds them in the model's new partition. Returns the rows
        read."""
        if not self.keeps(model):
            return 0
        n = self._read_moved(model, source, doc) if read else 0
        rows = self.store.raw(model, self.max_rows)
        if rows:
            self.add(target, model, [rows])
        return n

    def _read_moved(self, model: str, partition: int, doc: Mapping[str, Any] | None) -> int:
        if not doc or doc.get("topic") != self.topic:
            return 0
        end = int(doc.get("end", -1))
        start = first_mark(doc, lambda m: m == model)
        if start is None or end <= start:
            return 0
        n = self._read_or_log(
            partition,
            start,
            end,
            {model},
            "labeled examples of a model that moved partition could not be read; its retrains "
            "draw only on the examples this replica joins from now on",
            model=model,
        )
        if n is None:
            return 0
        self.store.sync()
        log.info(
            "labeled examples of a model that moved partition read",
            topic=self.topic,
            partition=partition,
            model=model,
            offsets=[start, end],
            rows=n,
        )
        return n

    def forget(self, partition: int) -> None:
        """The partition was revoked (after its last checkpoint here)."""
        self._parts.pop(partition, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._producer.close(timeout=self.timeout_s)


class _Refused:
    """A send the producer refused at once, answered like a failed future."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get(self, timeout: float | None = None) -> Any:
        raise self.exc


def first_mark(doc: Mapping[str, Any], keeps: Callable[[str], bool]) -> int | None:
    """Where a reader of a checkpoint's ``labeled`` record starts for the models ``keeps``
    accepts: the smallest of their first marks (None: no rows of theirs were published)."""
    firsts = [v[0][0] for m, v in (doc.get("marks") or {}).items() if v and keeps(m)]
    return int(min(firsts)) if firsts else None


def read_partition(
    bootstrap_servers: str,
    topic: str,
    partition: int,
    start: int,
    end: int,
    models: set[str],
    store: Any,
    *,
    security: Mapping[str, Any] | None = None,
    client_id: str = "driftwarden",
    timeout_s: float = 30.0,
) -> int:
    """Read offsets [start, end) of ``topic``'s ``partition`` into ``store``: the records of
    ``models``; returns the rows stored. A record that cannot be read is logged and skipped;
    a read that makes no progress for ``timeout_s`` raises :class:`LabeledShareError`. (A
    takeover's read, and ``driftwarden retrain``'s on any replica.)"""
    from kafka import KafkaConsumer, TopicPartition

    tp = TopicPartition(topic, partition)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        client_id=f"{client_id}-labeled-reader",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **dict(security or {}),
    )
    stored = 0
    try:
        consumer.assign([tp])
        first = consumer.beginning_offsets([tp])[tp]
        if first > start:
            log.warning(
                "labeled examples were deleted by the topic's retention "
                "(retrain.labeled_retention) before they were read",
                topic=topic,
                partition=partition,
                missing_offsets=[start, first],
            )
            start = first
        if start >= end:
            return 0
        consumer.seek(tp, start)
        # A deadline that moves on with progress: a long partition is read to its end, a
        # stuck read gives up.
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise LabeledShareError(
                    f"no progress reading partition {partition} of {topic!r} for "
                    f"{timeout_s:.0f} s (at offset {consumer.position(tp)} of {end})"
                )
            for rec in consumer.poll(timeout_ms=200, max_records=500).get(tp, ()):
                if rec.offset >= end:
                    break
                deadline = time.monotonic() + timeout_s
                model = rec.key.decode("utf-8", "replace") if rec.key else ""
                if model not in models or not rec.value:
                    continue
                try:
                    stored += _store_record(store, model, zlib.decompress(rec.value))
                except (zlib.error, ValueError) as exc:
                    log.warning(
                        "labeled-topic record unreadable; skipped",
                        topic=topic,
                        partition=partition,
                        offset=rec.offset,
                        error=str(exc),
                    )
    finally:
        consumer.close()
    return stored


def _store_record(store: Any, model: str, lines: bytes) -> int:
    """One record's rows into the store: as the lines they are (the stored form another
    replica's store wrote), or parsed and normalised when they are not that form."""
    from driftwarden.retrain.labeled_store import parse_lines

    try:
        return int(store.append_stored(model, lines, sync=False))
    except ValueError:
        return int(store.append(model, parse_lines(lines), sync=False))
