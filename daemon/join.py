"""Prediction ⋈ label by ``prediction_id``, bounded in time and entries.

Labels may arrive before their prediction or days after it. Both sides wait in insertion order
(which follows event time closely). Each side has its own clock, the largest event time seen on
it (its watermark), and an entry waits for the *other* side's clock: a prediction expires once
the labels have passed its event time plus the TTL (counted as ``expired_unlabeled``), a label
once the predictions have (``orphan_labels``); a prediction and a label more than the TTL apart
are not matched. So a prediction and its label are matched, or not, by their event times alone:
replays, restarts and any interleaving of the two topics in which neither is read more than the
TTL ahead of the other (a catch-up, a slow partition) give the same matches, as long as each
topic keeps event-time order (disorder within a topic can still decide a pair whose delay is
that close to the TTL). Beyond that, an entry also expires by its own side's clock, twice the
TTL behind it: a model whose labels stop, or never come, holds two TTLs of predictions at
most, not ``max_entries`` of them. Past ``max_entries`` a side evicts its oldest entry and
counts it the same way, so memory stays bounded whatever producers do. A waiting prediction
whose kept copy cannot be read back when its label comes (a damaged checkpoint) is dropped
with its label and counted as ``unreadable_predictions``: the model's other events go on.

The ids of the most recent :data:`MATCHED_KEEP` matched pairs are remembered (about 0.17 KB
each with UUIDs; until both clocks are the TTL past the pair): a copy of either side delivered
again after the match (an at-least-once producer's retry) is counted as
``duplicate_predictions`` / ``duplicate_labels``, as one that comes while the first copy waits
is, and neither waits nor joins again. An older pair's copy is not recognised.

A waiting prediction is kept as its JSON (about 0.65 KB with 25 features). At each checkpoint
(:meth:`JoinBuffer.compact`) the ones still waiting are compressed with zstd and a dictionary
trained on this model's own waiting predictions (about 0.16 KB each): a model whose labels
come hours or days late holds most of its buffer compressed. A prediction matched before the
next checkpoint is never compressed.
"""

from __future__ import annotations

import base64
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import zstandard

__all__ = ["JoinBuffer", "JoinCounters"]

STATE_VERSION = 5
# Waiting predictions in the state: version 2 holds each as a JSON string of its record;
# version 3 embeds its JSON (the record's or the event's own) as a nested object, written
# as is by orjson (no re-encoding, no string escaping); version 4 as version 3, or, for one
# compressed by :meth:`JoinBuffer.compact`, the base64 text of its zstd frame, with the
# buffer's dictionary beside them. Version 5 as version 4, with a watermark per side (before,
# one for both: it loads as each side's) and the ids matched within the TTL. All four load.
_READABLE_VERSIONS = (2, 3, 4, 5)

#: Matched pairs whose ids are remembered at most (the newest; see the module docstring): a
#: retry's copy comes soon after the original, and each id costs ~0.17 KB per model.
MATCHED_KEEP = 20_000
#: Fewest waiting predictions worth a dictionary: below it :meth:`JoinBuffer.compact` waits.
COMPACT_MIN = 64
#: Waiting predictions the dictionary is trained on (the newest; about 10-20 ms once).
_DICT_SAMPLES = 256
_DICT_BYTES = 4096
_ZSTD_LEVEL = 1


class _Packed(bytes):
    """A waiting prediction's JSON as a zstd frame made with its buffer's dictionary."""

    __slots__ = ()


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
    #: matched, but the kept copy of the prediction could not be read (both dropped)
    unreadable_predictions: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class JoinBuffer:
    """Waiting predictions and labels of one model."""

    ttl_s: float = 7 * 86400.0
    max_entries: int = 200_000
    #: compress the predictions still waiting at each checkpoint (:meth:`compact`)
    compress: bool = True
    #: the largest event time seen among the predictions; it expires the waiting labels
    pred_watermark: float = float("-inf")
    #: the largest event time seen among the labels; it expires the waiting predictions
    label_watermark: float = float("-inf")
    counters: JoinCounters = field(default_factory=JoinCounters)
    # Waiting predictions as (event time, compact JSON): a dict per record costs ~3.7 KB of
    # memory with 25 features, its JSON ~0.5 KB; it is decoded only when its label arrives.
    # (Measured with bench/memory.py.) The JSON is the event's own bytes when the caller has
    # them (no second encoding on the hot path) or the encoded record; :func:`_waiting_record`
    # reads both. Once :meth:`compact` has run, the oldest are :class:`_Packed` zstd frames.
    _predictions: OrderedDict[str, tuple[float, bytes]] = field(default_factory=OrderedDict)
    _labels: OrderedDict[str, tuple[float, Any]] = field(default_factory=OrderedDict)
    # Ids of matched pairs, so that a copy delivered again is a duplicate; beside them, in
    # match order, each id and its joined record's event time (the later of the two): an id is
    # forgotten once both watermarks are the TTL past that, or when more than max_entries
    # (the oldest; not counted). A set and two deques: ~80 B per id besides the id itself
    # (an OrderedDict ~115 B), a cheap look at the oldest, and no node to allocate.
    _matched: set[str] = field(default_factory=set)
    _matched_ids: deque[str] = field(default_factory=deque)
    _matched_ts: deque[float] = field(default_factory=deque)
    # The zstd dictionary of the compressed waiting predictions (None until the first
    # compaction; kept for the buffer's life, in its state) and its decompressor (made when a
    # compressed prediction is first matched: about 45 KB).
    _dictionary: bytes | None = None
    _inflater: zstandard.ZstdDecompressor | None = field(default=None, repr=False)

    def add_prediction(
        self, pid: str, record: dict[str, Any], raw: bytes | None = None
    ) -> dict[str, Any] | None:
        """Add a prediction record; returns the joined record if its label was waiting.

        ``raw`` is the prediction event's JSON the record was decoded from (optional): kept as
        is while the prediction waits, instead of encoding ``record`` again.
        """
        self.counters.predictions += 1
        ts = record["timestamp"]
        if ts > self.pred_watermark:
            self._advance_predictions(ts)
        waiting = self._labels.get(pid)
        if waiting is not None:
            lts = waiting[0]
            if ts < lts - self.ttl_s:
                # Read before its label, this prediction would have expired when the labels
                # reached it (as a label read after newer predictions does): not a match, in
                # whichever order the topics are read. The label waits on.
                self.counters.expired_unlabeled += 1
                return None
            del self._labels[pid]
            self.counters.matched += 1
            self._remember(pid, ts if ts > lts else lts)
            return _joined(record, waiting[1], lts)
        if pid in self._predictions or pid in self._matched:
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
        if ts > self.label_watermark:
            self._advance_labels(ts)
        waiting = self._predictions.get(pid)
        if waiting is not None:
            pts, blob = waiting
            if ts < pts - self.ttl_s:
                # The mirror of add_prediction's case: the prediction waits on.
                self.counters.orphan_labels += 1
                return None
            del self._predictions[pid]
            self._remember(pid, ts if ts > pts else pts)
            try:
                record = _waiting_record(
                    pid, pts, self._inflate(blob) if type(blob) is _Packed else blob
                )
            except (zstandard.ZstdError, orjson.JSONDecodeError, KeyError, TypeError):
                self.counters.unreadable_predictions += 1
                return None
            self.counters.matched += 1
            return _joined(record, label, ts)
        if pid in self._labels or pid in self._matched:
            self.counters.duplicate_labels += 1
            return None
        self._labels[pid] = (ts, label)
        if len(self._labels) > self.max_entries:
            self._bound(self._labels, "orphan_labels")
        return None

    def compact(self) -> int:
        """Compress the waiting predictions not compressed yet; returns how many.

        The compressed ones are always the oldest (new predictions join the end; compaction
        walks back from it), so it stops at the first compressed one. The first compaction
        with at least :data:`COMPACT_MIN` waiting trains the buffer's dictionary on the
        newest of them; with fewer it waits for a later one.
        """
        if not self.compress:
            return 0
        preds = self._predictions
        fresh: list[str] = []
        for pid in reversed(preds):
            if type(preds[pid][1]) is _Packed:
                break
            fresh.append(pid)
        if not fresh:
            return 0
        if self._dictionary is None:
            if len(fresh) < COMPACT_MIN:
                return 0
            self._dictionary = _train([preds[pid][1] for pid in fresh[:_DICT_SAMPLES]])
        deflate = zstandard.ZstdCompressor(
            level=_ZSTD_LEVEL,
            dict_data=_zstd_dict(self._dictionary),
            write_checksum=True,  # 4 bytes: a damaged frame is refused, not misread
            write_dict_id=False,
        ).compress
        for pid in fresh:
            ts, blob = preds[pid]
            preds[pid] = (ts, _Packed(deflate(blob)))
        return len(fresh)

    def _inflate(self, blob: _Packed) -> bytes:
        if self._inflater is None:
            assert self._dictionary is not None  # a compressed entry implies the dictionary
            self._inflater = zstandard.ZstdDecompressor(dict_data=_zstd_dict(self._dictionary))
        return self._inflater.decompress(blob)

    @property
    def compressed_predictions(self) -> int:
        """Waiting predictions held compressed (the oldest ones)."""
        n = 0
        for _, blob in self._predictions.values():
            if type(blob) is not _Packed:
                break
            n += 1
        return n

    @property
    def pending_predictions(self) -> int:
        return len(self._predictions)

    @property
    def pending_labels(self) -> int:
        return len(self._labels)

    def _remember(self, pid: str, ts: float) -> None:
        self._matched.add(pid)
        self._matched_ids.append(pid)
        self._matched_ts.append(ts)
        if len(self._matched_ids) > MATCHED_KEEP:
            self._matched_ts.popleft()
            self._matched.discard(self._matched_ids.popleft())

    # Oldest first; insertion order tracks event time closely enough that each loop stops at
    # the first entry still inside the TTL. Each side's entries expire by the other side's
    # watermark: a topic read ahead of the other expires nothing its lagging partner still has
    # to match.
    def _advance_predictions(self, ts: float) -> None:
        self.pred_watermark = ts
        horizon = ts - self.ttl_s
        labels = self._labels
        while labels and next(iter(labels.values()))[0] < horizon:
            labels.popitem(last=False)
            self.counters.orphan_labels += 1
        # The backstop: predictions whose labels stopped coming (or never come) go after two
        # TTLs of the predictions' own time.
        horizon -= self.ttl_s
        preds = self._predictions
        while preds and next(iter(preds.values()))[0] < horizon:
            preds.popitem(last=False)
            self.counters.expired_unlabeled += 1
        # Matched ids wait for both watermarks.
        horizon = (ts if ts < self.label_watermark else self.label_watermark) - self.ttl_s
        if self._matched_ts and self._matched_ts[0] < horizon:
            self._forget(horizon)

    def _advance_labels(self, ts: float) -> None:
        self.label_watermark = ts
        horizon = ts - self.ttl_s
        preds = self._predictions
        while preds and next(iter(preds.values()))[0] < horizon:
            preds.popitem(last=False)
            self.counters.expired_unlabeled += 1
        horizon -= self.ttl_s  # the backstop, as for predictions
        labels = self._labels
        while labels and next(iter(labels.values()))[0] < horizon:
            labels.popitem(last=False)
            self.counters.orphan_labels += 1
        # Matched ids wait for both watermarks.
        horizon = (ts if ts < self.pred_watermark else self.pred_watermark) - self.ttl_s
        if self._matched_ts and self._matched_ts[0] < horizon:
            self._forget(horizon)

    def _forget(self, horizon: float) -> None:
        """Forget the matched ids before ``horizon`` (the TTL behind the smaller watermark)."""
        stamps, ids, matched = self._matched_ts, self._matched_ids, self._matched
        while stamps and stamps[0] < horizon:
            stamps.popleft()
            matched.discard(ids.popleft())

    def _bound(self, side: OrderedDict[str, Any], counter: str) -> None:
        while len(side) > self.max_entries:
            side.popitem(last=False)
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)

    def state(self) -> dict[str, Any]:
        """State for orjson (versioned): each waiting prediction's JSON is an
        ``orjson.Fragment``, so the checkpoint embeds it without encoding it again; a
        compressed one is the base64 text of its zstd frame, beside the buffer's dictionary."""
        b64 = base64.b64encode
        return {
            "version": STATE_VERSION,
            "pred_watermark": _finite(self.pred_watermark),
            "label_watermark": _finite(self.label_watermark),
            "counters": self.counters.as_dict(),
            "dictionary": None if self._dictionary is None else b64(self._dictionary).decode(),
            "predictions": [
                [pid, ts, b64(blob).decode() if type(blob) is _Packed else orjson.Fragment(blob)]
                for pid, (ts, blob) in self._predictions.items()
            ],
            "labels": [[pid, ts, lab] for pid, (ts, lab) in self._labels.items()],
            "matched": [
                [pid, ts] for pid, ts in zip(self._matched_ids, self._matched_ts, strict=True)
            ],
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], *, ttl_s: float, max_entries: int, compress: bool = True
    ) -> JoinBuffer:
        """Restore :meth:`state`; refuses an unknown version."""
        if state.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"join buffer state version {state.get('version')!r} is unknown "
                f"(this driftwarden reads version {STATE_VERSION})."
            )
        buf = cls(ttl_s=ttl_s, max_entries=max_entries, compress=compress)
        version = state["version"]
        if version >= 5:
            buf.pred_watermark = _from_finite(state["pred_watermark"])
            buf.label_watermark = _from_finite(state["label_watermark"])
            for pid, ts in state["matched"]:
                buf._remember(pid, float(ts))
        else:
            # One watermark for both sides (the largest event time of either): every entry
            # still waiting in it was inside the TTL of both.
            buf.pred_watermark = buf.label_watermark = _from_finite(state.get("watermark"))
        buf.counters = JoinCounters(**state["counters"])
        dictionary = state.get("dictionary") if version >= 4 else None
        if dictionary is not None:
            buf._dictionary = base64.b64decode(dictionary, validate=True)
        buf._predictions = OrderedDict(
            (pid, (float(ts), _blob(doc, version))) for pid, ts, doc in state["predictions"]
        )
        if dictionary is None and any(type(b) is _Packed for _, b in buf._predictions.values()):
            raise ValueError("join buffer state holds compressed predictions but no dictionary.")
        buf._labels = OrderedDict((pid, (ts, lab)) for pid, ts, lab in state["labels"])
        return buf


def _finite(x: float) -> float | None:
    return None if x == float("-inf") else x


def _from_finite(x: float | None) -> float:
    return float("-inf") if x is None else float(x)


def _train(samples: list[bytes]) -> bytes:
    """A zstd dictionary for these JSON documents: trained when zstd can (it refuses some
    sample sets), else their own text as a raw-content dictionary (its last
    :data:`_DICT_BYTES`): measured on 25-feature events, ~190 B per event against ~160 B."""
    try:
        return bytes(zstandard.train_dictionary(_DICT_BYTES, samples).as_bytes())
    except zstandard.ZstdError:
        return b"".join(samples)[-_DICT_BYTES:]


def _zstd_dict(data: bytes) -> zstandard.ZstdCompressionDict:
    # A trained dictionary starts with zstd's dictionary magic, a raw-content one with JSON
    # text: zstd tells them apart (DICT_TYPE_AUTO).
    return zstandard.ZstdCompressionDict(data)


def _blob(doc: Any, version: int) -> bytes:
    """A waiting prediction's JSON from a loaded state: a string (version 2: JSON text;
    version 4: a compressed prediction, base64) or an object."""
    if isinstance(doc, str):
        if version >= 4:
            return _Packed(base64.b64decode(doc, validate=True))
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
