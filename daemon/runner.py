"""The daemon's main loop: poll → decode → per-model state → outputs → checkpoint → commit.

One thread changes state: this loop. The scheduler and signal handlers only put work on a
queue or set the stop event. The checkpoint order follows quix-streams: flush the sinks (DLQ,
windows, decisions), enqueue actions durably in the outbox, write the state with the offsets it
covers, and only then commit those offsets to Kafka. A batch that fails is never committed.
"""

from __future__ import annotations

import ctypes
import functools
import math
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
import structlog

from driftwarden.policies.model import Decision, PolicySet

from .checkpoint import CheckpointStore
from .events import (
    LABEL_SCHEMA,
    PREDICTION_SCHEMA,
    InvalidEvent,
    LabelEvent,
    PredictionEvent,
    decode,
    format_time,
)
from .join import JoinCounters
from .metrics import Metrics
from .monitor import ModelMonitor, ProfileMissing
from .sinks import Sink, dead_letter
from .sources import RawRecord, Source, SourceFenced

__all__ = ["Daemon", "RunSummary", "Unit"]

log = structlog.get_logger(__name__)

#: seconds between consumer-lag reports (the gauge ``driftwarden_consumer_lag``)
LAG_EVERY_S = 5.0
#: How long an idle daemon's ownership probe (a commit, see Daemon._probe_ownership) waits for
#: the broker before the main loop goes on.
PROBE_TIMEOUT_S = 5.0
#: dead-lettered events logged per window of DLQ_LOG_EVERY_S seconds (all are counted and kept)
DLQ_LOG_BURST = 20
DLQ_LOG_EVERY_S = 10.0
_EXPECT = {"predictions": PREDICTION_SCHEMA, "labels": LABEL_SCHEMA, None: None}


@dataclass
class Unit:
    """The state of one partition number: its models and the offsets the state covers."""

    partition: int
    models: dict[str, ModelMonitor] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    invalid: int = 0
    unmonitored: dict[str, int] = field(default_factory=dict)
    #: wall-clock time of each model's last event in this partition (or of its restore): a
    #: model whose events moved to another partition leaves an idle copy here
    seen: dict[str, float] = field(default_factory=dict)


def state_newness(state: Mapping[str, Any]) -> tuple[float, int]:
    """Orders two states of one model by how far they got: the predictions' event-time
    watermark, then the events counted."""
    mark = state.get("pred_watermark")
    return (float("-inf") if mark is None else float(mark), int(state.get("events", 0)))


def _live_newness(mon: ModelMonitor) -> tuple[float, int]:
    """:func:`state_newness` of a model's state in memory."""
    return (float(mon.pred_watermark), int(mon.events))


class _ModelFailed(Exception):
    """A model's pipeline raised on a batch (see :meth:`Daemon._processing_failed`)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class RunSummary:
    """What a bounded run did (tests and the CLI print it)."""

    records: int = 0
    valid: int = 0
    invalid: int = 0
    windows: int = 0
    decisions: int = 0
    checkpoints: int = 0
    stopped_by: str = ""


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Hand the heap the C library keeps after frees back to the OS (glibc's
    ``malloc_trim(0)``); False where there is no such call.

    A checkpoint serialises, compresses and sends every model's state: megabytes that are
    freed at once but that glibc keeps in its heap, so RSS (what a container's memory limit
    sees) stays at the checkpoint's peak. Measured on the 100-model bench with
    ``state.backend: kafka``: 91 MB of the run's RSS was freed heap.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _future(ts: float, timestamp_ms: int, skew_s: float) -> None:
    """Refuse an event time too far ahead of its record's Kafka timestamp (deterministic:
    both are in the record, so a replay refuses the same events)."""
    raise InvalidEvent(
        f"timestamp {format_time(ts)} is more than limits.max_future_skew ({skew_s:g} s) ahead "
        f"of the record's Kafka timestamp {format_time(timestamp_ms / 1000.0)} (a producer "
        "clock or a placeholder time?)"
    )


@dataclass(frozen=True)
class DaemonOptions:
    """Tuning knobs (from settings)."""

    topics: Mapping[str, str]
    join_ttl_s: float = 7 * 86400.0
    join_max_entries: int = 200_000
    join_compress: bool = True
    max_message_bytes: int = 1_048_576
    #: an event whose time is further ahead of its record's Kafka timestamp is refused (None:
    #: no check); one far-future time would otherwise move the model's watermarks years ahead
    max_future_skew_s: float | None = 86400.0
    max_poll_records: int = 2000
    poll_timeout_s: float = 0.5
    checkpoint_every_events: int = 50_000
    checkpoint_every_s: float = 30.0
    #: at most this share of the time goes to count- or time-triggered checkpoints: after one
    #: that took ``d`` seconds the next waits at least ``d * (1 - share) / share`` (1 = no pause)
    checkpoint_max_share: float = 0.1


class Daemon:
    """Runs the pipeline over a :class:`Source` (see the module docstring)."""

    def __init__(
        self,
        *,
        source_factory: Callable[[Daemon], Source],
        sink: Sink,
        store: CheckpointStore | None,
        policies: PolicySet,
        profile_loader: Callable[[str, str | None], Any],
        options: DaemonOptions,
        metrics: Metrics | None = None,
        on_decisions: Callable[[list[Decision]], None] | None = None,
        on_labeled: Callable[[str, list[dict[str, Any]], int], None] | None = None,
        executor: Any = None,
        actions_unit: str = "actions",
        replica: str = "",
        handover: bool = False,
        labeled_share: Any = None,
    ) -> None:
        self.sink = sink
        self.store = store
        self.policies = policies
        self.profile_loader = profile_loader
        self.opts = options
        self.metrics = metrics or Metrics()
        self.on_decisions = on_decisions
        self.on_labeled = on_labeled
        # Executes decided actions (daemon.actions.ActionExecutor); its state is checkpointed.
        self.executor = executor
        # The executor's state belongs to this replica (its outbox is local): its own unit.
        self.actions_unit = actions_unit
        # handover (state.backend: kafka): each partition's checkpoint carries the active
        # alerts and pending actions of its models, so they move with the partition; the
        # checkpoint names the replica that wrote it.
        self.replica = replica
        self.handover = handover and executor is not None
        # handover: the labeled examples of a partition's models move with it
        # (daemon.labeled_share.LabeledShare): published at each checkpoint, read on takeover.
        self.labeled_share = labeled_share
        self.muter: Any = None
        #: called with the new PolicySet after a successful hot reload
        self.policy_listeners: list[Callable[[PolicySet], None]] = []
        #: made durable at every checkpoint, after the sinks, before the state and the commit
        self.before_checkpoint: list[Callable[[], Any]] = []
        self.units: dict[int, Unit] = {}
        self.work: queue.Queue[Callable[[], None]] = queue.Queue()
        self._stop = threading.Event()
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._last_probe = -math.inf  # see _probe_due
        self._copies_read_at = -math.inf  # see _retire_moved (wall clock)
        #: checkpoint unit -> (its store version, the models it holds): other replicas'
        #: checkpoints are read again only once they change (see _other_copies)
        self._copies_known: dict[str, tuple[Any, frozenset[str]]] = {}
        self._checkpoint_pause = 0.0  # see _checkpoint_due
        self._lag_at = 0.0  # monotonic time of the last consumer-lag report
        self._lag_labels: set[tuple[str, str]] = set()
        self._warned: set[str] = set()
        self._closed = False
        self.summary = RunSummary()
        # Recent window summaries and decisions per model (memory only, bounded): the context
        # a retrain run gets as its report.
        self._history: dict[str, tuple[deque[dict[str, Any]], deque[dict[str, Any]]]] = {}
        if self.handover:
            released = executor.enable_handover()
            if released:
                log.info("pending actions wait for their partitions", jobs=released)
        elif executor is not None and store is not None:
            saved = store.load(self.actions_unit)
            if saved is not None:
                executor.restore(saved["executor"])
        self.ready = False
        #: When the main loop last came round (monotonic): what /healthz judges.
        self.loop_at = time.monotonic()
        self.last_event_wall: dict[str, float] = {}
        # Wall time of the model's last label read by this process (first set when the model
        # is first seen: "no label since then").
        self.last_label_wall: dict[str, float] = {}
        self._fresh_models: set[str] = set()
        self._detector_series: dict[str, set[str]] = {}  # model -> detectors with gauges
        self._failure_logged: dict[str, float] = {}  # model -> when its last failure was logged
        # Dead-letter log lines: [window start (monotonic), lines in it, events not logged].
        self._dlq_log: list[float] = [-math.inf, 0, 0]
        self.source = source_factory(self)

    # -- partition lifecycle (Kafka rebalance callbacks call these) -------------------------
    def assign(self, partitions: list[int]) -> dict[tuple[str, int], int]:
        """Restore the units of newly assigned partitions; returns the offsets to seek to."""
        seek: dict[tuple[str, int], int] = {}
        for p in partitions:
            unit = self._restore(p)
            self.units[p] = unit
            seek.update(unit.offsets)
            if unit.offsets:
                # The restored offsets may be ahead of the group's commit (a commit lost to a
                # crash or an outage): commit them at the next checkpoint even with no new input.
                self._since_checkpoint += 1
        self.metrics.assigned_partitions.set(len(self.units))
        log.info("partitions assigned", partitions=partitions, seek=len(seek))
        return seek

    def revoke(self, partitions: list[int]) -> None:
        """Checkpoint and drop the units of revoked partitions."""
        gone = [p for p in partitions if p in self.units]
        if not self._closed:
            self.checkpoint(gone, wait=False)
        for p in gone:
            unit = self.units.pop(p)
            for model in unit.models:
                self._forget_series(model)
                self._history.pop(model, None)  # the new owner keeps the model's history
            if self.handover and not self._closed:
                self.executor.release(set(unit.models))
            if self.labeled_share is not None:
                self.labeled_share.forget(p)
        self.metrics.assigned_partitions.set(len(self.units))
        log.info("partitions revoked", partitions=partitions)

    def _forget_series(self, model: str, keep: Iterable[str] = (), *, join: bool = True) -> None:
        """Drop a model's gauges — of a revoked partition (the new owner reports them), of a
        model whose policy went, or of detectors its new policy lacks (``keep``: the detectors
        it still has): a stale ``driftwarden_detector_triggered 1`` would keep an alert firing.
        (Counters stay: they only ever add up across replicas.)"""
        names = self._detector_series.get(model, set())
        for name in names - set(keep):
            self.metrics.detector_statistic.remove(model, name)
            self.metrics.detector_triggered.remove(model, name)
            names.discard(name)
        if join:
            for counter in fields(JoinCounters):
                self.metrics.join.remove(model, counter.name)

    def _restore(self, partition: int) -> Unit:
        unit = Unit(partition=partition)
        doc = self.store.load(f"p{partition}") if self.store is not None else None
        if self.labeled_share is not None:
            # Before the partition's first record: the examples the store lacks come first.
            self.labeled_share.restore(
                partition,
                None if doc is None else doc.get("labeled"),
                () if doc is None else doc["models"],
            )
        if doc is None:
            return unit
        unit.offsets = {(t, int(p)): int(o) for t, p, o in doc["offsets"]}
        unit.invalid = int(doc.get("invalid", 0))
        unit.unmonitored = dict(doc.get("unmonitored", {}))
        for model, state in doc["models"].items():
            policy = self.policies.for_model(model)
            if policy is None:
                log.warning(
                    "model in checkpoint has no policy any more; its state is dropped", model=model
                )
                continue
            mon = self._new_monitor(model, policy)
            mon.restore(state)
            unit.models[model] = mon
            unit.seen[model] = time.time()
        if self.handover:
            self.executor.adopt(
                set(doc["models"]), doc.get("actions"), ours=doc.get("replica") == self.replica
            )
        log.info(
            "state restored",
            partition=partition,
            models=sorted(unit.models),
            offsets=doc["offsets"],
        )
        return unit

    # -- models that change partition (the input topics gained partitions) -----------------
    def _other_copies(
        self, models: set[str], partition: int, *, owned: bool
    ) -> dict[str, tuple[int, dict[str, Any], dict[str, Any]]]:
        """The newest state of each of ``models`` that another partition holds: model ->
        (partition, model state, that partition's checkpoint). The partitions this process
        holds give their state in memory (``owned``; none when false), the others their latest
        checkpoint."""
        found: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {}

        def offer(model: str, p: int, state: dict[str, Any], doc: dict[str, Any]) -> None:
            best = found.get(model)
            if best is None or state_newness(state) > state_newness(best[1]):
                found[model] = (p, state, doc)

        for p, unit in self.units.items():
            if p == partition or not owned:
                continue
            for model in models & unit.models.keys():
                # A copy, as a checkpoint would make it: no array shared with the live state.
                state = unit.models[model].state()
                copy = orjson.loads(orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY))
                offer(model, p, copy, {})
        if self.store is None or not models:
            return found
        for name, version in self.store.versions().items():
            if not (name[:1] == "p" and name[1:].isdigit()) or int(name[1:]) == partition:
                continue
            p = int(name[1:])
            if p in self.units:
                continue
            known = self._copies_known.get(name)
            if known is not None and known[0] == version and not models & known[1]:
                continue  # unchanged since read, and none of these models in it
            doc = self.store.load(name) or {}
            held = doc.get("models") or {}
            if version is not None:
                self._copies_known[name] = (version, frozenset(held))
            for model in models & held.keys():
                offer(model, p, held[model], doc)
        return found

    def _adopt_moved(self, unit: Unit, model: str, mon: ModelMonitor) -> ModelMonitor:
        """A model this partition has no state for may be one whose events moved here from
        another partition (the input topics gained partitions, so Kafka's partitioner maps its
        key elsewhere): its state continues from that partition's latest checkpoint (windows,
        detectors, pending joins, alert state) instead of starting empty. The copy left on the
        old partition is retired once idle (:meth:`_retire_moved`). Only a model whose records
        carry keys moves: records without one are spread over the partitions by the producer,
        each partition's share with a state of its own."""
        try:
            found = self._other_copies({model}, unit.partition, owned=True).get(model)
        except Exception as exc:  # noqa: BLE001 - without the store, the model starts afresh
            log.warning(
                "could not look for this model's state on other partitions; it starts empty",
                model=model,
                partition=unit.partition,
                error=f"{type(exc).__name__}: {exc}",
            )
            return mon
        if found is None:
            return mon
        source, state, doc = found
        try:
            mon.restore(state)
        except Exception as exc:  # noqa: BLE001 - an unreadable copy: start empty, say so
            log.warning(
                "the model's state on its old partition could not be taken over; it starts empty",
                model=model,
                partition=unit.partition,
                from_partition=source,
                error=f"{type(exc).__name__}: {exc}",
            )
            return self._new_monitor(model, mon.policy)
        if self.handover and source not in self.units:
            # Another replica's partition: the model's active alerts and pending jobs in that
            # partition's checkpoint come along (that replica stops re-sending the alerts once
            # it retires its copy; see _retire_moved).
            try:
                self.executor.adopt({model}, doc.get("actions"), ours=False)
            except Exception as exc:  # noqa: BLE001 - the state moved; its actions stay there
                log.warning(
                    "the model's actions on its old partition could not be taken over",
                    model=model,
                    from_partition=source,
                    error=f"{type(exc).__name__}: {exc}",
                )
        self.metrics.models_moved.labels(model, "adopted").inc()
        log.warning(
            "model's events moved to another partition (did the input topics gain partitions?); "
            "its state continues from its state there",
            model=model,
            partition=unit.partition,
            from_partition=source,
            events=mon.events,
        )
        if self.labeled_share is not None:
            # Its examples move too: read from the topic when another replica held them.
            self.labeled_share.adopt(
                model, source, doc.get("labeled"), unit.partition, read=source not in self.units
            )
        return mon

    def _retire_moved(self, now: float, idle_s: float) -> None:
        """Drop copies of a model left idle (no event for ``idle_s``) on a partition when
        another partition holds a newer state of it: its events moved there. Without this the
        idle copy would stay in every checkpoint and, on another replica, be reported stale
        (a false "no events for this model" while the model is fine)."""
        idle = [
            (unit, m)
            for unit in self.units.values()
            for m in unit.models
            if now - unit.seen.get(m, now) > idle_s
        ]
        if not idle:
            return
        elsewhere: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {}
        if now - self._copies_read_at >= idle_s:
            # Partitions another replica holds (state.backend: kafka): only their checkpoints
            # tell. Read at most once per ``idle_s``: a model without traffic stays idle for
            # hours. (With the local backend every checkpoint is of a partition held here.)
            self._copies_read_at = now
            try:
                elsewhere = self._other_copies({m for _, m in idle}, -1, owned=False)
            except Exception as exc:  # noqa: BLE001 - retire what memory shows; try again later
                log.warning(
                    "could not read other partitions' checkpoints for idle models",
                    error=f"{type(exc).__name__}: {exc}",
                )
        for unit, model in idle:
            mine = unit.models[model]
            newest = _live_newness(mine)
            newer = [
                (u.partition, _live_newness(u.models[model]))
                for u in self.units.values()
                if u is not unit and model in u.models
            ]
            if model in elsewhere:
                newer.append((elsewhere[model][0], state_newness(elsewhere[model][1])))
            newer = [(p, n) for p, n in newer if n > newest]
            if not newer:
                continue
            del unit.models[model]
            unit.seen.pop(model, None)
            if not any(model in u.models for u in self.units.values()):
                self._forget_series(model)
                if self.handover:
                    # The newer copy's replica re-sends and resolves the model's alerts.
                    self.executor.drop_alerts({model})
            self.metrics.models_moved.labels(model, "retired").inc()
            log.info(
                "idle copy of a model retired: its events go to another partition now",
                model=model,
                partition=unit.partition,
                to_partition=max(newer, key=lambda x: x[1])[0],
            )

    def _new_monitor(self, model: str, policy: Any) -> ModelMonitor:
        mon = ModelMonitor(
            model,
            policy,
            self.profile_loader,
            join_ttl_s=self.opts.join_ttl_s,
            join_max_entries=self.opts.join_max_entries,
            join_compress=self.opts.join_compress,
        )
        mon.muter = self.muter
        return mon

    def set_silences(self, muter: Any) -> None:
        """Use these silences from the next evaluation on (every model)."""
        self.muter = muter
        for unit in self.units.values():
            for mon in unit.models.values():
                mon.muter = muter

    # -- checkpoint ------------------------------------------------------------------------
    def checkpoint(self, partitions: list[int] | None = None, *, wait: bool = True) -> None:
        """Flush outputs, save state with its offsets, then commit the offsets."""
        t0 = time.perf_counter()
        parts = sorted(self.units) if partitions is None else partitions
        self.sink.flush()
        # Time spent waiting for the broker (outputs acknowledged, offsets committed) is not
        # checkpoint work: after an outage it would hold the next checkpoint back for minutes.
        waited = time.perf_counter() - t0
        for hook in self.before_checkpoint:
            hook()
        if self.labeled_share is not None:
            # After the store's fsync, before the checkpoints that record where the rows reach.
            self.labeled_share.checkpoint(parts)
        offsets: dict[tuple[str, int], int] = {}
        for p in parts:
            offsets.update(self.units[p].offsets)
        if self.store is not None:
            # A store that writes to a broker reports how long it waited for acknowledgements.
            store_waited = self.store.waited_s
            self.store.save_all(self._checkpoint_units(parts))
            waited += self.store.waited_s - store_waited
        t1 = time.perf_counter()
        self.source.commit(offsets, wait=wait)
        waited += time.perf_counter() - t1
        release_free_heap()  # the checkpoint's buffers, freed: back to the OS
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        took = time.perf_counter() - t0
        share = self.opts.checkpoint_max_share
        self._checkpoint_pause = (took - waited) * (1.0 - share) / share
        self.summary.checkpoints += 1
        self.metrics.checkpoint_seconds.observe(took)

    def _checkpoint_units(self, parts: list[int]) -> Iterator[tuple[str, dict[str, Any]]]:
        """The checkpoint of each partition in ``parts`` and, without hand-over, the action
        executor's: built one at a time, as the store takes them."""
        for p in parts:
            unit = self.units[p]
            doc: dict[str, Any] = {
                "partition": p,
                "offsets": [[t, pp, o] for (t, pp), o in sorted(unit.offsets.items())],
                "invalid": unit.invalid,
                "unmonitored": unit.unmonitored,
                "models": {m: mon.state() for m, mon in sorted(unit.models.items())},
            }
            if self.handover:
                doc["replica"] = self.replica
                doc["actions"] = self.executor.handover_state(set(unit.models))
            if self.labeled_share is not None:
                doc["labeled"] = self.labeled_share.state(p, unit.models)
            yield f"p{p}", doc
        if self.executor is not None and not self.handover:
            yield self.actions_unit, {"executor": self.executor.state()}

    def health(self, max_stall_s: float) -> tuple[bool, str]:
        """Live unless the main loop has not come round for ``max_stall_s`` (blocked or
        wedged: by then Kafka has given its partitions to another member anyway)."""
        stalled = time.monotonic() - self.loop_at
        if self.ready and stalled > max_stall_s:
            return False, f"main loop stalled for {stalled:.0f} s (limit {max_stall_s:.0f} s)"
        return True, "ok"

    def report_lag(self) -> None:
        """Set the consumer-lag gauge: per owned (topic, partition), the records between the
        next one to process and the partition's end as last reported by the source (records
        read but not yet processed count as behind). Partitions no longer owned lose their
        series."""
        ends = self.source.end_offsets()
        now: set[tuple[str, str]] = set()
        for unit in self.units.values():
            for (topic, part), next_offset in unit.offsets.items():
                end = ends.get((topic, part))
                if end is None:
                    continue
                key = (topic, str(part))
                now.add(key)
                self.metrics.lag.labels(*key).set(max(0, end - next_offset))
        for key in self._lag_labels - now:
            self.metrics.lag.remove(*key)
        self._lag_labels = now

    def report_freshness(self, now: float, stale_after: float) -> list[str]:
        """Set the freshness gauges of every model of an owned partition: wall-clock seconds
        since its last event and since its last label (read by this process; when none yet,
        since it first saw the model). Returns the models without events for more than
        ``stale_after`` seconds. Models of partitions no longer owned lose their series (the
        new owner reports them), so a handover raises no staleness alert."""
        self._retire_moved(now, stale_after)
        owned = {m for u in self.units.values() for m in (*u.models, *u.unmonitored)}
        fresh = {m for m in owned if m in self.last_event_wall}
        stale = []
        for model in sorted(fresh):
            age = now - self.last_event_wall[model]
            self.metrics.seconds_since_event.labels(model).set(age)
            self.metrics.seconds_since_label.labels(model).set(
                now - self.last_label_wall.get(model, now)
            )
            if age > stale_after:
                stale.append(model)
        for model in self._fresh_models - fresh:
            self.metrics.seconds_since_event.remove(model)
            self.metrics.seconds_since_label.remove(model)
            self.last_event_wall.pop(model, None)
            self.last_label_wall.pop(model, None)
        self._fresh_models = fresh
        return stale

    # -- the loop --------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """Finish the current batch, checkpoint, and return from :meth:`run`."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT only set the stop event (main thread only)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(
        self,
        max_events: int | None = None,
        timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
    ) -> RunSummary:
        """Process until stopped, ``max_events`` records, ``timeout_s``, or ``idle_timeout_s``
        without records once partitions are assigned (or records arrive)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # Idle time counts from the assignment or the first record, whichever comes first:
        # joining a consumer group can take a while, and a group already caught up gets none.
        last_data: float | None = None
        self.ready = True
        try:
            while not self._stop.is_set():
                self._drain_work()
                budget = self.opts.max_poll_records
                if max_events is not None:
                    budget = min(budget, max_events - self.summary.records)
                    if budget <= 0:
                        self.summary.stopped_by = "max_events"
                        break
                records = self.source.poll(budget, self.opts.poll_timeout_s)
                if records:
                    last_data = time.monotonic()
                    self.process(records)
                elif last_data is None and self.units:
                    last_data = time.monotonic()
                if self._checkpoint_due():
                    self.checkpoint()
                elif self._probe_due():
                    self._probe_ownership()
                now = self.loop_at = time.monotonic()
                if now - self._lag_at >= LAG_EVERY_S:
                    self.report_lag()
                    self._lag_at = now
                if deadline is not None and now >= deadline:
                    self.summary.stopped_by = "timeout"
                    break
                if not records and self.source.exhausted:
                    self.summary.stopped_by = "end of input"
                    break
                if (
                    idle_timeout_s is not None
                    and last_data is not None
                    and now - last_data >= idle_timeout_s
                ):
                    self.summary.stopped_by = "idle"
                    break
            else:
                self.summary.stopped_by = "signal"
            self._drain_work()
            self.tick()
            self.checkpoint()
            # State and offsets are final: a revocation while closing has nothing to add.
            self._closed = True
        except SourceFenced:
            # The partitions are another replica's: closing must not checkpoint over its state.
            self._closed = True
            raise
        except BaseException:
            # Anything else ends the loop mid-batch (the state holds part of it, its offsets
            # all of it) or mid-checkpoint: closing the source revokes its partitions, and a
            # checkpoint then would commit input the state never took. The last checkpoint
            # stands; a restart reads on from it.
            self._closed = True
            raise
        finally:
            self.ready = False
        return self.summary

    def history_of(self, model: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The model's recent window summaries and decisions (oldest first)."""
        windows, decisions = self._history.get(model, ((), ()))
        return list(windows), list(decisions)

    def _remember(self, model: str, kind: int, record: dict[str, Any]) -> None:
        pair = self._history.setdefault(model, (deque(maxlen=2000), deque(maxlen=500)))
        pair[kind].append(record)

    def tick(self) -> None:
        """Run the actions that are due (the scheduler calls this on its own thread)."""
        if self.executor is None:
            return
        report = self.executor.tick()
        for (kind, outcome), n in getattr(report, "counts", {}).items():
            log.debug("actions", kind=kind, outcome=outcome, n=n)

    def reload_policies(self, path: str | Any) -> list[str]:
        """Hot reload from ``path``: all or nothing.

        A file with errors leaves the last good policies in force; the errors are logged,
        counted and alerted to the receivers of the policies they concern.
        """
        from driftwarden.policies.loader import load_policies

        policies, errors = load_policies(path)
        if errors:
            self.metrics.policy_reload_errors.inc()
            log.error("policy reload refused; the last good policies stay in force", errors=errors)
            if self.executor is not None:
                self.executor.notify_config_error(errors)
            return errors
        self.set_policies(policies)
        return []

    def scheduled_retrain(self, policy: Any, at: float) -> int:
        """A policy's cron fired: one retrain decision per model it watches (the policy's exact
        model, plus every model of a glob seen so far), through the executor like any other."""
        from .manual import manual_retrain_decision

        if self.executor is None or policy.schedule is None:
            return 0
        models = {
            m
            for u in self.units.values()
            for m, mon in u.models.items()
            if mon.policy.source == policy.source
        }
        if not policy.is_glob:
            models.add(policy.model)
        decisions = [
            manual_retrain_decision(
                policy,
                m,
                at,
                requested_by="schedule",
                rule=policy.schedule.rule,
                reason=f"scheduled retrain ({policy.schedule.cron} UTC)",
                name="scheduled-retrain",
            )
            for m in sorted(models)
        ]
        for d in decisions:
            self.summary.decisions += 1
            self.sink.publish(
                self.opts.topics["decisions"],
                d.model,
                orjson.dumps(d.to_dict(), option=orjson.OPT_SORT_KEYS),
            )
        return int(self.executor.on_decisions(decisions))

    def set_policies(self, policies: PolicySet) -> None:
        """Hot reload: new monitors use the new policies; existing ones switch at once."""
        self.policies = policies
        if self.executor is not None:
            self.executor.set_policies(policies)
        for listener in self.policy_listeners:
            listener(policies)
        for unit in self.units.values():
            for model, mon in list(unit.models.items()):
                new = policies.for_model(model)
                if new is None:
                    log.warning("model no longer has a policy; its state is dropped", model=model)
                    del unit.models[model]
                    self._forget_series(model)
                elif new != mon.policy:
                    mon.set_policy(new)
                    self._forget_series(model, (d.name for d in new.detectors), join=False)
        log.info("policies reloaded", policies=len(policies))

    def _checkpoint_due(self) -> bool:
        """A checkpoint is due after ``checkpoint_every_events`` records or
        ``checkpoint_every_s`` seconds, but not sooner than the pause the last one's work
        (writing the state, not waiting for the broker) calls for
        (``checkpoint_max_share``): a checkpoint writes the whole state, so with
        many predictions waiting for labels a record-count trigger alone would let a
        catching-up daemon spend most of its time checkpointing. (Shutdown, rebalance and
        handover checkpoints do not wait; a longer interval only means more records to read
        again after a crash, never a different result.)"""
        if self._since_checkpoint == 0:
            return False
        since = time.monotonic() - self._last_checkpoint
        if since < self._checkpoint_pause:
            return False
        return (
            self._since_checkpoint >= self.opts.checkpoint_every_events
            or since >= self.opts.checkpoint_every_s
        )

    def _probe_due(self) -> bool:
        """Idle (nothing to checkpoint) for ``checkpoint_every_s`` with partitions held: time to
        ask the group whether they are still this replica's (see :meth:`_probe_ownership`)."""
        last = max(self._last_checkpoint, self._last_probe)
        return (
            self._since_checkpoint == 0
            and bool(self.units)
            and time.monotonic() - last >= self.opts.checkpoint_every_s
        )

    def _probe_ownership(self) -> None:
        """Commit the last checkpoint's offsets again. A replica fenced by another one with its
        ``kafka.group_instance_id`` learns it only from a refused commit (kafka-python just
        logs the fenced heartbeat and keeps polling its old partitions): without new input no
        checkpoint would come, and it would go on reporting its models' gauges and raising
        staleness alerts for partitions another replica owns. The refusal raises
        :class:`SourceFenced` (exit 2). A commit the broker does not answer within
        :data:`PROBE_TIMEOUT_S` is logged and harmless (the main loop goes on)."""
        offsets: dict[tuple[str, int], int] = {}
        for unit in self.units.values():
            offsets.update(unit.offsets)
        self._last_probe = time.monotonic()
        if offsets:
            self.source.confirm(offsets, PROBE_TIMEOUT_S)

    def _drain_work(self) -> None:
        while True:
            try:
                job = self.work.get_nowait()
            except queue.Empty:
                return
            try:
                job()
            except Exception:  # a scheduled job must never take the loop down
                log.exception("scheduled job failed")

    # -- processing ------------------------------------------------------------------------
    def process(self, records: list[RawRecord]) -> None:
        """Decode and route one polled batch, then publish what it produced."""
        grouped: dict[tuple[int, str], list[PredictionEvent | LabelEvent]] = {}
        # (partition, model) of the groups whose records carry keys: only a keyed model moves
        # between partitions (see _adopt_moved)
        keyed: set[tuple[int, str]] = set()
        wall = time.time()
        n_pred = n_label = 0
        units, roles = self.units, self.source.roles
        max_bytes = self.opts.max_message_bytes
        skew = self.opts.max_future_skew_s
        keys: dict[str, bytes] = {}  # model name -> its expected message key
        labeled: set[str] = set()
        self.summary.records += len(records)
        self._since_checkpoint += len(records)
        for rec in records:
            unit = units.get(rec.partition)
            if unit is None:  # the file source (and a race with revocation) land here
                unit = units.setdefault(rec.partition, Unit(partition=rec.partition))
            unit.offsets[(rec.topic, rec.partition)] = rec.offset + 1
            try:
                ev = decode(rec.value, expect=_EXPECT[roles.get(rec.topic)], max_bytes=max_bytes)
                key = keys.get(ev.model)
                if key is None:
                    key = keys[ev.model] = ev.model.encode()
                if rec.key is not None and rec.key != key:
                    raise InvalidEvent(
                        f"message key {rec.key[:80]!r} does not match model {ev.model!r} "
                        "(producers must key events by model name)"
                    )
                if (
                    skew is not None
                    and rec.timestamp_ms is not None
                    and ev.timestamp > rec.timestamp_ms / 1000.0 + skew
                    and rec.timestamp_ms > 0
                ):
                    _future(ev.timestamp, rec.timestamp_ms, skew)
            except InvalidEvent as exc:
                self._dead_letter(unit, rec, str(exc))
                continue
            if type(ev) is PredictionEvent:
                n_pred += 1
            else:
                n_label += 1
                labeled.add(ev.model)
            group = grouped.get((rec.partition, ev.model))
            if group is None:
                group = grouped[(rec.partition, ev.model)] = []
                if rec.key is not None:
                    keyed.add((rec.partition, ev.model))
            group.append(ev)
        self.summary.valid += n_pred + n_label
        last_label = self.last_label_wall
        for p, model in grouped:
            self.last_event_wall[model] = wall
            units[p].seen[model] = wall
            if model in labeled or model not in last_label:
                last_label[model] = wall
        # Counted once per batch: a labels() lookup per event is a measurable share of ingest.
        if n_pred:
            self.metrics.events.labels("prediction", "valid").inc(n_pred)
        if n_label:
            self.metrics.events.labels("label", "valid").inc(n_label)
        for (p, model), events in grouped.items():
            try:
                self._process_model(self.units[p], model, events, (p, model) in keyed)
            except _ModelFailed as failed:
                self._processing_failed(p, model, records, failed.error)

    def _processing_failed(
        self, partition: int, model: str, records: list[RawRecord], exc: Exception
    ) -> None:
        """A model's batch raised inside the pipeline (a bug, or input nothing foresaw): its
        records go to the dead-letter topic with the error, so nothing is lost and no restart
        loops on them, and every other model goes on. The model's state may hold part of the
        batch. Logged with the traceback at most once a minute per model."""
        reason = f"processing failed for model {model!r}: {type(exc).__name__}: {exc}"
        n = 0
        for rec in records:
            if rec.partition != partition:
                continue
            try:
                ev = decode(
                    rec.value,
                    expect=_EXPECT[self.source.roles.get(rec.topic)],
                    max_bytes=self.opts.max_message_bytes,
                )
            except InvalidEvent:
                continue  # dead-lettered already
            skew = self.opts.max_future_skew_s
            if (
                skew is not None
                and rec.timestamp_ms is not None
                and rec.timestamp_ms > 0
                and ev.timestamp > rec.timestamp_ms / 1000.0 + skew
            ):
                continue  # dead-lettered already (too far ahead of its Kafka timestamp)
            if ev.model == model and (rec.key is None or rec.key == model.encode()):
                self._dead_letter(self.units[partition], rec, reason, "ProcessingError")
                n += 1
        self.summary.valid -= n
        self.metrics.processing_errors.labels(model).inc()
        now = time.monotonic()
        if now - self._failure_logged.get(model, -math.inf) >= 60.0:
            self._failure_logged[model] = now
            log.error(
                "model processing failed; its events of this batch went to the dead-letter topic",
                model=model,
                partition=partition,
                events=n,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )

    def _dead_letter(
        self, unit: Unit, rec: RawRecord, reason: str, error_class: str = "InvalidEvent"
    ) -> None:
        unit.invalid += 1
        self.summary.invalid += 1
        self.metrics.events.labels(self.source.roles.get(rec.topic) or "file", "invalid").inc()
        self.metrics.invalid.labels(reason.split(" ", 2)[0] if reason else "unknown").inc()
        value, headers = dead_letter(
            reason=reason,
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            key=rec.key,
            value=rec.value,
            timestamp_ms=rec.timestamp_ms,
            error_class=error_class,
        )
        self.sink.publish(
            self.opts.topics["dlq"],
            None if rec.key is None else rec.key.decode("utf-8", "replace"),
            value,
            headers,
        )
        # A producer gone wrong can send thousands a second: the topic and the counters have
        # every one; the log has the first DLQ_LOG_BURST of each DLQ_LOG_EVERY_S seconds.
        now = time.monotonic()
        if now - self._dlq_log[0] >= DLQ_LOG_EVERY_S:
            self._dlq_log[0], self._dlq_log[1] = now, 0
        if self._dlq_log[1] < DLQ_LOG_BURST:
            self._dlq_log[1] += 1
            log.warning(
                "event sent to dead-letter topic",
                reason=reason,
                topic=rec.topic,
                partition=rec.partition,
                offset=rec.offset,
                **({"not_logged_before": self._dlq_log[2]} if self._dlq_log[2] else {}),
            )
            self._dlq_log[2] = 0
        else:
            self._dlq_log[2] += 1

    def _process_model(
        self,
        unit: Unit,
        model: str,
        events: list[PredictionEvent | LabelEvent],
        keyed: bool = False,
    ) -> None:
        mon = unit.models.get(model)
        if mon is None:
            policy = self.policies.for_model(model)
            if policy is None:
                unit.unmonitored[model] = unit.unmonitored.get(model, 0) + len(events)
                self.metrics.unmonitored.labels(model, "no_policy").inc(len(events))
                if model not in self._warned:
                    self._warned.add(model)
                    log.warning(
                        "no policy matches this model; its events are counted only", model=model
                    )
                return
            try:
                mon = unit.models[model] = self._new_monitor(model, policy)
            except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the rest
                raise _ModelFailed(exc) from exc
            if keyed:  # unkeyed records spread over every partition by design: no move
                mon = unit.models[model] = self._adopt_moved(unit, model, mon)
        try:
            out = mon.process(events)
        except ProfileMissing as exc:
            # Without a reference its detectors fit, a model cannot be judged: say so once,
            # keep counting (the join and alert state stay; detectors are built once it loads).
            # The labels the join matched still go to the labeled store: they left the join.
            if exc.output is not None and exc.output.labeled and self.on_labeled is not None:
                self.on_labeled(model, exc.output.labeled, unit.partition)
            for counter, value in mon.join.counters.as_dict().items():
                self.metrics.join.labels(model, counter).set(value)
            unit.unmonitored[model] = unit.unmonitored.get(model, 0) + len(events)
            self.metrics.unmonitored.labels(model, "no_reference").inc(len(events))
            if f"profile:{model}" not in self._warned:
                self._warned.add(f"profile:{model}")
                log.error(
                    "model not monitored: its reference profile is missing or its policy's "
                    "detectors do not fit it",
                    model=model,
                    error=str(exc),
                )
                if self.executor is not None:  # on-call hears of it, not only the log
                    self.executor.notify_unmonitored(model, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the rest
            # Only the pipeline's own work: publishing below fails for the broker's reasons,
            # which are not the events' fault.
            raise _ModelFailed(exc) from exc
        if mon.detectors and f"profile:{model}" in self._warned:
            # Judged again (its profile loaded, or the policy fits it now): say so.
            self._warned.discard(f"profile:{model}")
            log.info("model monitored again", model=model)
            if self.executor is not None:
                self.executor.notify_monitored(model)
        topics = self.opts.topics
        for w in out.windows:
            self.summary.windows += 1
            self.metrics.windows.labels(model, w["stream"]).inc()
            self._detector_series.setdefault(model, set()).update(w["results"])
            for name, r in w["results"].items():
                if r.get("statistic") is not None:
                    self.metrics.detector_statistic.labels(model, name).set(r["statistic"])
                self.metrics.detector_triggered.labels(model, name).set(1 if r["triggered"] else 0)
            self.sink.publish(
                topics["windows"], model, orjson.dumps(w, option=orjson.OPT_SORT_KEYS)
            )
        for d in out.decisions:
            self.summary.decisions += 1
            self.metrics.decisions.labels(model, d.rule, d.status).inc()
            self._remember(model, 1, d.to_dict())
            self.sink.publish(
                topics["decisions"], model, orjson.dumps(d.to_dict(), option=orjson.OPT_SORT_KEYS)
            )
            log.info(
                "decision",
                model=model,
                rule=d.rule,
                status=d.status,
                severity=d.severity,
                window_end=d.window_end,
                actions=[a.type for a in d.actions],
                reasons=list(d.reasons),
            )
        for counter, value in mon.join.counters.as_dict().items():
            self.metrics.join.labels(model, counter).set(value)
        if out.labeled and self.on_labeled is not None:
            self.on_labeled(model, out.labeled, unit.partition)
        if out.decisions and self.on_decisions is not None:
            self.on_decisions(out.decisions)
        if out.decisions and self.executor is not None:
            self.executor.on_decisions(out.decisions)
