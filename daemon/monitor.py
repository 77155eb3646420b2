"""Per-model state: the join buffer, two windowers, the detectors and the policy state.

A :class:`ModelMonitor` is fed decoded events of one model in order and returns its outputs:
window summaries and decisions. It is deterministic given the events (no wall clock), which is
what makes ``replay`` equal to live operation and a restored checkpoint equal to a run that
never stopped.

The policy's window is the *prediction* window: when it closes, the policy is evaluated with
that window's prediction-stream results plus the latest closed *labeled* window's results
(labels come late; the last known slice performance and error-stream verdict hold until the
next labeled window closes).

A window summary holds the window's bounds, count and detector results — all functions of the
events alone — plus ``join``, a snapshot of the cumulative join counters when it closed, which
depends on how far the other topic had been read (processing time, not event time).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import structlog

from driftwarden.detectors.base import Detector, DetectorResult, StateVersionError
from driftwarden.detectors.batch import Batch
from driftwarden.policies.evaluator import PolicyState, evaluate
from driftwarden.policies.model import Decision, Policy, PolicyError, WindowInfo

from .events import LabelEvent, PredictionEvent, format_time
from .join import JoinBuffer
from .windows import ClosedWindow, Windower, WindowSpec

__all__ = ["ModelMonitor", "MonitorOutput", "ProfileMissing"]

log = structlog.get_logger(__name__)
STATE_VERSION = 1
#: rows a stream's detectors receive at once at most between window closes (see ModelMonitor)
FEED_ROWS = 1024
#: rows queued in all monitors of the process together (about 1 KB of columns each): past it,
#: a monitor feeds its detectors at once, so many models cannot add up to much memory
FEED_BUDGET_ROWS = 8192


class _Queued:
    """Rows waiting for detectors across every monitor (the loop is the only writer)."""

    rows = 0


class ProfileMissing(RuntimeError):
    """The model's reference profile cannot be found; ``str()`` says where it was looked for.

    Raised by :meth:`ModelMonitor.process` with ``output`` set to what the events produced
    before the detectors were needed: the join took them, so its matches are in ``labeled``
    (for the labeled store) although no window judges them.
    """

    output: MonitorOutput | None = None


class ProfileMismatch(ProfileMissing):
    """A detector of the model's policy does not fit its reference profile (a feature, slice
    or metric the profile lacks, e.g. a new model version dropped a feature); ``str()`` names
    the policy file and line."""


@dataclass
class MonitorOutput:
    """What processing some events produced."""

    windows: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    labeled: list[dict[str, Any]] = field(default_factory=list)


def _specs(policy: Policy) -> tuple[WindowSpec, WindowSpec]:
    w = policy.window
    late = w.allowed_lateness_s
    pred = WindowSpec(events=w.events, duration_s=w.duration_s, lateness_s=late)
    events, duration = w.labeled_events, w.labeled_duration_s
    if events is None and duration is None:
        events, duration = w.events, w.duration_s
    # Labeled records come from two interleaved topics: hold duration windows and feed them
    # in event-time order, so replays and restarts feed order-sensitive detectors identically.
    lab = WindowSpec(
        events=events, duration_s=duration, lateness_s=late, ordered=duration is not None
    )
    return pred, lab


class ModelMonitor:
    """Everything driftwarden knows about one model (see the module docstring)."""

    def __init__(
        self,
        model: str,
        policy: Policy,
        profile_loader: Callable[[str, str | None], Any],
        *,
        join_ttl_s: float,
        join_max_entries: int,
        join_compress: bool = True,
    ) -> None:
        self.model = model
        self.policy = policy
        self._profile_loader = profile_loader
        self.join = JoinBuffer(
            ttl_s=join_ttl_s, max_entries=join_max_entries, compress=join_compress
        )
        pred_spec, lab_spec = _specs(policy)
        self.pred_windows = Windower(pred_spec)
        self.lab_windows = Windower(lab_spec)
        self.policy_state = PolicyState()
        #: silences (policies.silences.SilenceSet) consulted by the evaluator; set by the daemon
        self.muter: Any = None
        self.profile_version: str | None = None
        # A registry reference's profile as JSON, kept in the checkpoint: a restart or a new
        # owner restores without the registry (a profile is immutable once logged). A file:
        # reference is read from its file again (start-up refuses a missing one).
        self._profile_json: str | None = None
        self.detectors: dict[str, Detector] = {}
        self.last_labeled: dict[str, DetectorResult] = {}
        self.events = 0
        self.labels = 0
        # Event-time progress of each input stream (labeled windows close on the smaller).
        self.pred_watermark = -math.inf
        self.label_watermark = -math.inf
        self._labeled_index = 0
        # Columns of records already in a window but not yet given to the detectors: polls
        # bring a few hundred records per model, and a detector's update costs about as much
        # for 300 rows as for 1000, so updates wait for FEED_ROWS rows (about 1 KB of columns
        # each), the window's close, a checkpoint or a change of detectors, whichever comes
        # first, or sooner when all monitors together hold FEED_BUDGET_ROWS. Same records in
        # the same order; only the batch boundaries move.
        self._pending: dict[str, list[Batch]] = {"predictions": [], "labeled": []}
        self._pending_rows: dict[str, int] = {"predictions": 0, "labeled": 0}

    def set_policy(self, policy: Policy) -> None:
        """Switch to an edited policy (hot reload).

        Detectors are rebuilt from the new policy at once (their open windows start afresh); the
        join buffer, counters and policy state are kept. A changed window size starts new
        windows; records of the current ones are dropped (logged).
        """
        old_specs = _specs(self.policy)
        self.policy = policy
        self._flush_all()  # into the detectors about to be dropped, as if fed at once
        self.detectors = {}
        self.profile_version = None
        self.last_labeled = {}
        new_specs = _specs(policy)
        if new_specs != old_specs:
            log.warning(
                "window spec changed; open windows restart",
                model=self.model,
                dropped=self.pred_windows.count + self.lab_windows.count,
            )
            self._restart_windows(new_specs)

    def _restart_windows(self, specs: tuple[WindowSpec, WindowSpec]) -> None:
        """Fresh windowers for ``specs``. Their indexes count on another scale (a count
        window's from 0, a duration window's as event time / duration), so the evaluator's
        replay guard starts afresh too: else every window would count as one decided before
        until the new indexes passed the old ones (forever, for a longer duration)."""
        self.pred_windows = Windower(specs[0])
        self.lab_windows = Windower(specs[1])
        self.policy_state = replace(self.policy_state, last_window=None)

    # -- detectors -------------------------------------------------------------------------
    def _ensure_detectors(self, model_version: str | None) -> None:
        if self.detectors and (model_version is None or model_version == self.profile_version):
            return
        if self.detectors and self.pred_windows.count:
            # A new model version mid-window: keep this window's reference; switch at the next.
            return
        profile = self._profile_loader(self.model, model_version)
        self._flush_all()  # queued rows belong to the detectors being replaced
        try:
            self.detectors = self.policy.build_detectors(profile)
        except PolicyError as exc:
            raise ProfileMismatch(str(exc)) from None
        by_registry = self.policy.reference_for(self.model).startswith("models:/")
        self._profile_json = profile.to_json() if by_registry else None
        self.profile_version = model_version
        log.info(
            "detectors built",
            model=self.model,
            model_version=model_version,
            detectors=sorted(self.detectors),
        )

    def _feed(self, stream: str, records: list[dict[str, Any]]) -> None:
        """Queue the records' columns for the stream's detectors (fed by :meth:`_flush`)."""
        if not records:
            return
        parts = self._pending[stream]
        parts.append(Batch.from_records(records))
        self._pending_rows[stream] += len(records)
        _Queued.rows += len(records)
        if self._pending_rows[stream] >= FEED_ROWS or _Queued.rows > FEED_BUDGET_ROWS:
            self._flush(stream)

    def _flush(self, stream: str) -> None:
        """Update the stream's detectors with every queued batch, as one batch."""
        parts = self._pending[stream]
        if not parts:
            return
        batch = parts[0] if len(parts) == 1 else Batch.concat(parts)
        self._drop_pending(stream)
        for det in self.detectors.values():
            if det.stream == stream:
                det.update(batch)

    def _flush_all(self) -> None:
        for stream in self._pending:
            self._flush(stream)

    def _drop_pending(self, stream: str) -> None:
        _Queued.rows -= self._pending_rows[stream]
        self._pending[stream] = []
        self._pending_rows[stream] = 0

    def __del__(self) -> None:
        # A monitor dropped with queued rows (its model lost its policy) frees its share.
        for stream in getattr(self, "_pending_rows", {}):
            self._drop_pending(stream)

    def _close(self, stream: str, closed: ClosedWindow) -> dict[str, DetectorResult]:
        self._flush(stream)
        results = {}
        for name, det in self.detectors.items():
            if det.stream == stream:
                results[name] = det.result()
                det.reset()
        return results

    # -- processing ------------------------------------------------------------------------
    def process(self, events: list[PredictionEvent | LabelEvent]) -> MonitorOutput:
        """Fold events (in order) into the state; returns closed windows and decisions."""
        out = MonitorOutput()
        preds: list[dict[str, Any]] = []
        labeled: list[dict[str, Any]] = []
        add_prediction, add_label = self.join.add_prediction, self.join.add_label
        pred_wm, label_wm = self.pred_watermark, self.label_watermark
        n_labels = 0
        for ev in events:
            if type(ev) is PredictionEvent:
                rec = ev.record()
                if ev.timestamp > pred_wm:
                    pred_wm = ev.timestamp
                preds.append(rec)
                joined = add_prediction(ev.prediction_id, rec, ev.raw)
            else:
                assert isinstance(ev, LabelEvent)
                n_labels += 1
                if ev.timestamp > label_wm:
                    label_wm = ev.timestamp
                joined = add_label(ev.prediction_id, ev.label, ev.timestamp)
            if joined is not None:
                labeled.append(joined)
        self.events += len(preds)
        self.labels += n_labels
        self.pred_watermark, self.label_watermark = pred_wm, label_wm
        try:
            if preds:
                self._ensure_detectors(preds[0]["model_version"])
            elif labeled and not self.detectors:
                self._ensure_detectors(labeled[0].get("model_version"))
        except ProfileMissing as exc:
            exc.output = MonitorOutput(labeled=labeled)
            raise
        # Labeled first, so a prediction window closing now sees the freshest labeled verdict.
        both = min(self.pred_watermark, self.label_watermark)
        for feed, closed in self.lab_windows.add_many(labeled, watermark=both):
            self._feed("labeled", feed)
            if closed is not None:
                results = self._close("labeled", closed)
                self.last_labeled = results
                out.windows.append(self._summary("labeled", closed, results))
        for feed, closed in self.pred_windows.add_many(preds):
            self._feed("predictions", feed)
            if closed is not None:
                results = self._close("predictions", closed)
                out.windows.append(self._summary("predictions", closed, results))
                out.decisions.extend(self._evaluate(closed, results))
                if preds:
                    # A new model version switches reference at the window boundary. A profile
                    # that does not load yet must not take this window's decisions with it
                    # (the policy state has moved on): the next batch's first call tries
                    # again and reports it.
                    with contextlib.suppress(ProfileMissing):
                        self._ensure_detectors(preds[-1]["model_version"])
        out.labeled = labeled
        return out

    def _evaluate(self, closed: ClosedWindow, results: dict[str, DetectorResult]) -> list[Decision]:
        merged = dict(self.last_labeled)
        merged.update(results)
        for name, det in self.detectors.items():
            if name not in merged:
                # No labeled window has closed yet: nothing is known, nothing is triggered.
                merged[name] = DetectorResult(
                    name=name,
                    kind=det.kind,
                    triggered=False,
                    evidence={"note": "no closed window yet"},
                )
        window = WindowInfo.from_epoch(closed.index, closed.start, closed.end)
        decisions, self.policy_state = evaluate(
            self.policy, self.model, window, merged, self.policy_state, closed.end, self.muter
        )
        return decisions

    def _summary(
        self, stream: str, closed: ClosedWindow, results: Mapping[str, DetectorResult]
    ) -> dict[str, Any]:
        return {
            "model": self.model,
            "stream": stream,
            "index": closed.index,
            "start": format_time(closed.start),
            "end": format_time(closed.end),
            "count": closed.count,
            "model_version": self.profile_version,
            "results": {k: results[k].to_dict() for k in sorted(results)},
            "join": self.join.counters.as_dict(),
            "late": (self.pred_windows if stream == "predictions" else self.lab_windows).late,
        }

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-ready state (versioned); queued rows are given to the detectors first, and
        the predictions still waiting for a label are compressed (:meth:`JoinBuffer.compact`)."""
        self._flush_all()
        self.join.compact()
        return {
            "version": STATE_VERSION,
            "model": self.model,
            "policy_source": self.policy.source,
            "profile_version": self.profile_version,
            "events": self.events,
            "labels": self.labels,
            "pred_watermark": _finite(self.pred_watermark),
            "label_watermark": _finite(self.label_watermark),
            "join": self.join.state(),
            "pred_windows": self.pred_windows.state(),
            "lab_windows": self.lab_windows.state(),
            # What the window states count in: a restore under another spec starts afresh.
            "window_specs": [asdict(self.pred_windows.spec), asdict(self.lab_windows.spec)],
            "detectors": {k: d.state_dict() for k, d in sorted(self.detectors.items())},
            "profile": self._profile_json if self.detectors else None,
            "last_labeled": {k: r.to_dict() for k, r in sorted(self.last_labeled.items())},
            "policy_state": self.policy_state.to_dict(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`state`; refuses an unknown version with a plain sentence."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"model state of {self.model!r} has version {state.get('version')!r}; this "
                f"driftwarden reads version {STATE_VERSION}."
            )
        self.events = int(state["events"])
        self.labels = int(state["labels"])
        self.pred_watermark = _from_finite(state["pred_watermark"])
        self.label_watermark = _from_finite(state["label_watermark"])
        for stream in self._pending:
            self._drop_pending(stream)  # a restored state has every row in its detectors
        self.join = JoinBuffer.from_state(
            state["join"],
            ttl_s=self.join.ttl_s,
            max_entries=self.join.max_entries,
            compress=self.join.compress,
        )
        specs = (self.pred_windows.spec, self.lab_windows.spec)
        pred = Windower.from_state(specs[0], state["pred_windows"])
        lab = Windower.from_state(specs[1], state["lab_windows"])
        self.policy_state = PolicyState.from_dict(state["policy_state"])
        self.profile_version = state.get("profile_version")
        if not _same_windows(state.get("window_specs"), specs, pred, lab):
            # The policy's window changed while the daemon was stopped: the saved windows (and
            # the detectors' accumulators of them) count in other units; new ones start.
            log.warning(
                "window spec changed since the checkpoint; open windows restart",
                model=self.model,
                dropped=pred.count + lab.count,
            )
            self._restart_windows(specs)
            self.last_labeled = {}
            return
        self.pred_windows, self.lab_windows = pred, lab
        if state["detectors"]:
            self._restore_detectors(state)
        self.last_labeled = {
            k: DetectorResult.from_dict(v) for k, v in state["last_labeled"].items()
        }

    def _restore_detectors(self, state: Mapping[str, Any]) -> None:
        """Rebuild the detectors of a saved state and load their accumulators.

        The profile: the checkpoint's copy for a ``models:/`` reference (immutable: no registry
        round trip, so a registry outage does not stop a restart or a takeover), else the
        loader (the file of a ``file:`` reference: the operator may have rebuilt it).
        Whatever cannot be restored is logged and left out, never raised: without a profile
        or with detectors that no longer fit it, the model restarts without detectors (its
        join, counters and alert state kept; detectors are built at its next events); a
        detector whose saved accumulators do not fit the profile starts an empty window.
        """
        from driftwarden.detectors.profile import ReferenceProfile

        saved = state.get("profile")
        by_registry = self.policy.reference_for(self.model).startswith("models:/")
        try:
            if saved and by_registry:
                profile = ReferenceProfile.from_json(saved)
            else:
                profile = self._profile_loader(self.model, self.profile_version)
            self.detectors = self.policy.build_detectors(profile)
        except (ProfileMissing, PolicyError) as exc:
            log.error(
                "detector state dropped: no reference profile to restore it with, or the "
                "policy's detectors do not fit it",
                model=self.model,
                error=str(exc),
            )
            self.profile_version = None
            return
        self._profile_json = (saved or profile.to_json()) if by_registry else None
        for name, det in list(self.detectors.items()):
            saved_det = state["detectors"].get(name)
            if saved_det is None:
                continue
            if saved_det.get("kind") != det.kind:
                log.warning(
                    "detector state dropped: the policy changed the detector's type",
                    model=self.model,
                    detector=name,
                )
                continue
            try:
                det.load_state(saved_det)
            except StateVersionError:
                raise  # state of another driftwarden version: refused, never dropped silently
            except (ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "detector state dropped (the reference profile changed?); its window "
                    "starts empty",
                    model=self.model,
                    detector=name,
                    error=str(exc),
                )
                self.detectors[name] = self.policy.build_detectors(profile)[name]


def _same_windows(
    saved: Any, specs: tuple[WindowSpec, WindowSpec], pred: Windower, lab: Windower
) -> bool:
    """Whether restored window states fit ``specs``: the specs the checkpoint recorded, or
    for a checkpoint that recorded none (written before it did), states the specs could have
    produced (a count window not over its size, a duration window not ahead of its
    watermark)."""
    if saved is not None:
        try:
            return (WindowSpec(**saved[0]), WindowSpec(**saved[1])) == specs
        except (TypeError, ValueError, IndexError, KeyError):
            return False
    for w in (pred, lab):
        if w.spec.events is not None and w.count >= w.spec.events:
            return False
        d = w.spec.duration_s
        if d is not None and w.started and w.index * d > w.watermark:
            return False
    return True


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x


def _from_finite(x: float | None) -> float:
    return -math.inf if x is None else float(x)
