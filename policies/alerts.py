"""The alert lifecycle: what an alert is, how a decision becomes one, and the active set.

Pure: no I/O, no clock (callers pass times in). Receivers (``policies.receivers``) turn an
:class:`Alert` into a notification; the daemon keeps an :class:`AlertBook` in its checkpoint.

Identity. An alert is identified by its ``fingerprint``: for a rule alert the decision's
fingerprint (a hash of model and rule), for the fallback alert a hash of
``ModelFallbackActive`` and the model. Its labels are what Alertmanager deduplicates on, so
they hold only stable identity: ``alertname``, ``model``, ``rule``, ``severity``.

``alertname`` convention. A rule alert is named after its rule in CamelCase with the prefix
``Driftwarden`` (rule ``broken-input`` → ``DriftwardenBrokenInput``), so Alertmanager routes
and silences can match one rule without regexes while every driftwarden alert still matches
``alertname=~"Driftwarden.*"``. The one exception is :data:`FALLBACK_ALERTNAME`
(``ModelFallbackActive``), which names a state of the model rather than a rule; it carries
``model`` and ``severity`` and the label ``rule="fallback"``.

Lifecycle. ``firing`` → ``resolved``. Alertmanager forgets a firing alert when its ``endsAt``
passes (or after ``resolve_timeout``, 5 min, without one), so active alerts are re-sent
(:meth:`AlertBook.due_resends`, every 60 s by default) and every firing send carries
``endsAt = now + FIRING_HOLD_S`` as Prometheus does (:meth:`Alert.to_alertmanager`). A
resolved alert is sent once with ``endsAt`` set to the resolution time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from driftwarden.detectors.base import StateVersionError

__all__ = [
    "ALERT_STATE_VERSION",
    "FALLBACK_ALERTNAME",
    "FIRING_HOLD_S",
    "Alert",
    "AlertBook",
    "alert_from_decision",
    "alertname_for_rule",
    "fallback_alert",
    "fallback_fingerprint",
    "format_time",
    "parse_time",
]

ALERT_STATE_VERSION = 1
FALLBACK_ALERTNAME = "ModelFallbackActive"
# How far in the future a firing alert's endsAt is set on each send: several resend intervals,
# so one or two lost resends do not resolve the alert in Alertmanager (Prometheus uses 4x).
FIRING_HOLD_S = 300.0
# Annotations are for people; cap the JSON evidence so one huge window cannot bloat a page.
EVIDENCE_JSON_MAX = 4000


class _DecisionLike(Protocol):
    """The fields of ``policies.model.Decision`` an alert is built from."""

    @property
    def model(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def window_start(self) -> str: ...
    @property
    def window_end(self) -> str: ...
    @property
    def evidence(self) -> Mapping[str, Any]: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def detectors(self) -> Mapping[str, bool]: ...


def parse_time(value: str | datetime | float) -> datetime:
    """An aware UTC datetime from an ISO-8601 string, a datetime or epoch seconds."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)):
        dt = datetime.fromtimestamp(float(value), tz=UTC)
    else:
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"the time {value!r} is not an ISO-8601 timestamp.") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_time(value: str | datetime | float) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix (what Alertmanager and our decisions use)."""
    dt = parse_time(value)
    text = dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def alertname_for_rule(rule: str) -> str:
    """``Driftwarden`` + the rule name in CamelCase (``broken-input`` → ``DriftwardenBrokenInput``)."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", rule) if p]
    return "Driftwarden" + "".join(p[:1].upper() + p[1:] for p in parts)


def fallback_fingerprint(model: str) -> str:
    """The stable fingerprint of a model's ``ModelFallbackActive`` alert."""
    return hashlib.sha256(f"{FALLBACK_ALERTNAME}\x00{model}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Alert:
    """One alert, as every receiver sees it.

    ``starts_at`` / ``ends_at`` are RFC 3339 UTC strings; ``ends_at`` is ``None`` while the
    alert fires and the resolution time once it is resolved. ``status`` is ``"firing"`` or
    ``"resolved"``.
    """

    fingerprint: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str
    ends_at: str | None = None
    status: str = "firing"
    generator_url: str = ""

    def __post_init__(self) -> None:
        if not self.labels.get("alertname"):
            raise ValueError(f"alert {self.fingerprint!r} has no alertname label.")
        if self.status not in ("firing", "resolved"):
            raise ValueError(
                f"alert {self.fingerprint!r} has status {self.status!r}; "
                "expected 'firing' or 'resolved'."
            )
        if self.status == "resolved" and self.ends_at is None:
            raise ValueError(f"resolved alert {self.fingerprint!r} has no ends_at.")

    @property
    def model(self) -> str:
        """The model the alert is about."""
        return self.labels.get("model", "")

    def resolved(self, at: str | datetime | float) -> Alert:
        """This alert, resolved at ``at`` (never before it started)."""
        end = max(parse_time(at), parse_time(self.starts_at))
        return replace(self, status="resolved", ends_at=format_time(end))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (outbox payloads, checkpoints, Kafka and webhook bodies)."""
        return {
            "fingerprint": self.fingerprint,
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "generator_url": self.generator_url,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Alert:
        """Inverse of :meth:`to_dict`."""
        return cls(
            fingerprint=str(d["fingerprint"]),
            labels={str(k): str(v) for k, v in dict(d["labels"]).items()},
            annotations={str(k): str(v) for k, v in dict(d.get("annotations") or {}).items()},
            starts_at=str(d["starts_at"]),
            ends_at=None if d.get("ends_at") is None else str(d["ends_at"]),
            status=str(d.get("status", "firing")),
            generator_url=str(d.get("generator_url") or ""),
        )

    def to_alertmanager(self, now: str | datetime | float, hold_s: float = FIRING_HOLD_S) -> dict:
        """The Alertmanager v2 ``PostableAlert`` for a send at ``now``.

        A firing alert gets ``endsAt = now + hold_s`` (Alertmanager resolves it by itself if
        the resends stop); a resolved one its resolution time. ``endsAt`` never precedes
        ``startsAt``, which Alertmanager rejects.
        """
        start = parse_time(self.starts_at)
        if self.status == "firing":
            end = max(parse_time(now), start) + timedelta(seconds=hold_s)
        else:
            end = max(parse_time(self.ends_at or now), start)
        out: dict[str, Any] = {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": format_time(start),
            "endsAt": format_time(end),
        }
        if self.generator_url:
            out["generatorURL"] = self.generator_url
        return out


def _short_number(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _describe_result(name: str, r: Mapping[str, Any]) -> str:
    """One readable line for one detector result (a ``DetectorResult.to_dict()``)."""
    verdict = "fired" if r.get("triggered") else "ok"
    text = f"{name} ({r.get('kind', '?')}) {verdict}"
    stat, thr = r.get("statistic"), r.get("threshold")
    if stat is not None:
        text += f": statistic {_short_number(stat)}"
        if thr is not None:
            text += f" vs threshold {_short_number(thr)}"
    if r.get("p_value") is not None:
        text += f", p={_short_number(r['p_value'])}"
    if r.get("n"):
        text += f", n={r['n']}"
    top = (r.get("evidence") or {}).get("top")
    if top:
        names = []
        for item in list(top)[:5]:
            if isinstance(item, Mapping):
                label = item.get("feature") or item.get("slice") or item.get("name") or item
                names.append(str(label))
            else:
                names.append(str(item))
        text += "; top: " + ", ".join(names)
    return text


def describe_evidence(evidence: Mapping[str, Any], reasons: Iterable[str] = ()) -> str:
    """Short readable text of a decision's evidence: fired detectors first, then reasons."""
    items = sorted(evidence.items(), key=lambda kv: (not (kv[1] or {}).get("triggered"), kv[0]))
    lines = [_describe_result(name, r or {}) for name, r in items]
    lines += [f"reason: {r}" for r in reasons]
    return "\n".join(lines) if lines else "no detector evidence"


def _evidence_json(evidence: Mapping[str, Any]) -> str:
    text = json.dumps(evidence, sort_keys=True, separators=(",", ":"), default=str)
    if len(text) > EVIDENCE_JSON_MAX:
        # Keep the headline numbers and drop the bulky per-feature details.
        slim = {
            k: {kk: vv for kk, vv in dict(v or {}).items() if kk != "evidence"}
            for k, v in evidence.items()
        }
        text = json.dumps(slim, sort_keys=True, separators=(",", ":"), default=str)
        if len(text) > EVIDENCE_JSON_MAX:
            text = text[: EVIDENCE_JSON_MAX - 15] + "...(truncated)"
    return text


def alert_from_decision(
    decision: _DecisionLike, *, runbook_base: str | None = None, generator_url: str = ""
) -> Alert:
    """The alert a firing or resolved decision raises.

    ``starts_at`` is the decision's ``window_end`` (event time); a resolved decision gives a
    resolved alert ending at its ``window_end``. ``runbook_base`` (e.g.
    ``https://runbooks.example/driftwarden``) gives ``runbook_url = {base}/{rule}``.
    A suppressed decision has no alert and raises ``ValueError``.
    """
    if decision.status not in ("firing", "resolved"):
        raise ValueError(
            f"decision {decision.model}/{decision.rule} is {decision.status!r}; only firing "
            "or resolved decisions raise alerts."
        )
    labels = {
        "alertname": alertname_for_rule(decision.rule),
        "model": decision.model,
        "rule": decision.rule,
        "severity": decision.severity,
    }
    fired = sorted(name for name, hit in decision.detectors.items() if hit)
    verb = "firing" if decision.status == "firing" else "resolved"
    summary = f"{decision.model}: rule {decision.rule} {verb} ({decision.severity})"
    if fired and decision.status == "firing":
        summary += " on " + ", ".join(fired)
    annotations = {
        "summary": summary,
        "description": (
            f"window {decision.window_start} .. {decision.window_end}\n"
            + describe_evidence(decision.evidence, decision.reasons)
        ),
        "evidence_json": _evidence_json(decision.evidence),
    }
    if runbook_base:
        annotations["runbook_url"] = f"{runbook_base.rstrip('/')}/{decision.rule}"
    start = format_time(decision.window_end)
    alert = Alert(
        fingerprint=decision.fingerprint,
        labels=labels,
        annotations=annotations,
        starts_at=start,
        generator_url=generator_url,
    )
    return alert.resolved(start) if decision.status == "resolved" else alert


def fallback_alert(
    model: str,
    *,
    at: str | datetime | float,
    target: str,
    rule: str = "",
    severity: str = "critical",
    reason: str = "",
    runbook_base: str | None = None,
    generator_url: str = "",
) -> Alert:
    """The firing ``ModelFallbackActive`` alert for ``model`` routed to ``target``."""
    summary = f"{model}: serving falls back to {target}"
    if rule:
        summary += f" (rule {rule})"
    description = f"since {format_time(at)} the serving alias of {model} points at {target}."
    if reason:
        description += f"\nreason: {reason}"
    annotations = {"summary": summary, "description": description, "target": target}
    if rule:
        annotations["trigger_rule"] = rule
    if runbook_base:
        annotations["runbook_url"] = f"{runbook_base.rstrip('/')}/{FALLBACK_ALERTNAME}"
    return Alert(
        fingerprint=fallback_fingerprint(model),
        labels={
            "alertname": FALLBACK_ALERTNAME,
            "model": model,
            "rule": "fallback",
            "severity": severity,
        },
        annotations=annotations,
        starts_at=format_time(at),
        generator_url=generator_url,
    )


@dataclass
class _Entry:
    alert: Alert
    receivers: list[str] = field(default_factory=list)
    last_sent: float | None = None


class AlertBook:
    """The set of active (firing) alerts, with the receivers each goes to.

    ``fire`` adds or refreshes an alert (a repeat keeps the original ``starts_at`` so the
    alert's identity and age stay stable), ``resolve`` removes it and returns the resolved
    alert to send once, ``due_resends`` lists the alerts whose last send is older than
    ``every_s``. Times in ``now``/``last_sent`` are wall-clock epoch seconds passed in by the
    caller; alert times are RFC 3339 strings. ``to_state``/``from_state`` round-trip the book
    as JSON-ready data with a version.
    """

    def __init__(self) -> None:
        self._active: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._active

    def active(self) -> list[Alert]:
        """Every firing alert, oldest first."""
        return [e.alert for e in sorted(self._active.values(), key=_entry_order)]

    def get(self, fingerprint: str) -> Alert | None:
        """The active alert with this fingerprint, if any."""
        e = self._active.get(fingerprint)
        return e.alert if e else None

    def receivers(self, fingerprint: str) -> tuple[str, ...]:
        """The receivers an active alert goes to (empty if it is not active)."""
        e = self._active.get(fingerprint)
        return tuple(e.receivers) if e else ()

    def fire(
        self, alert: Alert, *, receivers: Sequence[str] = (), sent_at: float | None = None
    ) -> bool:
        """Record ``alert`` as firing; True if it was not active before.

        ``receivers`` are added to those already recorded for it. ``sent_at`` is when the
        caller sent (or enqueued) the first notification; ``None`` makes it due at once.
        """
        if alert.status != "firing":
            raise ValueError(
                f"alert {alert.fingerprint!r} is resolved; fire() takes firing alerts."
            )
        e = self._active.get(alert.fingerprint)
        if e is None:
            self._active[alert.fingerprint] = _Entry(alert, list(dict.fromkeys(receivers)), sent_at)
            return True
        # Same alert again: keep when it started, take the newest annotations (fresh evidence).
        e.alert = replace(alert, starts_at=e.alert.starts_at)
        for r in receivers:
            if r not in e.receivers:
                e.receivers.append(r)
        if sent_at is not None:
            e.last_sent = sent_at
        return False

    def resolve(self, fingerprint: str, at: str | datetime | float) -> Alert | None:
        """Remove an active alert and return it resolved at ``at`` (None if not active)."""
        e = self._active.pop(fingerprint, None)
        return e.alert.resolved(at) if e else None

    def due_resends(self, now: float, every_s: float = 60.0) -> list[Alert]:
        """Active alerts never sent or last sent ``every_s`` or more seconds before ``now``.

        ``every_s`` must stay well below Alertmanager's ``resolve_timeout`` (5 min) and
        below :data:`FIRING_HOLD_S`. The caller sends them to those of the alert's
        :meth:`receivers` whose ``wants_resends`` is true (Alertmanager only: people behind
        a webhook must not get the same alert every minute) and calls :meth:`mark_sent`.
        """
        return [
            e.alert
            for e in sorted(self._active.values(), key=_entry_order)
            if e.last_sent is None or now - e.last_sent >= every_s
        ]

    def mark_sent(self, fingerprints: Iterable[str], now: float) -> None:
        """Record that these active alerts were sent (or enqueued) at ``now``."""
        for fp in fingerprints:
            e = self._active.get(fp)
            if e is not None:
                e.last_sent = now

    # The ModelFallbackActive alert of a model.

    def raise_fallback(
        self,
        model: str,
        *,
        at: str | datetime | float,
        target: str,
        rule: str = "",
        reason: str = "",
        receivers: Sequence[str] = (),
        sent_at: float | None = None,
        runbook_base: str | None = None,
    ) -> Alert:
        """Fire (or refresh) ``model``'s ``ModelFallbackActive`` alert and return it."""
        alert = fallback_alert(
            model, at=at, target=target, rule=rule, reason=reason, runbook_base=runbook_base
        )
        self.fire(alert, receivers=receivers, sent_at=sent_at)
        return self._active[alert.fingerprint].alert

    def resolve_fallback(self, model: str, at: str | datetime | float) -> Alert | None:
        """Resolve ``model``'s ``ModelFallbackActive`` alert (None if it was not active)."""
        return self.resolve(fallback_fingerprint(model), at)

    def fallback_active(self, model: str) -> bool:
        """Whether ``model`` is on fallback (its drift alerts are muted meanwhile)."""
        return fallback_fingerprint(model) in self._active

    # Serialisation.

    def to_state(self, models: Collection[str] | None = None) -> dict[str, Any]:
        """Versioned, JSON-ready state (only the alerts of ``models`` if given)."""
        return {
            "version": ALERT_STATE_VERSION,
            "active": [
                {
                    "alert": e.alert.to_dict(),
                    "receivers": list(e.receivers),
                    "last_sent": e.last_sent,
                }
                for e in sorted(self._active.values(), key=_entry_order)
                if models is None or e.alert.model in models
            ],
        }

    def drop_models(self, models: Collection[str]) -> None:
        """Forget the alerts of ``models`` (another replica keeps them now)."""
        for fp in [fp for fp, e in self._active.items() if e.alert.model in models]:
            del self._active[fp]

    def take_models(self, models: Collection[str], state: Mapping[str, Any]) -> None:
        """Replace the alerts of ``models`` with those of a :meth:`to_state` of them."""
        self.drop_models(models)
        other = AlertBook.from_state(state)
        self._active.update({fp: e for fp, e in other._active.items() if e.alert.model in models})

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AlertBook:
        """Restore :meth:`to_state`; refuses a version it does not know."""
        if state.get("version") != ALERT_STATE_VERSION:
            raise StateVersionError(
                f"the alert book state has version {state.get('version')!r}; this version of "
                f"driftwarden reads version {ALERT_STATE_VERSION}."
            )
        book = cls()
        for item in state.get("active") or []:
            alert = Alert.from_dict(item["alert"])
            last = item.get("last_sent")
            book._active[alert.fingerprint] = _Entry(
                alert,
                [str(r) for r in item.get("receivers") or []],
                None if last is None else float(last),
            )
        return book


def _entry_order(e: _Entry) -> tuple[datetime, str]:
    return (parse_time(e.alert.starts_at), e.alert.fingerprint)
