"""Checkpoints: per-partition state *and* the offsets it covers, written atomically.

A checkpoint unit is one partition number: producers key both topics by model, so a model's
predictions and labels share a partition number and its state lives in one unit. The daemon
commits offsets to Kafka only after the unit's checkpoint is durable; on start or assignment it
restores the unit and seeks to the offsets the checkpoint holds, so state and offsets never
disagree (no event lost, none counted twice).

Every checkpoint carries ``format`` and ``version``; an unknown version is refused with a plain
sentence rather than misread.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any

import orjson

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "CheckpointStore", "LocalCheckpointStore"]

CHECKPOINT_FORMAT = "driftwarden.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or written; ``str()`` says which and why."""


class CheckpointStore(ABC):
    """Where checkpoints live (local directory by default; a Kafka topic is the other)."""

    #: Seconds this store has spent so far waiting for another system (a broker) to acknowledge
    #: its writes. The daemon paces its checkpoints by their own work (``checkpoint.max_share``)
    #: and leaves such waits out: after an outage they would hold the next checkpoint back.
    waited_s: float = 0.0

    @abstractmethod
    def save(self, unit: str, payload: dict[str, Any]) -> None:
        """Durably store the unit's checkpoint (replacing the previous one atomically)."""

    def save_all(self, units: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Store every ``(unit, payload)``, all durable when this returns. One at a time here;
        a store that can have several writes in flight overrides it. ``units`` may be a
        generator: each payload is taken only when it is written."""
        for unit, payload in units:
            self.save(unit, payload)

    @abstractmethod
    def load(self, unit: str) -> dict[str, Any] | None:
        """The unit's latest checkpoint, or None if it has none."""

    @abstractmethod
    def units(self) -> list[str]:
        """Every unit that has a checkpoint, sorted."""

    def versions(self) -> dict[str, Hashable | None]:
        """Every unit with a token that changes whenever its checkpoint does (``None``: this
        store cannot tell, so a reader must load it to know). Lets a reader of other units'
        checkpoints keep what it learned of one until it changes."""
        return dict.fromkeys(self.units())

    def close(self) -> None:
        """Release resources."""


def wrap(payload: dict[str, Any]) -> dict[str, Any]:
    """Add format and version to a checkpoint payload."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}


def unwrap(doc: Any, where: str) -> dict[str, Any]:
    """Check format and version; return the payload."""
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where} is not a driftwarden checkpoint.")
    if doc.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{where} has checkpoint version {doc.get('version')!r}; this driftwarden reads "
            f"version {CHECKPOINT_VERSION}. Start with an empty state directory or upgrade."
        )
    return doc


class LocalCheckpointStore(CheckpointStore):
    """One JSON file per unit in a directory: write to a temp file, fsync, rename, fsync dir."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, unit: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in unit)
        return self.directory / f"checkpoint-{safe}.json"

    def save(self, unit: str, payload: dict[str, Any]) -> None:
        path = self._path(unit)
        tmp = path.with_suffix(".json.tmp")
        data = orjson.dumps(wrap(payload), option=orjson.OPT_SERIALIZE_NUMPY)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def units(self) -> list[str]:
        # File names are the units made safe (see _path): units are plain names, as the
        # daemon writes them ("p3", "actions").
        files = self.directory.glob("checkpoint-*.json")
        return sorted(f.name[len("checkpoint-") : -len(".json")] for f in files if f.is_file())

    def versions(self) -> dict[str, Hashable | None]:
        # A save replaces the file (a new inode), so the inode alone tells; the rest is for
        # file systems that reuse one at once.
        out: dict[str, Hashable | None] = {}
        for f in self.directory.glob("checkpoint-*.json"):
            try:
                st = f.stat()
            except FileNotFoundError:  # replaced between listing and stat: the new one's turn
                continue
            out[f.name[len("checkpoint-") : -len(".json")]] = (
                st.st_ino,
                st.st_mtime_ns,
                st.st_size,
            )
        return out

    def load(self, unit: str) -> dict[str, Any] | None:
        path = self._path(unit)
        if not path.exists():
            return None
        try:
            doc = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise CheckpointError(f"checkpoint {path} is not valid JSON ({exc}).") from None
        return unwrap(doc, f"checkpoint {path}")
