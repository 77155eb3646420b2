"""Tumbling windows on event time: by count or by duration, with allowed lateness.

One window is open for detectors at a time, so streaming detectors see events in window order.
A count window closes after ``events`` records. A duration window ``k`` covers
``[k·d, (k+1)·d)`` in event time and closes once the watermark (the largest event time seen)
passes its end plus ``lateness``; records that belong to a later window wait in a buffer until
their window opens; records for a window already closed are counted as ``late`` and dropped.
The assignment uses only event times, so a replay gives the same windows as a live run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

__all__ = ["ClosedWindow", "WindowSpec", "Windower"]

STATE_VERSION = 1


@dataclass(frozen=True)
class WindowSpec:
    """Either ``events`` (count) or ``duration_s`` (event time) is set."""

    events: int | None = None
    duration_s: float | None = None
    lateness_s: float = 0.0
    #: duration windows only: hold each window's records and feed them at close in
    #: (event time, prediction_id) order, so order-sensitive detectors see one order however
    #: the inputs interleaved (costs the window's records in memory).
    ordered: bool = False

    def __post_init__(self) -> None:
        if (self.events is None) == (self.duration_s is None):
            raise ValueError("a window needs exactly one of events or duration.")
        if self.ordered and self.duration_s is None:
            raise ValueError("ordered applies to duration windows only.")
        if self.events is not None and self.events < 1:
            raise ValueError("window events must be at least 1.")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("window duration must be positive.")


@dataclass(frozen=True)
class ClosedWindow:
    """A window that just closed: the caller reads detector results then resets them."""

    index: int
    start: float
    end: float
    count: int


@dataclass
class Windower:
    """Assigns records to windows; the caller feeds ``ready`` records to its detectors."""

    spec: WindowSpec
    index: int = 0
    count: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf
    watermark: float = -math.inf
    late: int = 0
    started: bool = False
    held: list[dict[str, Any]] = field(default_factory=list)
    future: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def add_many(
        self, records: list[dict[str, Any]], watermark: float | None = None
    ) -> list[tuple[list[dict[str, Any]], ClosedWindow | None]]:
        """Add records in arrival order.

        Returns a list of steps ``(feed, closed)``: feed these records to the open window,
        then (if ``closed`` is set) read the results of that window and reset. The last step's
        ``closed`` is None when the batch ends with a window still open.

        ``watermark`` (duration windows only) is an event time the caller guarantees complete
        input up to; without it the watermark is the largest record time seen. The labeled
        stream passes the smaller of the prediction and label watermarks, because a joined
        record needs both sides: then which records share a window does not depend on how the
        two topics interleave.
        """
        steps: list[tuple[list[dict[str, Any]], ClosedWindow | None]] = []
        feed: list[dict[str, Any]] = []
        if self.spec.events is not None:
            n = self.spec.events
            i, total = 0, len(records)
            while i < total:
                # As many records as the open window still takes, noted in one go.
                chunk = records[i : i + n - self.count]
                i += len(chunk)
                stamps = list(map(_timestamp, chunk))
                self.count += len(chunk)
                self.first_ts = min(self.first_ts, min(stamps))
                self.last_ts = max(self.last_ts, max(stamps))
                feed.extend(chunk)
                if self.count >= n:
                    steps.append((feed, self._close(self.first_ts, self.last_ts)))
                    feed = []
            steps.append((feed, None))
            return steps
        d = float(self.spec.duration_s or 0.0)
        for rec in records:
            ts = rec["timestamp"]
            k = math.floor(ts / d)
            if self.started and k < self.index:
                self.late += 1
            elif self.started and k == self.index:
                (self.held if self.spec.ordered else feed).append(rec)
                self._note(ts)
            else:
                self.future.setdefault(k, []).append(rec)
            if watermark is None:
                self.watermark = max(self.watermark, ts)
                feed = self._close_due(d, feed, steps)
        if watermark is not None:
            self.watermark = max(self.watermark, watermark)
            feed = self._close_due(d, feed, steps)
        steps.append((feed, None))
        return steps

    def _close_due(
        self,
        d: float,
        feed: list[dict[str, Any]],
        steps: list[tuple[list[dict[str, Any]], ClosedWindow | None]],
    ) -> list[dict[str, Any]]:
        if not self.started:
            # The first window is fixed only once the watermark shows it complete: a record of
            # an earlier window may still arrive from the other input until then.
            if (
                not self.future
                or self.watermark < (min(self.future) + 1) * d + self.spec.lateness_s
            ):
                return feed
            self.started = True
            self.index = min(self.future)
            for w in self.future[self.index]:
                self._note(w["timestamp"])
            (self.held if self.spec.ordered else feed).extend(self.future.pop(self.index))
        while self.watermark >= (self.index + 1) * d + self.spec.lateness_s:
            if self.count:
                if self.spec.ordered:
                    feed = sorted(self.held, key=_order)
                    self.held = []
                steps.append((feed, self._close(self.index * d, (self.index + 1) * d)))
            feed = []
            # Jump over empty windows: to the first one the watermark has not closed (a record
            # within its lateness may still come), or to an earlier one that has records
            # waiting. (At least one on: the division may round below the window just closed.)
            still_open = max(
                self.index + 1, math.floor((self.watermark - self.spec.lateness_s) / d)
            )
            self.index = min(min(self.future), still_open) if self.future else still_open
            waiting = self.future.pop(self.index, [])
            for w in waiting:
                self._note(w["timestamp"])
            (self.held if self.spec.ordered else feed).extend(waiting)
        return feed

    def _note(self, ts: float) -> None:
        self.count += 1
        self.first_ts = min(self.first_ts, ts)
        self.last_ts = max(self.last_ts, ts)

    def _close(self, start: float, end: float) -> ClosedWindow:
        closed = ClosedWindow(index=self.index, start=start, end=end, count=self.count)
        if self.spec.events is not None:
            self.index += 1
        self.count = 0
        self.first_ts = math.inf
        self.last_ts = -math.inf
        return closed

    def state(self) -> dict[str, Any]:
        """JSON-ready state (versioned)."""
        return {
            "version": STATE_VERSION,
            "index": self.index,
            "count": self.count,
            "first_ts": None if self.first_ts == math.inf else self.first_ts,
            "last_ts": None if self.last_ts == -math.inf else self.last_ts,
            "watermark": None if self.watermark == -math.inf else self.watermark,
            "late": self.late,
            "started": self.started,
            "held": sorted(self.held, key=_order),
            "future": [
                [k, sorted(v, key=_order) if self.spec.ordered else v]
                for k, v in sorted(self.future.items())
            ],
        }

    @classmethod
    def from_state(cls, spec: WindowSpec, state: dict[str, Any]) -> Windower:
        """Restore :meth:`state`; refuses an unknown version."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"window state version {state.get('version')!r} is unknown "
                f"(this driftwarden reads version {STATE_VERSION})."
            )
        w = cls(spec=spec, index=int(state["index"]), count=int(state["count"]))
        w.first_ts = math.inf if state["first_ts"] is None else float(state["first_ts"])
        w.last_ts = -math.inf if state["last_ts"] is None else float(state["last_ts"])
        w.watermark = -math.inf if state["watermark"] is None else float(state["watermark"])
        w.late = int(state["late"])
        w.started = bool(state["started"])
        w.held = list(state["held"])
        w.future = {int(k): list(v) for k, v in state["future"]}
        return w


_timestamp = itemgetter("timestamp")


def _order(rec: dict[str, Any]) -> tuple[float, str]:
    return (rec["timestamp"], str(rec.get("prediction_id", "")))
