"""The pure evaluator: one window's detector results + policy state → decisions + new state.

No I/O, no clock, no randomness: time is the event time the caller passes (``now``), so a
replay gives the same decisions as live operation. The input state is never modified.

Semantics, per rule and window:

* **for** — the condition must hold for ``for`` consecutive windows before the rule fires.
* **firing / dedup** — a firing rule emits one ``firing`` decision; while it stays firing
  nothing more is emitted (except notifications held back earlier by a silence or the
  fallback mute, sent once those end). When the condition has been clear for
  ``recover_after`` consecutive windows (default 1; 3 for a rule that falls back) one
  ``resolved`` decision is emitted with a ``resolve`` action for every receiver that was
  actually alerted (a silenced alert was never sent, so it is not resolved either).
* **cooldown** — after a rule fired it does not fire again until ``cooldown`` of event time
  has passed since it fired; the first time it is held back a ``suppressed`` decision says so.
* **data quality outranks everything** — if any ``data_quality`` detector of the policy
  triggered in this window, every ``retrain`` action is removed and ``reasons`` names the
  detector(s).
* **retrain limit** — at most ``retrain_limit.max`` retrains per model per
  ``retrain_limit.per`` of event time; a retrain over the limit is removed, with a reason.
* **fallback** — a firing rule with a ``fallback`` action puts the model in fallback (one
  owner at a time). While it lasts, the drift-type rules — those whose ``when`` names no
  ``data_quality`` detector outside a ``not`` — are muted (the owner excepted): their alerts are held back and their
  decision is ``suppressed``. When the owner resolves, its decision also carries
  ``route_back``. Rules that fall back are evaluated first, so the mute applies from the very
  window the fallback starts.
* **silences** — a :class:`~.silences.Muter` may hold back a rule's alerts (status
  ``suppressed``, the reason names the silence); fallback and retrain still happen.
* **withheld retrain** — a retrain that data quality or the rate limit removed when its rule
  fired is issued in a later window where the rule still fires, its condition holds and
  neither applies any more (once per firing).
* **a rule that leaves the policy** (hot reload; a renamed rule is a new one) while firing
  gets one ``resolved`` decision: its alerts are resolved and, if it put the model in
  fallback, the model routes back. Nothing else would end them.

The daemon executes the ``actions`` of every decision, whatever its status.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from driftwarden.detectors.base import StateVersionError

from .expr import positive_names
from .model import Action, Decision, Policy, RuleSpec, WindowInfo, fingerprint, iso_utc

if TYPE_CHECKING:
    from driftwarden.detectors.base import DetectorResult

    from .silences import Muter

__all__ = ["PolicyState", "RuleState", "STATE_VERSION", "evaluate"]

STATE_VERSION = 1


@dataclass
class RuleState:
    """What the evaluator remembers about one rule of one model."""

    streak: int = 0  # consecutive windows with the condition true
    clean: int = 0  # consecutive windows with the condition false while firing
    firing: bool = False
    fired_at: float | None = None  # event time of the last firing (cooldown runs from it)
    fired_window: int | None = None
    notified: tuple[str, ...] = ()  # receivers actually alerted for the current firing
    held: bool = False  # this streak was already reported as held back by the cooldown
    #: this firing's retrain was withheld (data quality, rate limit): issued once it is not
    retrain_due: bool = False
    severity: str | None = None  # of the current firing (a rule removed meanwhile resolves)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "streak": self.streak,
            "clean": self.clean,
            "firing": self.firing,
            "fired_at": self.fired_at,
            "fired_window": self.fired_window,
            "notified": list(self.notified),
            "held": self.held,
            "retrain_due": self.retrain_due,
            "severity": self.severity,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuleState:
        """Inverse of :meth:`to_dict`."""
        return cls(
            streak=int(d["streak"]),
            clean=int(d["clean"]),
            firing=bool(d["firing"]),
            fired_at=None if d.get("fired_at") is None else float(d["fired_at"]),
            fired_window=None if d.get("fired_window") is None else int(d["fired_window"]),
            notified=tuple(str(r) for r in d.get("notified") or ()),
            held=bool(d.get("held", False)),
            retrain_due=bool(d.get("retrain_due", False)),
            severity=None if d.get("severity") is None else str(d["severity"]),
        )


@dataclass
class PolicyState:
    """The evaluator's memory for one model: JSON-serialisable, versioned (checkpoints).

    ``fallback`` is ``None`` or ``{"rule", "to", "since", "window_index"}``; ``retrains``
    holds the event times of retrains issued within the rate-limit period.
    """

    rules: dict[str, RuleState] = field(default_factory=dict)
    retrains: tuple[float, ...] = ()
    fallback: dict[str, Any] | None = None
    last_window: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with a ``version``."""
        return {
            "version": STATE_VERSION,
            "last_window": self.last_window,
            "rules": {k: self.rules[k].to_dict() for k in sorted(self.rules)},
            "retrains": list(self.retrains),
            "fallback": None if self.fallback is None else dict(self.fallback),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyState:
        """Inverse of :meth:`to_dict`; refuses a version it does not know."""
        version = d.get("version") if isinstance(d, Mapping) else None
        if version != STATE_VERSION:
            raise StateVersionError(
                f"the policy state has version {version!r}; this version of driftwarden reads "
                f"version {STATE_VERSION}."
            )
        return cls(
            rules={str(k): RuleState.from_dict(v) for k, v in (d.get("rules") or {}).items()},
            retrains=tuple(float(t) for t in d.get("retrains") or ()),
            fallback=None if d.get("fallback") is None else dict(d["fallback"]),
            last_window=None if d.get("last_window") is None else int(d["last_window"]),
        )

    @property
    def in_fallback(self) -> bool:
        """Whether the model is currently routed to its fallback."""
        return self.fallback is not None


_LATER = " It follows in a later window where the rule still fires, once nothing withholds it."


def _drift_type(rule: RuleSpec, kinds: Mapping[str, str]) -> bool:
    """Muted during fallback: rules no data-quality detector can make fire.

    That is, no ``data_quality`` detector appears in ``when`` outside a ``not``:
    ``(drift or recall) and not quality`` is a drift rule, ``quality`` is not.
    """
    return not any(kinds.get(n) == "data_quality" for n in positive_names(rule.when))


def evaluate(
    policy: Policy,
    model: str,
    window: WindowInfo,
    results: Mapping[str, DetectorResult],
    state: PolicyState,
    now: float,
    muter: Muter | None = None,
) -> tuple[list[Decision], PolicyState]:
    """Decide for one closed window of ``model`` (see the module docstring for semantics).

    ``now`` is event time (normally ``window.end_ts``). A window whose index is not after the
    last one evaluated is ignored (replay after a restore), returning no decisions.
    """
    st = copy.deepcopy(state)
    if st.last_window is not None and window.index <= st.last_window:
        return [], st
    st.last_window = window.index

    kinds = policy.detector_kinds()
    triggered = {
        d.name: bool(results[d.name].triggered) if d.name in results else False
        for d in policy.detectors
    }
    dq_fired = sorted(n for n, k in kinds.items() if k == "data_quality" and triggered[n])
    # Forget rules that left the policy (hot reload), keep the others' memory.
    names = {r.name for r in policy.rules}
    left = {n: rs for n, rs in sorted(st.rules.items()) if n not in names}
    st.rules = {r.name: st.rules.get(r.name, RuleState()) for r in policy.rules}
    st.retrains = tuple(t for t in st.retrains if now - t < policy.retrain_limit.per_s)

    ctx = _Ctx(policy, model, window, results, st, now, muter, kinds, triggered, dq_fired)
    # A rule that left while firing (removed, or renamed: a new rule to the evaluator) ends
    # its firing here: nothing else would resolve its alerts or route the model back.
    retired = [ctx.retire(n, rs) for n, rs in left.items() if rs.firing]
    if st.fallback is not None and st.fallback["rule"] not in names:
        retired.append(ctx.retire(str(st.fallback["rule"]), RuleState(firing=True)))
    order = sorted(range(len(policy.rules)), key=lambda i: not policy.rules[i].falls_back)
    out: dict[int, Decision] = {}
    for i in order:
        d = ctx.rule(policy.rules[i])
        if d is not None:
            out[i] = d
    return retired + [out[i] for i in sorted(out)], st


@dataclass
class _Ctx:
    policy: Policy
    model: str
    window: WindowInfo
    results: Mapping[str, DetectorResult]
    st: PolicyState
    now: float
    muter: Muter | None
    kinds: Mapping[str, str]
    triggered: Mapping[str, bool]
    dq_fired: list[str]

    def rule(self, rule: RuleSpec) -> Decision | None:
        rs = self.st.rules[rule.name]
        cond = rule.when.evaluate(self.results)
        if cond:
            rs.streak += 1
            rs.clean = 0
        else:
            rs.streak = 0
            rs.held = False
            if rs.firing:
                rs.clean += 1

        if rs.firing:
            if not cond and rs.clean >= rule.recover_after:
                return self.resolve(rule, rs)
            if cond:
                return self.pending(rule, rs)
            return None
        if not cond or rs.streak < rule.for_windows:
            return None
        if rs.fired_at is not None and self.now - rs.fired_at < rule.cooldown_s:
            if rs.held:
                return None
            rs.held = True
            until = iso_utc(rs.fired_at + rule.cooldown_s)
            return self.decision(
                rule,
                "suppressed",
                [],
                [
                    f"held back by the cooldown: the rule last fired at {iso_utc(rs.fired_at)} and "
                    f"may fire again from {until}."
                ],
            )
        return self.fire(rule, rs)

    def mutes(self, rule: RuleSpec) -> list[str]:
        reasons = []
        if self.muter is not None:
            why = self.muter.mutes(self.model, rule.name, self.now)
            if why:
                reasons.append(f"alerts held back: {why}.")
        fb = self.st.fallback
        if fb is not None and fb["rule"] != rule.name and _drift_type(rule, self.kinds):
            reasons.append(
                f"alerts muted: the model is in fallback to {fb['to']!r} since {fb['since']} "
                f"(rule {fb['rule']!r}); drift alerts stay muted while it lasts."
            )
        return reasons

    def fire(self, rule: RuleSpec, rs: RuleState) -> Decision:
        muted = self.mutes(rule)
        reasons = list(muted)
        actions: list[Action] = []
        notified: list[str] = []
        retrain_due = False
        for t, p in rule.actions:
            if t == "alert":
                if not muted:
                    actions.append(
                        self.action(rule, "alert", {"receiver": p["receiver"]}, p["receiver"])
                    )
                    notified.append(p["receiver"])
            elif t == "fallback":
                fb = self.st.fallback
                if fb is not None:
                    reasons.append(
                        f"fallback not repeated: the model is already in fallback to "
                        f"{fb['to']!r} since {fb['since']} (rule {fb['rule']!r})."
                    )
                    continue
                self.st.fallback = {
                    "rule": rule.name,
                    "to": str(p["to"]),
                    "since": self.window.end,
                    "window_index": self.window.index,
                }
                actions.append(self.action(rule, "fallback", {"to": p["to"]}, str(p["to"])))
            elif t == "retrain":
                why = self.retrain_withheld()
                if why:
                    reasons.append(why + _LATER)
                    retrain_due = True
                    continue
                self.st.retrains = (*self.st.retrains, self.now)
                actions.append(self.action(rule, "retrain", dict(p), str(p.get("trainer"))))
        rs.firing = True
        rs.fired_at = self.now
        rs.fired_window = self.window.index
        rs.clean = 0
        rs.notified = tuple(notified)
        rs.retrain_due = retrain_due
        rs.severity = rule.severity
        return self.decision(rule, "suppressed" if muted else "firing", actions, reasons)

    def retrain_withheld(self) -> str | None:
        if self.dq_fired:
            names = ", ".join(repr(n) for n in self.dq_fired)
            return (
                f"retrain withheld: data-quality detector {names} fired in this window; "
                "driftwarden never retrains on broken input."
            )
        lim = self.policy.retrain_limit
        if len(self.st.retrains) >= lim.max:
            last = f" (last at {iso_utc(self.st.retrains[-1])})" if self.st.retrains else ""
            return (
                f"retrain withheld: the limit of {lim.max} retrain(s) per "
                f"{_human(lim.per_s)} for this model is reached{last}."
            )
        return None

    def pending(self, rule: RuleSpec, rs: RuleState) -> Decision | None:
        """Still firing (its condition holds): send alerts that a silence or the fallback mute
        held back earlier, and the retrain that data quality or the rate limit withheld once
        neither does any more."""
        actions: list[Action] = []
        reasons: list[str] = []
        todo = [r for r in rule.alert_receivers if r not in rs.notified]
        if todo and not self.mutes(rule):
            rs.notified = (*rs.notified, *todo)
            actions += [self.action(rule, "alert", {"receiver": r}, r) for r in todo]
            reasons.append(
                "still firing and no longer muted: sending the alerts held back earlier."
            )
        if rs.retrain_due and self.retrain_withheld() is None:
            rs.retrain_due = False
            for t, p in rule.actions:
                if t == "retrain":
                    self.st.retrains = (*self.st.retrains, self.now)
                    actions.append(self.action(rule, "retrain", dict(p), str(p.get("trainer"))))
            reasons.append(
                "still firing, and the retrain withheld when it fired is no longer withheld: "
                "retraining now."
            )
        if not actions:
            return None
        return self.decision(rule, "firing", actions, reasons)

    def resolve(self, rule: RuleSpec, rs: RuleState) -> Decision:
        actions = [self.action(rule, "resolve", {"receiver": r}, r) for r in rs.notified]
        reasons = [f"the condition has been clear for {rs.clean} window(s)."]
        fb = self.st.fallback
        if fb is not None and fb["rule"] == rule.name:
            actions.append(self.action(rule, "route_back", {}, str(fb["to"])))
            reasons.append(f"routing back from the fallback to {fb['to']!r} (since {fb['since']}).")
            self.st.fallback = None
        rs.firing = False
        rs.notified = ()
        rs.clean = 0
        rs.retrain_due = False
        return self.decision(rule, "resolved", actions, reasons)

    def retire(self, name: str, rs: RuleState) -> Decision:
        """The ``resolved`` decision of a rule that left the policy while firing: its alerts
        resolved, and the model routed back if that rule put it in fallback."""
        key = f"{self.model}/{name}/{self.window.end}"
        actions = [Action("resolve", {"receiver": r}, f"{key}/resolve/{r}") for r in rs.notified]
        reasons = [
            f"rule {name!r} is no longer in the policy (reloaded) and was firing: its firing ends "
            "here."
        ]
        fb = self.st.fallback
        if fb is not None and fb["rule"] == name:
            actions.append(Action("route_back", {}, f"{key}/route_back/{fb['to']}"))
            reasons.append(f"routing back from the fallback to {fb['to']!r} (since {fb['since']}).")
            self.st.fallback = None
        return Decision(
            model=self.model,
            rule=name,
            severity=rs.severity or "info",
            status="resolved",
            window_start=self.window.start,
            window_end=self.window.end,
            window_index=self.window.index,
            detectors=dict(sorted(self.triggered.items())),
            actions=tuple(actions),
            evidence={},
            reasons=tuple(reasons),
            fingerprint=fingerprint(self.model, name),
            key=key,
        )

    def action(self, rule: RuleSpec, kind: str, params: Mapping[str, Any], target: str) -> Action:
        key = f"{self.model}/{rule.name}/{self.window.end}/{kind}/{target}"
        return Action(kind, dict(params), key)

    def decision(
        self, rule: RuleSpec, status: str, actions: list[Action], reasons: list[str]
    ) -> Decision:
        shown = sorted(
            n
            for n in self.results
            if n in self.triggered and (self.triggered[n] or n in rule.when.names())
        )
        return Decision(
            model=self.model,
            rule=rule.name,
            severity=rule.severity,
            status=status,
            window_start=self.window.start,
            window_end=self.window.end,
            window_index=self.window.index,
            detectors=dict(sorted(self.triggered.items())),
            actions=tuple(actions),
            evidence={n: self.results[n].to_dict() for n in shown},
            reasons=tuple(reasons),
            fingerprint=fingerprint(self.model, rule.name),
            key=f"{self.model}/{rule.name}/{self.window.end}",
        )


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
