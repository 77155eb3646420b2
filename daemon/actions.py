"""Executing decided actions: the outbox, the alert lifecycle and fallback routing.

The policies decide (pure); this module acts. :class:`ActionExecutor` turns every action of
every decision into a job in the durable :class:`~driftwarden.daemon.outbox.Outbox` (SQLite in
the state directory) and keeps the :class:`~driftwarden.policies.alerts.AlertBook` of active
alerts up to date; :meth:`ActionExecutor.tick` runs the jobs that are due:

* ``alert`` / ``resolve`` → the policy's receiver of that name (Alertmanager, webhook, Kafka
  topic ``driftwarden.alerts`` through the daemon's sink, log);
* ``fallback`` → the registry's ``serving`` alias moves to the policy's target (``previous``,
  or a named fallback model; ``champion`` is never touched) and the route is published to the
  compacted topic ``driftwarden.routing`` (key = model); the ``ModelFallbackActive`` alert is
  raised and notified to the rule's receivers;
* ``route_back`` → ``serving`` back to ``champion``, a routing record, and
  ``ModelFallbackActive`` resolved;
* ``retrain`` → the retrain launcher (the daemon connects it to the retrain worker).

Guarantee: **at least once, with idempotency keys; no action is enqueued twice.** A job is
stored under its action's key (model, rule, window end, action, target) before the offsets
that produced it are committed, so a replayed window finds the key and enqueues nothing new,
and a crash between a send and its "done" mark repeats that one send after a restart (webhooks
get the same ``Idempotency-Key``, Alertmanager deduplicates by labels, moving an alias to the
version it already points at changes nothing, the retrain pipeline checks its action key).

Order. Jobs that must not overtake each other form a *stream*: the notifications of one alert
to one receiver (firing before resolved), and the routes of one model (fallback before route
back). Each job records its predecessor in the stream; it waits (a retry) while that one is
still pending. The predecessors live in a small JSON file next to the outbox, written before
the job is enqueued, so the order survives a restart.

Resends. Alertmanager forgets an alert whose ``endsAt`` passed, so :meth:`tick` re-sends active
alerts every ``resend_every_s`` to the receivers that want it (``wants_resends``: Alertmanager
only); people behind a webhook get one firing and one resolved notification. A resend is
skipped when a notification of the same alert to the same receiver is still queued, and
dropped if the alert was resolved before it could be sent.

Not in the policy schema yet, so not done: an HTTP hook on fallback.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from driftwarden.detectors.base import StateVersionError
from driftwarden.policies.alerts import (
    Alert,
    AlertBook,
    alert_from_decision,
    fallback_alert,
    fallback_fingerprint,
)
from driftwarden.policies.model import Decision, Policy, PolicyError, PolicySet, iso_utc
from driftwarden.policies.receivers import (
    DEFAULT_ALERT_TOPIC,
    Delivery,
    Receiver,
    alert_job_payload,
    build_receivers,
)
from driftwarden.retrain.registry import RegistryError, Unavailable

from .outbox import JobResult, Outbox
from .sinks import Sink

__all__ = [
    "ACTIONS_STATE_VERSION",
    "ACTOR",
    "DEFAULT_ROUTING_TOPIC",
    "ActionExecutor",
    "TickReport",
    "serving_target",
]

log = structlog.get_logger(__name__)

ACTIONS_STATE_VERSION = 1
HANDOVER_VERSION = 1
ACTOR = "driftwarden"
DEFAULT_ROUTING_TOPIC = "driftwarden.routing"
# Aliases a fallback ``to:`` may name within the model itself; any other word is a model name.
_OWN_ALIASES = frozenset({"previous", "champion", "challenger", "serving"})


class RegistryLike(Protocol):
    """What fallback routing needs from :class:`~driftwarden.retrain.registry.Registry`."""

    def set_serving(
        self,
        model: str,
        version_or_target: str,
        actor: str,
        reason: str,
        *,
        decision_key: str | None = None,
    ) -> Any:
        """Move ``serving`` (returns an ``AliasMove`` with ``version``/``target_model``)."""


Launcher = Callable[[dict[str, Any], dict[str, Any]], Any]


def serving_target(to: str) -> str:
    """The :meth:`Registry.set_serving` target for a policy's ``fallback: {to: ...}``.

    ``previous`` (or another alias of the model), a version number, ``model:<name>`` or
    ``<name>@<alias>`` pass through; any other word names a fallback model (its champion).

    >>> serving_target("previous"), serving_target("churn-rules")
    ('previous', 'model:churn-rules')
    """
    if to in _OWN_ALIASES or to.isdigit() or to.startswith("model:") or "@" in to:
        return to
    return f"model:{to}"


@dataclass
class TickReport:
    """What one :meth:`ActionExecutor.tick` did.

    ``counts`` maps ``(kind, outcome)`` (outcome: done, retry, dead) to a number of job
    attempts — what the daemon adds to ``driftwarden_action_outcomes_total``; ``resends`` is how
    many alert resends were enqueued.
    """

    results: list[JobResult] = field(default_factory=list)
    resends: int = 0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)


class _SinkProducer:
    """The kafka-python producer surface the Kafka receiver uses, over the daemon's sink."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None) -> None:
        self.sink.send(topic, key=None if key is None else key.decode(), value=value)

    def flush(self, timeout: float | None = None) -> None:
        self.sink.flush()


class _Chains:
    """Durable ``stream → {last, prev}``: the last job enqueued in each stream.

    A JSON file replaced atomically (write, fsync, rename) on every change; changes come with
    decisions and resends, which are rare next to events.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._d: dict[str, dict[str, str | None]] = {}
        if path.exists():
            doc = json.loads(path.read_text())
            if doc.get("version") != 1:
                raise StateVersionError(
                    f"the job order file {path} has version {doc.get('version')!r}; this "
                    "version of driftwarden reads version 1."
                )
            self._d = dict(doc["streams"])

    def last(self, stream: str) -> str | None:
        e = self._d.get(stream)
        return None if e is None else e["last"]

    def link(self, stream: str, key: str) -> str | None:
        """Record ``key`` as the stream's last job; returns the job it must wait for."""
        e = self._d.get(stream)
        if e is not None and e["last"] == key:
            # Stored before a crash that came before the enqueue: keep the same predecessor.
            return e["prev"]
        prev = None if e is None else e["last"]
        self._d[stream] = {"last": key, "prev": prev}
        self._save()
        return prev

    def adopt(self, stream: str, key: str, after: str | None) -> None:
        """A job handed over from another replica becomes the stream's last job."""
        self._d[stream] = {"last": key, "prev": after}
        self._save()

    def prune(self, finished: Callable[[str], bool]) -> None:
        """Forget streams whose last job is finished (done or dead): nothing to wait for."""
        gone = [s for s, e in self._d.items() if e["last"] is not None and finished(e["last"])]
        for s in gone:
            del self._d[s]
        if gone:
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps({"version": 1, "streams": self._d}, option=orjson.OPT_SORT_KEYS))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def job_model(job: Any) -> str | None:
    """The model a job acts for (``None``: a daemon-wide job, e.g. a refused policy edit)."""
    return _model_of(job.key, job.payload)


def _model_of(key: Any, payload: Mapping[str, Any]) -> str | None:
    """:func:`job_model` of a job's key and payload (a job as its state stores it, too)."""
    if str(key).startswith("config/"):
        return None
    if "model" in payload:
        return str(payload["model"])
    decision = payload.get("decision")
    if isinstance(decision, Mapping) and "model" in decision:
        return str(decision["model"])
    return None


def _as_delivery(out: Any) -> Delivery:
    """A launcher's answer (a :class:`Delivery` or anything with ``ok``/``retryable``/``error``)."""
    if isinstance(out, Delivery):
        return out
    if out is None or not hasattr(out, "ok"):
        return Delivery.dead(f"the retrain launcher returned {out!r} instead of a delivery.")
    return Delivery(
        ok=bool(out.ok),
        retryable=bool(getattr(out, "retryable", False)),
        error=getattr(out, "error", None),
    )


class ActionExecutor:
    """Executes decisions' actions through a durable outbox (see the module docstring).

    ``outbox_path``: the SQLite file (under the state directory); the job order file is
    ``<outbox_path>.order.json`` beside it. ``sink``: the daemon's sink (routing records and
    Kafka alert receivers). ``policies``: the current policies; their receivers are built now,
    with ``${VAR}`` expanded from ``env`` (default ``os.environ``) — an unset variable or a bad
    receiver raises :class:`PolicyError` listing every problem with the policy file and
    receiver. ``topics``: the daemon's topic names (``routing``, ``alerts``).
    ``registry_factory``: builds the registry on first use (e.g.
    ``lambda: Registry(tracking_uri)``); ``None`` → fallback only publishes the route and
    raises the alert. ``retrain_launcher(decision_dict, action_dict)`` returns a
    :class:`Delivery`-like answer; ``None`` → retrain jobs wait in the outbox. ``now`` is the
    wall clock (epoch seconds). ``metrics`` (optional, :class:`~.metrics.Metrics`) gets action
    outcomes counted on every tick. ``outbox_options`` go to :class:`Outbox` (``base_s``,
    ``cap_s``, ``max_attempts``).
    """

    def __init__(
        self,
        outbox_path: str | Path,
        sink: Sink,
        policies: PolicySet,
        *,
        topics: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        registry_factory: Callable[[], RegistryLike] | None = None,
        retrain_launcher: Launcher | None = None,
        now: Callable[[], float] = time.time,
        resend_every_s: float = 60.0,
        runbook_base: str | None = None,
        metrics: Any = None,
        outbox_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.sink = sink
        self.topics = dict(topics or {})
        self.routing_topic = self.topics.get("routing", DEFAULT_ROUTING_TOPIC)
        self.alerts_topic = self.topics.get("alerts", DEFAULT_ALERT_TOPIC)
        self.env = dict(os.environ if env is None else env)
        self.registry_factory = registry_factory
        self.retrain_launcher = retrain_launcher
        self.now = now
        self.resend_every_s = resend_every_s
        self.runbook_base = runbook_base
        self.metrics = metrics
        self.policies = policies
        # Build receivers first: a bad policy must fail before any file is opened.
        self._receivers = self._build_receivers(policies)
        self.outbox = Outbox(outbox_path, **dict(outbox_options or {}))
        self._chains = _Chains(Path(str(outbox_path) + ".order.json"))
        self.book = AlertBook()
        self._registry: RegistryLike | None = None
        # tick() runs on its own thread in the daemon (a receiver or the registry being slow
        # or down must never stall monitoring); this lock guards the book, the order chains and
        # the receivers. It is never held while a receiver or the registry is called.
        self._lock = threading.RLock()
        # One tick at a time (the action thread's and the final one at shutdown): two ticks
        # could otherwise both pick the same due job and deliver it twice.
        self._tick_lock = threading.Lock()
        if registry_factory is None:
            log.warning(
                "no model registry is set: fallback actions only publish the route and raise "
                "the alert; the serving alias does not move"
            )
        if retrain_launcher is None:
            log.info("no retrain launcher is set: retrain jobs wait in the outbox")

    # -- receivers and policies --------------------------------------------------------------
    def _build_receivers(self, policies: PolicySet) -> dict[str, dict[str, Receiver]]:
        errors: list[str] = []
        out: dict[str, dict[str, Receiver]] = {}
        producer = _SinkProducer(self.sink)
        for policy in policies.policies:
            specs: dict[str, Any] = {}
            for name, spec in policy.receivers.items():
                try:
                    expanded = spec.expand(self.env)
                except PolicyError as exc:
                    errors += [f"{policy.source}: {e}" for e in exc.errors]
                    continue
                params = dict(expanded.params)
                if expanded.type == "kafka":
                    params.setdefault("topic", self.alerts_topic)
                specs[name] = {"type": expanded.type, **params}
            try:
                out[policy.source] = build_receivers(specs, kafka_producer=producer)
            except ValueError as exc:
                errors.append(f"{policy.source}: {exc}")
        if errors:
            for rs in out.values():
                for r in rs.values():
                    r.close()
            raise PolicyError(errors)
        return out

    def set_policies(self, policies: PolicySet) -> None:
        """Use reloaded policies; on a :class:`PolicyError` the old ones stay in force."""
        receivers = self._build_receivers(policies)
        with self._lock:
            old, self._receivers, self.policies = self._receivers, receivers, policies
        for rs in old.values():
            for r in rs.values():
                r.close()

    def _policy(self, model: str) -> Policy | None:
        try:
            return self.policies.for_model(model)
        except PolicyError:
            log.exception("no single policy for model", model=model)
            return None

    def receiver(self, model: str, name: str) -> Receiver | None:
        """The receiver ``name`` of ``model``'s policy, or ``None``."""
        policy = self._policy(model)
        if policy is None:
            return None
        return self._receivers.get(policy.source, {}).get(name)

    def _rule_receivers(self, policy: Policy | None, rule: str) -> tuple[str, ...]:
        if policy is None:
            return ()
        for r in policy.rules:
            if r.name == rule:
                return r.alert_receivers
        return ()

    # -- decisions → jobs --------------------------------------------------------------------
    def on_decisions(self, decisions: Sequence[Decision]) -> int:
        """Enqueue every action of every decision; returns how many jobs were new.

        Suppressed decisions count too: the evaluator already removed what must not run. A
        job whose key is already in the outbox (a replayed window) is not enqueued again, but
        the alert book is still brought up to date (it may be older than the outbox after a
        crash).
        """
        with self._lock:
            return self._on_decisions(decisions, self.now())

    def _on_decisions(self, decisions: Sequence[Decision], now: float) -> int:
        added = 0
        for d in decisions:
            policy = self._policy(d.model)
            resolved: Alert | None = None
            for a in d.actions:
                if a.type == "alert":
                    added += self._alert(d, a.key, str(a.params["receiver"]), now)
                elif a.type == "resolve":
                    if resolved is None:
                        resolved = self.book.resolve(d.fingerprint, d.window_end)
                        if resolved is None:  # not in the book (lost in a crash): rebuild it
                            resolved = alert_from_decision(
                                replace(d, status="resolved"), runbook_base=self.runbook_base
                            )
                    receiver = str(a.params["receiver"])
                    added += self._notify(
                        a.key, "resolve", d.model, receiver, resolved, d.key, now=now
                    )
                elif a.type == "fallback":
                    added += self._fallback(d, a.key, str(a.params["to"]), policy, now)
                elif a.type == "route_back":
                    added += self._route_back(d, a.key, policy, now)
                elif a.type == "retrain":
                    payload = {"decision": d.to_dict(), "action": a.to_dict()}
                    added += self._enqueue(a.key, "retrain", payload, None, now)
                else:
                    log.error(
                        "unknown action type; it is not executed",
                        type=a.type,
                        key=a.key,
                        decision=d.key,
                    )
        return added

    def _enqueue(
        self, key: str, kind: str, payload: dict[str, Any], stream: str | None, now: float
    ) -> int:
        if self.outbox.get(key) is not None:
            return 0
        if stream is not None:
            payload["stream"] = stream
            payload["after"] = self._chains.link(stream, key)
        return int(self.outbox.enqueue(key, kind, payload, now=now))

    def _notify(
        self,
        key: str,
        kind: str,
        model: str,
        receiver: str,
        alert: Alert,
        decision_key: str | None,
        *,
        now: float,
        resend: bool = False,
    ) -> int:
        payload = alert_job_payload(receiver, [alert], key)
        payload.update(model=model, decision_key=decision_key, resend=resend)
        stream = f"alert/{receiver}/{alert.fingerprint}"
        return self._enqueue(key, kind, payload, stream, now)

    def notify_unmonitored(self, model: str, reason: str, now: float | None = None) -> int:
        """Alert the receivers of ``model``'s policy that the model is not judged: its
        reference profile is missing or its detectors do not fit it (its events are only
        counted). The alert stays firing (Alertmanager gets it again every resend interval)
        until :meth:`notify_monitored`; the same reason notifies once, also across restarts."""
        import hashlib

        with self._lock:
            at = self.now() if now is None else now
            policy = self.policies.for_model(model)
            if policy is None:
                return 0
            digest = hashlib.sha256(f"{model}\n{reason}".encode()).hexdigest()[:16]
            alert = Alert(
                fingerprint=_unmonitored_fingerprint(model),
                labels={
                    "alertname": "DriftwardenModelUnmonitored",
                    "model": model,
                    "rule": "reference-profile",
                    "severity": "critical",
                },
                annotations={
                    "summary": f"{model} is not monitored: its reference profile is missing "
                    "or its policy's detectors do not fit it (events are only counted)",
                    "description": reason,
                },
                starts_at=iso_utc(at),
            )
            added = 0
            for name in sorted(self._receivers.get(policy.source, {})):
                self.book.fire(alert, receivers=[name], sent_at=at)
                current = self.book.get(alert.fingerprint) or alert
                key = f"unmonitored/{digest}/{name}"
                added += self._notify(key, "alert", model, name, current, None, now=at)
            return added

    def notify_monitored(self, model: str, now: float | None = None) -> int:
        """Resolve :meth:`notify_unmonitored`'s alert: the model is judged again."""
        with self._lock:
            at = self.now() if now is None else now
            receivers = self.book.receivers(_unmonitored_fingerprint(model))
            resolved = self.book.resolve(_unmonitored_fingerprint(model), at)
            if resolved is None:
                return 0
            added = 0
            for name in receivers:
                key = f"monitored/{resolved.fingerprint}/{name}/{at:.3f}"
                added += self._notify(key, "resolve", model, name, resolved, None, now=at)
            return added

    def notify_config_error(self, errors: Sequence[str], now: float | None = None) -> int:
        """Alert that a policy edit was refused (the last good policies stay in force).

        Goes to every receiver of the policies loaded from the files the errors name, or of
        every loaded policy when the broken file is new. The same errors alert once.
        """

        with self._lock:
            return self._notify_config_error(errors, self.now() if now is None else now)

    def _notify_config_error(self, errors: Sequence[str], now: float) -> int:
        import hashlib

        files = {e.split(":", 1)[0] for e in errors}
        chosen = [p for p in self.policies.policies if p.source in files] or list(
            self.policies.policies
        )
        digest = hashlib.sha256("\n".join(sorted(errors)).encode()).hexdigest()[:16]
        text = "\n".join(errors[:20]) + (
            f"\n… and {len(errors) - 20} more" if len(errors) > 20 else ""
        )
        added = 0
        for policy in chosen:
            for name in sorted(self._receivers.get(policy.source, {})):
                alert = Alert(
                    fingerprint=f"policy-reload-{digest}",
                    labels={
                        "alertname": "DriftwardenPolicyReloadFailed",
                        "model": policy.model,
                        "rule": "policy-reload",
                        "severity": "critical",
                    },
                    annotations={
                        "summary": f"policy edit refused; the last good policy for "
                        f"{policy.model} stays in force ({len(errors)} error(s))",
                        "description": text,
                    },
                    starts_at=iso_utc(now),
                )
                key = f"config/{digest}/{policy.source}/{name}"
                added += self._notify(key, "alert", policy.model, name, alert, None, now=now)
        return added

    def _alert(self, d: Decision, key: str, receiver: str, now: float) -> int:
        firing = d if d.status == "firing" else replace(d, status="firing")
        alert = alert_from_decision(firing, runbook_base=self.runbook_base)
        new = self.outbox.get(key) is None
        self.book.fire(alert, receivers=[receiver], sent_at=now if new else None)
        current = self.book.get(alert.fingerprint) or alert
        return self._notify(key, "alert", d.model, receiver, current, d.key, now=now)

    def _reason(self, d: Decision) -> str:
        text = f"rule {d.rule} ({d.status}) in window {d.window_start} .. {d.window_end}"
        return text + ("; " + "; ".join(d.reasons) if d.reasons else "")

    def _fallback(self, d: Decision, key: str, to: str, policy: Policy | None, now: float) -> int:
        receivers = self._rule_receivers(policy, d.rule)
        reason = self._reason(d)
        alert = self.book.raise_fallback(
            d.model,
            at=d.window_end,
            target=to,
            rule=d.rule,
            reason=reason,
            receivers=receivers,
            sent_at=now,
            runbook_base=self.runbook_base,
        )
        payload = {
            "action": "fallback",
            "model": d.model,
            "to": to,
            "rule": d.rule,
            "reason": reason,
            "decision_key": d.key,
        }
        added = self._enqueue(key, "fallback", payload, f"route/{d.model}", now)
        for r in receivers:
            added += self._notify(f"{key}/alert/{r}", "alert", d.model, r, alert, d.key, now=now)
        return added

    def _route_back(self, d: Decision, key: str, policy: Policy | None, now: float) -> int:
        fp = fallback_fingerprint(d.model)
        receivers = self.book.receivers(fp) or self._rule_receivers(policy, d.rule)
        resolved = self.book.resolve_fallback(d.model, d.window_end)
        if resolved is None:  # not in the book (lost in a crash): rebuild it
            resolved = fallback_alert(
                d.model, at=d.window_end, target="champion", rule=d.rule
            ).resolved(d.window_end)
        payload = {
            "action": "route_back",
            "model": d.model,
            "to": "champion",
            "rule": d.rule,
            "reason": self._reason(d),
            "decision_key": d.key,
        }
        added = self._enqueue(key, "route_back", payload, f"route/{d.model}", now)
        for r in receivers:
            added += self._notify(
                f"{key}/resolve/{r}", "resolve", d.model, r, resolved, d.key, now=now
            )
        return added

    # -- running jobs ------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> TickReport:
        """Enqueue due resends, then run every due job; returns what happened.

        Safe to call from a thread other than the one calling :meth:`on_decisions` and
        :meth:`state` (the daemon does): the receivers and the registry are called without
        holding the executor's lock.
        """
        with self._tick_lock:
            return self._tick(self.now() if now is None else now)

    def _tick(self, now: float) -> TickReport:
        handlers: dict[str, Callable[[dict[str, Any]], Delivery]] = {
            "alert": self._deliver,
            "resolve": self._deliver,
            "fallback": self._route,
            "route_back": self._route,
        }
        if self.retrain_launcher is not None:
            handlers["retrain"] = self._retrain
        with self._lock:
            report = TickReport(resends=self._resends(now))
        report.results = self.outbox.run_due(now, handlers)
        counts = Counter((r.kind, r.outcome) for r in report.results)
        report.counts = dict(counts)
        if self.metrics is not None:
            for (kind, outcome), n in counts.items():
                self.metrics.actions.labels(kind, outcome).inc(n)
        with self._lock:
            self._chains.prune(self._finished)
        return report

    def _finished(self, key: str) -> bool:
        # Done or dead only: a released job (its partition revoked) runs again if this replica
        # gets the partition back (adopt, ours), and what follows it must still wait for it.
        job = self.outbox.get(key)
        return job is not None and job.state in ("done", "dead")

    def _resends(self, now: float) -> int:
        due = self.book.due_resends(now, self.resend_every_s)
        added = 0
        for alert in due:
            for name in self.book.receivers(alert.fingerprint):
                rcv = self.receiver(alert.model, name)
                if rcv is None or not rcv.wants_resends:
                    continue
                last = self._chains.last(f"alert/{name}/{alert.fingerprint}")
                queued = self.outbox.get(last) if last else None
                if queued is not None and queued.state == "pending":
                    continue  # a send is still queued; it carries the current state
                key = f"resend/{alert.fingerprint}/{name}/{now:.3f}"
                added += self._notify(
                    key, "alert", alert.model, name, alert, None, now=now, resend=True
                )
        self.book.mark_sent([a.fingerprint for a in due], now)
        return added

    def _wait(self, payload: Mapping[str, Any]) -> Delivery | None:
        after = payload.get("after")
        if not after:
            return None
        job = self.outbox.get(str(after))
        if job is not None and job.state == "pending":
            return Delivery.retry(f"waiting for the earlier job {after!r} of the same stream.")
        return None

    def _deliver(self, payload: dict[str, Any]) -> Delivery:
        with self._lock:
            wait = self._wait(payload)
            if wait is not None:
                return wait
            model, name = str(payload.get("model")), str(payload.get("receiver"))
            receiver = self.receiver(model, name)
            if receiver is None:
                return Delivery.dead(
                    f"no receiver named {name!r} is configured for model {model!r}."
                )
            try:
                alerts = [Alert.from_dict(a) for a in payload.get("alerts") or []]
            except (KeyError, TypeError, ValueError) as exc:
                return Delivery.dead(f"the alert job for receiver {name!r} is malformed: {exc}")
            if payload.get("resend") and any(a.fingerprint not in self.book for a in alerts):
                return Delivery.success()  # resolved meanwhile: re-sending would revive it
        return receiver.send(alerts, key=payload.get("idempotency_key"))

    def _get_registry(self) -> RegistryLike | None:
        if self.registry_factory is None:
            return None
        if self._registry is None:
            self._registry = self.registry_factory()
        return self._registry

    def _route(self, payload: dict[str, Any]) -> Delivery:
        with self._lock:
            wait = self._wait(payload)
            if wait is not None:
                return wait
            registry = self._get_registry()
        model, to = str(payload["model"]), str(payload["to"])
        kind = str(payload.get("action") or "fallback")
        version: str | None = None
        target_model = model
        if registry is None:
            log.warning("no model registry is set; the route is only published", model=model, to=to)
        else:
            try:
                move = registry.set_serving(
                    model,
                    serving_target(to),
                    ACTOR,
                    str(payload.get("reason") or kind),
                    decision_key=payload.get("decision_key"),
                )
            except Unavailable as exc:
                return Delivery.retry(str(exc))
            except RegistryError as exc:
                return Delivery.dead(str(exc))
            version = move.version
            target_model = move.target_model or model
        record = {
            "model": model,
            "action": kind,
            "target": to,
            "target_model": target_model,
            "version": version,
            "reason": payload.get("reason"),
            "decision_key": payload.get("decision_key"),
            "at": iso_utc(round(self.now(), 3)),
        }
        try:
            self.sink.publish(
                self.routing_topic, model, orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
            )
            self.sink.flush()
        except Exception as exc:  # any sink failure: the route must be published later
            return Delivery.retry(
                f"publishing the route of model {model!r} to {self.routing_topic!r} failed: "
                f"{type(exc).__name__}: {exc}"
            )
        log.info("route published", **record)
        return Delivery.success()

    def _retrain(self, payload: dict[str, Any]) -> Delivery:
        assert self.retrain_launcher is not None  # only registered as a handler when set
        return _as_delivery(
            self.retrain_launcher(dict(payload["decision"]), dict(payload["action"]))
        )

    # -- handover between replicas (state.backend: kafka) -----------------------------------
    def enable_handover(self) -> int:
        """Partitions (so models) move between replicas: a model's actions travel with it.

        Called once at start-up, before any partition is assigned. The alert book starts
        empty and every pending job of a model is ``released``: it runs here again only if
        this replica is given the model's partition (:meth:`adopt`). Returns how many jobs
        were released.
        """
        with self._lock:
            self.book = AlertBook()
            keys = [j.key for j in self.outbox.pending() if job_model(j) is not None]
            return self.outbox.release(keys, self.now())

    def handover_state(self, models: Collection[str]) -> dict[str, Any]:
        """The active alerts and pending jobs of ``models``, for their partition's checkpoint."""
        with self._lock:
            jobs = [
                {
                    "key": j.key,
                    "kind": j.kind,
                    "payload": j.payload,
                    "created_at": j.created_at,
                    "attempts": j.attempts,
                }
                for j in self.outbox.pending()
                if job_model(j) in models
            ]
            jobs.sort(key=lambda j: (j["created_at"], j["key"]))
            return {
                "version": HANDOVER_VERSION,
                "alerts": self.book.to_state(models),
                "jobs": jobs,
            }

    def adopt(self, models: Collection[str], state: Mapping[str, Any] | None, *, ours: bool) -> int:
        """Take ``models`` over with their partition's checkpoint; returns jobs now pending.

        ``ours``: this replica wrote that checkpoint (a restart), so its own released jobs of
        these models — including any enqueued after the checkpoint — run again. Otherwise
        the checkpoint is the truth: its jobs run here and released copies of jobs it no longer
        lists stay released (the other replica finished them). Jobs it lists that are done here
        stay done.
        """
        with self._lock:
            now = self.now()
            n = 0
            if ours:
                keys = [j.key for j in self.outbox.jobs(["released"]) if job_model(j) in models]
                n += self.outbox.revive(keys, now)
            if not state:
                return n
            if state.get("version") != HANDOVER_VERSION:
                raise StateVersionError(
                    f"the handed-over actions have version {state.get('version')!r}; this "
                    f"version of driftwarden reads version {HANDOVER_VERSION}."
                )
            self.book.take_models(models, state["alerts"])
            for job in state["jobs"]:
                if _model_of(job["key"], job["payload"]) not in models:
                    continue  # another model's: its own partition hands it over
                if self.outbox.adopt(job, now):
                    n += 1
                    stream = job["payload"].get("stream")
                    if stream:
                        self._chains.adopt(
                            str(stream), str(job["key"]), job["payload"].get("after")
                        )
            if n:
                log.info("actions taken over", models=sorted(models), pending=n)
            return n

    def drop_alerts(self, models: Collection[str]) -> None:
        """Stop re-sending the active alerts of ``models``: another replica holds them now (a
        model whose events moved partition); their pending jobs still run here."""
        with self._lock:
            self.book.drop_models(models)

    def release(self, models: Collection[str]) -> int:
        """Another replica takes ``models`` (their checkpoint carries their pending jobs)."""
        with self._lock:
            keys = [j.key for j in self.outbox.pending() if job_model(j) in models]
            self.book.drop_models(models)
            return self.outbox.release(keys, self.now())

    # -- checkpoint --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The alert book, versioned and JSON-ready, for the daemon's checkpoint."""
        with self._lock:
            return {"version": ACTIONS_STATE_VERSION, "alerts": self.book.to_state()}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`; refuses a version it does not know."""
        if state.get("version") != ACTIONS_STATE_VERSION:
            raise StateVersionError(
                f"the action executor state has version {state.get('version')!r}; this "
                f"version of driftwarden reads version {ACTIONS_STATE_VERSION}."
            )
        with self._lock:
            self.book = AlertBook.from_state(state["alerts"])

    def close(self) -> None:
        """Close the receivers and the outbox."""
        for rs in self._receivers.values():
            for r in rs.values():
                r.close()
        self.outbox.close()


def _unmonitored_fingerprint(model: str) -> str:
    """The fingerprint of a model's DriftwardenModelUnmonitored alert (one per model)."""
    import hashlib

    return "unmonitored-" + hashlib.sha256(model.encode()).hexdigest()[:16]
