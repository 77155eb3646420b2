"""Silences: time-bounded mutes of a model/rule glob, kept in a small JSON document.

A silenced rule still evaluates and still acts (fallback, retrain); only its notifications
(``alert`` actions) are held back, and its decision says which silence did it. The evaluator
sees silences through the one-method :class:`Muter` interface; the CLI edits the store with
:func:`add_silence` / :func:`expire_silence`.

Store format (version 1)::

    {"version": 1, "silences": [{"id": "...", "model": "churn*", "rule": "*",
      "starts_at": "2026-11-26T10:00:00Z", "ends_at": "2026-11-26T12:00:00Z",
      "created_by": "alice", "comment": "pipeline fix in progress"}]}

The document lives in a file (a path: one daemon's ``state.dir``) or, shared by every replica,
as one unit of a keyed document store (:class:`SilenceUnit`; the daemon's is a compacted Kafka
topic of its own, ``kafka.topics.silences``). Every function taking ``store`` accepts either.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from .model import PolicyError, iso_utc, parse_iso

__all__ = [
    "Muter",
    "Silence",
    "SilenceSet",
    "STORE_VERSION",
    "SilenceUnit",
    "add_silence",
    "expire_silence",
    "load_silences",
    "muter",
    "save_silences",
]

STORE_VERSION = 1


class Muter(Protocol):
    """Anything that can hold back a rule's notifications: returns the reason, or ``None``."""

    def mutes(self, model: str, rule: str, now: float) -> str | None:
        """Why (model, rule) is muted at event time ``now``, or ``None``."""
        ...


@dataclass(frozen=True)
class Silence:
    """Mute rules matching ``rule`` of models matching ``model`` (globs) during [start, end)."""

    id: str
    model: str
    rule: str
    starts_at: float
    ends_at: float
    created_by: str
    comment: str = ""

    def active(self, now: float) -> bool:
        """Whether the silence is in force at ``now`` (epoch seconds)."""
        return self.starts_at <= now < self.ends_at

    def matches(self, model: str, rule: str) -> bool:
        """Whether the silence covers (model, rule)."""
        return fnmatch.fnmatchcase(model, self.model) and fnmatch.fnmatchcase(rule, self.rule)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as ISO-8601 UTC)."""
        return {
            "id": self.id,
            "model": self.model,
            "rule": self.rule,
            "starts_at": iso_utc(self.starts_at),
            "ends_at": iso_utc(self.ends_at),
            "created_by": self.created_by,
            "comment": self.comment,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Silence:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=str(d["id"]),
            model=str(d.get("model", "*")),
            rule=str(d.get("rule", "*")),
            starts_at=parse_iso(str(d["starts_at"])),
            ends_at=parse_iso(str(d["ends_at"])),
            created_by=str(d.get("created_by", "")),
            comment=str(d.get("comment", "")),
        )


@dataclass(frozen=True)
class SilenceSet:
    """A group of silences acting as one :class:`Muter`."""

    silences: tuple[Silence, ...] = ()

    def mutes(self, model: str, rule: str, now: float) -> str | None:
        """The first active, matching silence as a plain sentence, or ``None``."""
        for s in sorted(self.silences, key=lambda s: s.id):
            if s.active(now) and s.matches(model, rule):
                why = f": {s.comment}" if s.comment else ""
                return (
                    f"silenced by {s.id} (created by {s.created_by or 'unknown'}, until "
                    f"{iso_utc(s.ends_at)}){why}"
                )
        return None


class DocumentStore(Protocol):
    """A keyed store of JSON documents (the daemon's checkpoint stores are)."""

    def load(self, unit: str) -> dict[str, Any] | None: ...

    def save(self, unit: str, payload: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class SilenceUnit:
    """The silence store as the unit ``unit`` of a keyed document store: over a compacted
    Kafka topic of its own every replica reads the same silences (a local file is one
    daemon's)."""

    def __init__(self, documents: DocumentStore, unit: str = "silences") -> None:
        self.documents = documents
        self.unit = unit

    def __str__(self) -> str:
        return f"silence store (unit {self.unit!r})"

    def close(self) -> None:
        """Close the document store (its clients)."""
        self.documents.close()


Store = str | Path | SilenceUnit


def load_silences(store: Store) -> list[Silence]:
    """Every silence in the store (a missing file or unit is an empty store)."""
    if isinstance(store, SilenceUnit):
        doc = store.documents.load(store.unit)
        return [] if doc is None else _parse(doc.get("store"), str(store))
    p = Path(store)
    if not p.exists():
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PolicyError(f"{p}: the silence store cannot be read: {e}.") from e
    return _parse(data, str(p))


def _parse(data: Any, where: str) -> list[Silence]:
    if not isinstance(data, dict) or data.get("version") != STORE_VERSION:
        raise PolicyError(
            f"{where}: the silence store has version {data.get('version') if isinstance(data, dict) else None!r}; "
            f"this version of driftwarden reads version {STORE_VERSION}."
        )
    try:
        return [Silence.from_dict(d) for d in data.get("silences") or ()]
    except (KeyError, ValueError, TypeError) as e:
        raise PolicyError(f"{where}: a silence in the store is malformed: {e}.") from e


def save_silences(store: Store, silences: Iterable[Silence]) -> None:
    """Write the store, sorted by id (a file atomically: temp file + rename)."""
    body = {
        "version": STORE_VERSION,
        "silences": [s.to_dict() for s in sorted(silences, key=lambda s: s.id)],
    }
    if isinstance(store, SilenceUnit):
        store.documents.save(store.unit, {"store": body})
        return
    p = Path(store)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=p.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_silence(
    store: Store,
    *,
    model: str = "*",
    rule: str = "*",
    starts_at: float,
    ends_at: float,
    created_by: str,
    comment: str = "",
    silence_id: str | None = None,
) -> Silence:
    """Add a silence to the store and return it (a random id unless one is given)."""
    if ends_at <= starts_at:
        raise PolicyError(
            f"silence for model {model!r} rule {rule!r} ends ({iso_utc(ends_at)}) before it "
            f"starts ({iso_utc(starts_at)})."
        )
    s = Silence(
        silence_id or uuid.uuid4().hex[:12],
        model,
        rule,
        float(starts_at),
        float(ends_at),
        created_by,
        comment,
    )
    current = load_silences(store)
    if any(c.id == s.id for c in current):
        raise PolicyError(f"{store}: a silence with id {s.id!r} already exists.")
    save_silences(store, [*current, s])
    return s


def expire_silence(store: Store, silence_id: str, now: float) -> Silence:
    """End a silence at ``now`` (kept in the store for the record) and return it."""
    current = load_silences(store)
    for i, s in enumerate(current):
        if s.id == silence_id:
            ended = replace(s, ends_at=min(s.ends_at, max(now, s.starts_at)))
            current[i] = ended
            save_silences(store, current)
            return ended
    raise PolicyError(f"{store}: there is no silence with id {silence_id!r}.")


def muter(silences: Sequence[Silence]) -> SilenceSet:
    """A :class:`Muter` over a list of silences."""
    return SilenceSet(tuple(silences))
