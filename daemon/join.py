"""Prediction ⋈ label by ``prediction_id``, bounded in time and entries.

Labels may arrive before their prediction or days after it. Both sides wait in insertion order
(which follows event time closely); the buffer's clock is the largest event time it has seen
(its watermark), so replays give the same matches as live runs. Entries older than the TTL
behind the watermark expire and are counted: an unmatched prediction as ``expired_unlabeled``,
an unmatched label as ``orphan_labels``. Past ``max_entries`` a side evicts its oldest entry and
counts it the same way, so memory stays bounded whatever producers do.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["JoinBuffer", "JoinCounters"]

STATE_VERSION = 3
# Waiting predictions in the state: version 2 holds each as a JSON string of its record;
# version 3 embeds its JSON (the record's or the event's own) as a nested object, written
# as is by orjson (no re-encoding, no string escaping). Both load.
_READABLE_VERSIONS = (2, 3)


@dataclass
class JoinCounters:
    """Exact counts of what the join did (part of the checkpointed state)."""

    predictions: int = 0
    labels: int = 0
    matched: int = 0
    expired_unlabeled: int = 0
    orphan_labels: int = 0
    duplicate_predictions: int = 0
    duplicate_labels: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class JoinBuffer:
    """Waiting predictions and labels of one model."""

    ttl_s: float = 7 * 86400.0
    max_entries: int = 200_000
    watermark: float = float("-inf")
    counters: JoinCounters = field(default_factory=JoinCounters)
    # Waiting predictions as (event time, compact JSON): a dict per record costs ~3.7 KB of
    # memory with 25 features, its JSON ~0.5 KB; it is decoded only when its label arrives.
    # (Measured with bench/memory.py.) The JSON is the event's own bytes when the caller has
    # them (no second encoding on the hot path) or the encoded record; :func:`_waiting_record`
    # reads both.
    _predictions: OrderedDict[str, tuple[float, bytes]] = field(default_factory=OrderedDict)
    _labels: OrderedDict[str, tuple[float, Any]] = field(default_factory=OrderedDict)

    def add_prediction(
        self, pid: str, record: dict[str, Any], raw: bytes | None = None
    ) -> dict[str, Any] | None:
        """Add a prediction record; returns the joined record if its label was waiting.

        ``raw`` is the prediction event's JSON the record was decoded from (optional): kept as
        is while the prediction waits, instead of encoding ``record`` again.
        """
        self.counters.predictions += 1
        ts = record["timestamp"]
        if ts > self.watermark:
            self._advance(ts)
        waiting = self._labels.pop(pid, None)
        if waiting is not None:
            self.counters.matched += 1
            return _joined(record, waiting[1], waiting[0])
        if pid in self._predictions:
            self.counters.duplicate_predictions += 1
            return None
        if raw is None:
            # Copied to an exact-size bytes object: orjson's own result keeps its whole working
            # buffer (about 8 KB) behind a ~0.5 KB record.
            raw = bytes(memoryview(orjson.dumps(record)))
        self._predictions[pid] = (ts, raw)
        if len(self._predictions) > self.max_entries:
            self._bound(self._predictions, "expired_unlabeled")
        return None

    def add_label(self, pid: str, label: Any, ts: float) -> dict[str, Any] | None:
        """Add a label; returns the joined record if its prediction was waiting."""
        self.counters.labels += 1
        if ts > self.watermark:
            self._advance(ts)
        waiting = self._predictions.pop(pid, None)
        if waiting is not None:
            self.counters.matched += 1
            return _joined(_waiting_record(pid, *waiting), label, ts)
        if pid in self._labels:
            self.counters.duplicate_labels += 1
            return None
        self._labels[pid] = (ts, label)
        if len(self._labels) > self.max_entries:
            self._bound(self._labels, "orphan_labels")
        return None

    @property
    def pending_predictions(self) -> int:
        return len(self._predictions)

    @property
    def pending_labels(self) -> int:
        return len(self._labels)

    def _advance(self, ts: float) -> None:
        if ts <= self.watermark:
            return
        self.watermark = ts
        horizon = ts - self.ttl_s
        # Oldest first; insertion order tracks event time closely enough that we stop at the
        # first entry still inside the TTL.
        while self._predictions:
            pid, (pts, _) = next(iter(self._predictions.items()))
            if pts >= horizon:
                break
            del self._predictions[pid]
            self.counters.expired_unlabeled += 1
        while self._labels:
            pid, (lts, _) = next(iter(self._labels.items()))
            if lts >= horizon:
                break
            del self._labels[pid]
            self.counters.orphan_labels += 1

    def _bound(self, side: OrderedDict[str, Any], counter: str) -> None:
        while len(side) > self.max_entries:
            side.popitem(last=False)
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)

    def state(self) -> dict[str, Any]:
        """State for orjson (versioned): each waiting prediction's JSON is an
        ``orjson.Fragment``, so the checkpoint embeds it without encoding it again."""
        return {
            "version": STATE_VERSION,
            "watermark": self.watermark if self.watermark != float("-inf") else None,
            "counters": self.counters.as_dict(),
            "predictions": [
                [pid, ts, orjson.Fragment(blob)] for pid, (ts, blob) in self._predictions.items()
            ],
            "labels": [[pid, ts, lab] for pid, (ts, lab) in self._labels.items()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, ttl_s: float, max_entries: int) -> JoinBuffer:
        """Restore :meth:`state`; refuses an unknown version."""
        if state.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"join buffer state version {state.get('version')!r} is unknown "
                f"(this driftwarden reads version {STATE_VERSION})."
            )
        buf = cls(ttl_s=ttl_s, max_entries=max_entries)
        wm = state.get("watermark")
        buf.watermark = float("-inf") if wm is None else float(wm)
        buf.counters = JoinCounters(**state["counters"])
        buf._predictions = OrderedDict(
            (pid, (float(ts), _blob(doc))) for pid, ts, doc in state["predictions"]
        )
        buf._labels = OrderedDict((pid, (ts, lab)) for pid, ts, lab in state["labels"])
        return buf


def _blob(doc: Any) -> bytes:
    """A waiting prediction's JSON from a loaded state: a string (version 2) or an object."""
    if isinstance(doc, str):
        return doc.encode()
    if isinstance(doc, orjson.Fragment):  # a state handed over without a JSON round trip
        return bytes(orjson.dumps(doc))
    return bytes(memoryview(orjson.dumps(doc)))  # exact size (see add_prediction)


def _waiting_record(pid: str, ts: float, blob: bytes) -> dict[str, Any]:
    """The record of a waiting prediction from its JSON (an encoded record or the event).

    Only the fields a record and a valid event share are read; the event time is the one the
    buffer kept, so both forms give the same record (``model_version`` as text, a missing or
    null ``segment`` as ``{}``, as :mod:`.events` decodes them).
    """
    doc = orjson.loads(blob)
    version = doc["model_version"]
    return {
        "prediction_id": pid,
        "model_version": version if type(version) is str else str(version),
        "timestamp": ts,
        "features": doc["features"],
        "prediction": doc["prediction"],
        "segment": doc.get("segment") or {},
    }


def _joined(record: dict[str, Any], label: Any, label_ts: float) -> dict[str, Any]:
    # A labeled example lives at the time the label became known (never before its prediction).
    out = dict(record)
    out["label"] = label
    out["label_timestamp"] = label_ts
    out["timestamp"] = max(record["timestamp"], label_ts)
    return out
