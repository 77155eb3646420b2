"""The parsed policy and the decision types: what the loader builds and the evaluator emits.

Everything here is a frozen dataclass. A :class:`Policy` is built only by
:func:`driftwarden.policies.loader.load_policy_file`, which has already checked it; a
:class:`Decision` is built by :func:`driftwarden.policies.evaluator.evaluate` and carries the
:class:`Action` objects the daemon executes (idempotently, by ``Action.key``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .expr import Expr

if TYPE_CHECKING:
    from driftwarden.detectors.base import Detector

__all__ = [
    "Action",
    "Decision",
    "DetectorSpec",
    "Policy",
    "PolicyError",
    "PolicySet",
    "ReceiverSpec",
    "RetrainLimit",
    "RetrainSchedule",
    "RuleSpec",
    "WindowInfo",
    "WindowSpec",
    "expand_env",
    "fingerprint",
    "iso_utc",
]

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
GLOB_CHARS = frozenset("*?[")


class PolicyError(ValueError):
    """A policy (file, set or state) is invalid; ``errors`` holds every problem, one a line."""

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


_MIN_TS = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_MAX_TS = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def iso_utc(ts: float) -> str:
    """Epoch seconds → ISO-8601 UTC (``2026-11-26T10:15:00Z``; milliseconds only if needed),
    clamped to the years 1 to 9999 (a window of an event near either end of the range events
    may have can begin or end beyond it)."""
    ts = min(max(ts, _MIN_TS), _MAX_TS)
    dt = datetime.fromtimestamp(ts, tz=UTC)
    # not strftime("%Y"): glibc writes year 1 as "1", which no ISO-8601 parser reads back
    text = dt.isoformat(timespec="seconds").removesuffix("+00:00")
    if ts == int(ts):
        return text + "Z"
    return f"{text}.{dt.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """ISO-8601 (``Z`` or an offset; naive means UTC) → epoch seconds."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def fingerprint(model: str, rule: str) -> str:
    """Stable alert identity of (model, rule): 16 hex digits of a SHA-256."""
    return hashlib.sha256(f"{model}\x00{rule}".encode()).hexdigest()[:16]


def expand_env(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Replace every ``${VAR}`` in strings (recursively) from ``env``; ``$$`` is a literal ``$``.

    Raises :class:`PolicyError` naming every variable that is not set.
    """
    missing: list[str] = []

    def one(s: str) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1)
            if name not in env:
                missing.append(name)
                return m.group(0)
            return env[name]

        return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, s)

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return one(v)
        if isinstance(v, Mapping):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    out = walk(value)
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise PolicyError(
            f"{where}: environment variable(s) not set: {names}."
            if where
            else f"environment variable(s) not set: {names}."
        )
    return out


@dataclass(frozen=True)
class WindowSpec:
    """How windows close: by event count or by event-time duration (one of the two).

    ``labeled_*`` is the window of the labeled stream (predictions joined with labels); both
    ``None`` means it uses the same window as predictions.
    """

    events: int | None = None
    duration_s: float | None = None
    labeled_events: int | None = None
    labeled_duration_s: float | None = None
    allowed_lateness_s: float = 0.0


@dataclass(frozen=True)
class DetectorSpec:
    """One detector entry: its name in the policy, its ``type`` and its keyword params."""

    name: str
    type: str
    params: Mapping[str, Any] = field(default_factory=dict)
    #: The entry's line in the policy file (0: unknown); not part of equality.
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class RuleSpec:
    """One rule. ``actions`` are ``(type, params)`` pairs: alert/fallback/retrain.

    ``recover_after``: consecutive clean windows before the rule resolves (default 3 when the
    rule falls back, else 1).
    """

    name: str
    when: Expr
    when_text: str
    severity: str = "warning"
    for_windows: int = 1
    cooldown_s: float = 0.0
    actions: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    recover_after: int = 1

    @property
    def alert_receivers(self) -> tuple[str, ...]:
        """The receivers this rule alerts, in policy order."""
        return tuple(p["receiver"] for t, p in self.actions if t == "alert")

    @property
    def falls_back(self) -> bool:
        """Whether the rule has a ``fallback`` action."""
        return any(t == "fallback" for t, _ in self.actions)


@dataclass(frozen=True)
class ReceiverSpec:
    """A named alert receiver; ``${ENV}`` references in params are kept unexpanded."""

    name: str
    type: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def expand(self, env: Mapping[str, str]) -> ReceiverSpec:
        """A copy with ``${VAR}`` replaced from ``env`` (:class:`PolicyError` if one is unset)."""
        params = expand_env(dict(self.params), env, where=f"receiver {self.name!r}")
        return ReceiverSpec(self.name, self.type, params)


@dataclass(frozen=True)
class RetrainLimit:
    """At most ``max`` retrains per model per ``per_s`` seconds of event time."""

    max: int = 1
    per_s: float = 86400.0


@dataclass(frozen=True)
class RetrainSchedule:
    """Retrain on a clock: a crontab (UTC) and the rule whose retrain action to use."""

    cron: str
    rule: str | None = None


@dataclass(frozen=True)
class Policy:
    """One policy file, checked. ``reference`` is ``models:/…`` or ``file:<absolute path>``."""

    source: str
    model: str
    reference: str
    window: WindowSpec
    detectors: tuple[DetectorSpec, ...]
    rules: tuple[RuleSpec, ...]
    receivers: Mapping[str, ReceiverSpec] = field(default_factory=dict)
    retrain_limit: RetrainLimit = field(default_factory=RetrainLimit)
    description: str = ""
    schedule: RetrainSchedule | None = None

    @property
    def is_glob(self) -> bool:
        """Whether ``model`` is a glob pattern rather than an exact name."""
        return any(c in GLOB_CHARS for c in self.model)

    def matches(self, model: str) -> bool:
        """Whether this policy applies to ``model`` (exact name or glob, case-sensitive)."""
        return fnmatch.fnmatchcase(model, self.model)

    def reference_for(self, model: str) -> str:
        """The reference of ``model``: ``{model}`` in a ``models:/`` URI is replaced."""
        return self.reference.replace("{model}", model)

    @property
    def reference_path(self) -> Path | None:
        """The profile file of a ``file:`` reference, else ``None``."""
        return Path(self.reference[5:]) if self.reference.startswith("file:") else None

    def detector_kinds(self) -> dict[str, str]:
        """Detector name → type."""
        return {d.name: d.type for d in self.detectors}

    def build_detectors(
        self, profile: Any, detector_types: Mapping[str, Any] | None = None
    ) -> dict[str, Detector]:
        """Fresh detector instances for one model, keyed by their policy name; a detector that
        does not fit ``profile`` (a feature or slice it lacks) raises :class:`PolicyError` at
        the entry's line.

        ``detector_types`` (type name → Detector class) defaults to the detectors' registry.
        """
        from driftwarden.detectors.base import registry

        reg = registry() if detector_types is None else detector_types
        out: dict[str, Detector] = {}
        for d in self.detectors:
            if d.type not in reg:
                raise PolicyError(
                    f"{self.source}: detector {d.name!r} has type {d.type!r}, which is not "
                    f"registered; known types: {', '.join(sorted(reg))}."
                )
            cls: Any = reg[d.type]
            try:
                out[d.name] = cls(d.name, profile, **dict(d.params))
            except ValueError as exc:  # the detector does not fit this profile
                where = f"{self.source}:{d.line}" if d.line else self.source
                model = getattr(profile, "model", None) or self.model
                raise PolicyError(
                    f"{where}: detector {d.name!r} does not fit the reference profile of "
                    f"{model!r}: {exc}"
                ) from None
        return out


@dataclass(frozen=True)
class PolicySet:
    """Every loaded policy; :meth:`for_model` picks one (an exact name beats a glob)."""

    policies: tuple[Policy, ...] = ()

    def for_model(self, model: str) -> Policy | None:
        """The policy of ``model``, or ``None``; two matching globs raise :class:`PolicyError`."""
        for p in self.policies:
            if not p.is_glob and p.model == model:
                return p
        hits = [p for p in self.policies if p.is_glob and p.matches(model)]
        if len(hits) > 1:
            raise PolicyError(
                f"model {model!r} matches more than one policy glob: "
                + ", ".join(f"{p.model!r} ({p.source})" for p in hits)
                + "."
            )
        return hits[0] if hits else None

    def __len__(self) -> int:
        return len(self.policies)


@dataclass(frozen=True)
class WindowInfo:
    """The window a set of results belongs to: its index and its bounds (ISO and epoch)."""

    index: int
    start: str
    end: str
    start_ts: float
    end_ts: float

    @classmethod
    def from_epoch(cls, index: int, start_ts: float, end_ts: float) -> WindowInfo:
        """Build from epoch seconds (ISO strings are derived)."""
        return cls(index, iso_utc(start_ts), iso_utc(end_ts), float(start_ts), float(end_ts))


@dataclass(frozen=True)
class Action:
    """Something the daemon must do, with an idempotency ``key``.

    ``type``: ``alert`` | ``resolve`` (params ``{"receiver": name}``), ``fallback``
    (``{"to": "previous" | model}``), ``route_back`` (``{}``), ``retrain`` (the policy's
    retrain mapping: ``trainer``, ``gates``, ``promote``).
    """

    type: str
    params: Mapping[str, Any]
    key: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"type": self.type, "params": _plain(self.params), "key": self.key}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Action:
        """Inverse of :meth:`to_dict`."""
        return cls(str(d["type"]), dict(d.get("params") or {}), str(d["key"]))


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one rule in one window.

    ``status``: ``firing`` | ``resolved`` | ``suppressed`` (a silence, the fallback mute or a
    cooldown held its notifications back; ``reasons`` says which). The daemon executes
    ``actions`` whatever the status: suppression has already removed what must not run.
    """

    model: str
    rule: str
    severity: str
    status: str
    window_start: str
    window_end: str
    window_index: int
    detectors: Mapping[str, bool]
    actions: tuple[Action, ...]
    evidence: Mapping[str, Any]
    reasons: tuple[str, ...]
    fingerprint: str
    key: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with a deterministic key order."""
        return {
            "model": self.model,
            "rule": self.rule,
            "severity": self.severity,
            "status": self.status,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "window_index": self.window_index,
            "detectors": {k: bool(self.detectors[k]) for k in sorted(self.detectors)},
            "actions": [a.to_dict() for a in self.actions],
            "evidence": {k: _plain(self.evidence[k]) for k in sorted(self.evidence)},
            "reasons": list(self.reasons),
            "fingerprint": self.fingerprint,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        """Inverse of :meth:`to_dict`."""
        return cls(
            model=str(d["model"]),
            rule=str(d["rule"]),
            severity=str(d["severity"]),
            status=str(d["status"]),
            window_start=str(d["window_start"]),
            window_end=str(d["window_end"]),
            window_index=int(d["window_index"]),
            detectors={str(k): bool(v) for k, v in (d.get("detectors") or {}).items()},
            actions=tuple(Action.from_dict(a) for a in d.get("actions") or ()),
            evidence=dict(d.get("evidence") or {}),
            reasons=tuple(str(r) for r in d.get("reasons") or ()),
            fingerprint=str(d["fingerprint"]),
            key=str(d["key"]),
        )


def _plain(v: Any) -> Any:
    """Mappings → dicts with sorted keys, tuples → lists (JSON-ready, deterministic)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(v[k]) for k in sorted(v, key=str)}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
