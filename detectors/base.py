"""The seams every detector shares: its result, its base class and the registry.

A detector is pure: no I/O, no clock, no Kafka. Its constructor takes the configuration (the
detector's name in the policy, the reference profile, and its own keyword parameters),
``update(batch)`` changes its state with a :class:`~driftwarden.detectors.batch.Batch`,
``result()`` reads a frozen :class:`DetectorResult` for the current window, ``reset()`` starts
a new window. ``state_dict()`` / ``load_state()`` round-trip its state as JSON-ready data
carrying a ``version``; a version it does not know is refused with a plain sentence.

Which events a detector sees is its ``stream``: ``"predictions"`` (every prediction event) or
``"labeled"`` (predictions joined with their labels).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from .batch import Batch
    from .profile import ReferenceProfile

__all__ = [
    "Detector",
    "DetectorResult",
    "StateVersionError",
    "register",
    "registry",
    "detector_class",
]

Stream = Literal["predictions", "labeled"]


class StateVersionError(ValueError):
    """A serialised state carries a version this code does not know."""


@dataclass(frozen=True)
class DetectorResult:
    """What one detector concluded about one window.

    ``statistic`` is the detector's headline number (e.g. the largest PSI, the number of
    features flagged), compared with ``threshold``; ``p_value`` is set where the detector runs
    a test (after multiple-testing correction when it tests many things); ``triggered`` is the
    verdict. ``evidence`` is JSON-ready data for on-call: at least ``"top"``, a short list of
    the contributing features or slices, largest first.
    """

    name: str
    kind: str
    triggered: bool
    statistic: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    n: int = 0
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used in decisions and checkpoints)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "triggered": self.triggered,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "p_value": self.p_value,
            "n": self.n,
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetectorResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            triggered=bool(d["triggered"]),
            statistic=d.get("statistic"),
            threshold=d.get("threshold"),
            p_value=d.get("p_value"),
            n=int(d.get("n", 0)),
            evidence=dict(d.get("evidence") or {}),
        )


class Detector(ABC):
    """Base class of every detector (see the module docstring for the contract).

    Subclasses set ``kind`` (the ``type`` in policy YAML), ``stream``, ``state_version`` and
    ``params_schema`` (a JSON Schema object for their keyword parameters, which the policy
    loader uses for strict validation), and implement the abstract methods.
    """

    kind: ClassVar[str]
    stream: ClassVar[Stream] = "predictions"
    state_version: ClassVar[int] = 1
    params_schema: ClassVar[Mapping[str, Any]] = {"type": "object", "properties": {}}

    def __init__(self, name: str, profile: ReferenceProfile | None = None) -> None:
        self.name = name
        self.profile = profile

    @abstractmethod
    def update(self, batch: Batch) -> None:
        """Fold a micro-batch into the current window's state."""

    @abstractmethod
    def result(self) -> DetectorResult:
        """The verdict on the current window so far (does not change state)."""

    @abstractmethod
    def reset(self) -> None:
        """Start a new window (streaming detectors keep their long-run state)."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """The detector's state as JSON-ready data, without the version."""

    @abstractmethod
    def _load(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`_state` produced."""

    def state_dict(self) -> dict[str, Any]:
        """Versioned, JSON-ready state."""
        return {"kind": self.kind, "version": self.state_version, "state": self._state()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; refuses another kind or an unknown version."""
        if state.get("kind") != self.kind:
            raise StateVersionError(
                f"detector {self.name!r} is of type {self.kind!r} but the saved state is of "
                f"type {state.get('kind')!r}."
            )
        if state.get("version") != self.state_version:
            raise StateVersionError(
                f"detector {self.name!r} ({self.kind}) cannot read state version "
                f"{state.get('version')!r}; this version of driftwarden reads version "
                f"{self.state_version}."
            )
        self._load(state["state"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_REGISTRY: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make a detector available to policies under ``cls.kind``."""
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise ValueError(f"two detectors claim the type {cls.kind!r}")
    _REGISTRY[cls.kind] = cls
    return cls


def registry() -> Mapping[str, type[Detector]]:
    """Every registered detector type, by its policy ``type`` name."""
    from . import _load_builtin  # noqa: F401  (registers the built-in detectors)

    return dict(_REGISTRY)


def detector_class(kind: str) -> type[Detector]:
    """The detector class for a policy ``type``; ``KeyError`` names the known types."""
    reg = registry()
    if kind not in reg:
        raise KeyError(f"unknown detector type {kind!r}; known types: {', '.join(sorted(reg))}")
    return reg[kind]
