"""The durable action outbox: decided actions are stored first, then executed and retried.

A decision's actions (alert, fallback, retrain, ...) are enqueued under their idempotency key
in a SQLite file (stdlib ``sqlite3``, WAL journal, ``synchronous=FULL``) in the state
directory, before the offsets that produced them are committed. The main loop calls
:meth:`Outbox.run_due` with one handler per action kind; a handler returns a
:class:`~driftwarden.policies.receivers.base.Delivery`:

* ``ok`` → the job is ``done`` and never runs again (its key stays, so a replayed window
  that enqueues the same key again is ignored);
* retryable failure (or the handler raised) → the job stays ``pending`` with the next
  attempt after an exponential backoff (``base_s * 2**(attempts-1)``, capped at ``cap_s``)
  scaled by a jitter in [0.5, 1) derived from the key and attempt, so runs are reproducible
  and many jobs failing together do not retry in lock-step;
* non-retryable failure, or ``max_attempts`` reached (unbounded by default: the daemon
  retries a job until it is delivered, as ``actions.*`` documents) → the job is ``dead`` with
  its error (:meth:`Outbox.dead` lists them, :meth:`Outbox.retry_dead` revives one by hand).

Delivery guarantee: **at least once, with an idempotency key**. A job is marked done only
after its handler returned ok, so a crash between a successful send and that mark repeats
one send after restart. Alertmanager deduplicates alerts by their labels, webhooks receive
the same ``Idempotency-Key`` on every attempt, Kafka records carry the key and the alert
fingerprint, and the fallback/retrain handlers are expected to check their own key.

``now`` is always passed in (epoch seconds), so the schedule is testable without sleeping.
One process owns a state directory; a lock makes the object safe to read (``stats``) from
another thread while the main loop runs jobs. Handlers run without the lock held.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from driftwarden.policies.receivers.base import Delivery

__all__ = ["Job", "JobResult", "Outbox", "backoff_delay"]

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 2

# Version 2 adds the state ``released``: a job of a model whose partition another replica owns
# now (the partition's checkpoint carried it there); it runs here again only if this replica
# takes the partition back (:meth:`Outbox.revive`, :meth:`Outbox.adopt`).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key         TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead', 'released')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     REAL NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    last_error  TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_at);
"""

Handler = Callable[[dict[str, Any]], Delivery]


@dataclass(frozen=True)
class Job:
    """One stored action. ``state`` is ``pending``, ``done`` or ``dead``."""

    key: str
    kind: str
    payload: dict[str, Any]
    state: str
    attempts: int
    next_at: float
    created_at: float
    updated_at: float
    last_error: str | None


@dataclass(frozen=True)
class JobResult:
    """What one :meth:`Outbox.run_due` attempt did: ``outcome`` is done, retry or dead."""

    key: str
    kind: str
    outcome: str
    attempts: int
    error: str | None = None
    next_at: float | None = None


def backoff_delay(key: str, attempts: int, *, base_s: float = 1.0, cap_s: float = 300.0) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt of job ``key``.

    ``min(cap_s, base_s * 2**(attempts-1))`` times a jitter factor in [0.5, 1) that is a
    hash of the key and the attempt number: deterministic, but different across jobs.
    """
    # The exponent is bounded: with unbounded attempts, 2.0**1024 would overflow (OverflowError)
    # after ~3.5 days at the 5-minute cap.
    raw = min(cap_s, base_s * 2.0 ** min(max(0, attempts - 1), 64))
    digest = hashlib.sha256(f"{key}\x00{attempts}".encode()).digest()
    frac = int.from_bytes(digest[:8], "big") / 2.0**64
    return raw * (0.5 + 0.5 * frac)


class Outbox:
    """A durable queue of actions keyed by idempotency key (see the module docstring).

    ``path`` is the SQLite file (its directory is created). ``base_s``/``cap_s`` shape the
    retry backoff; ``max_attempts`` (``None``, the default = unbounded: retried until
    delivered) turns a job that keeps failing retryably into a dead one.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        base_s: float = 1.0,
        cap_s: float = 300.0,
        max_attempts: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.base_s = base_s
        self.cap_s = cap_s
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one short transaction per change.
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 1:  # same columns; the state CHECK gained 'released'
                self._db.executescript(
                    "BEGIN; DROP INDEX IF EXISTS jobs_due; ALTER TABLE jobs RENAME TO jobs_v1;"
                    + _SCHEMA
                    + "INSERT INTO jobs SELECT * FROM jobs_v1; DROP TABLE jobs_v1; COMMIT;"
                )
                version = SCHEMA_VERSION
            if version not in (0, SCHEMA_VERSION):
                self._db.close()
                raise ValueError(
                    f"the outbox {self.path} has schema version {version}; this version of "
                    f"driftwarden reads version {SCHEMA_VERSION}."
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database (the object is unusable afterwards)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(
        self,
        key: str,
        kind: str,
        payload: Mapping[str, Any],
        *,
        now: float | None = None,
        not_before: float | None = None,
    ) -> bool:
        """Store a job; False (and nothing changes) if ``key`` is already stored.

        The job is due at ``not_before`` (default: at once). ``now`` only stamps
        ``created_at`` (default: the wall clock).
        """
        if not key:
            raise ValueError("an outbox job needs a non-empty key.")
        stamp = time.time() if now is None else now
        text = json.dumps(dict(payload), sort_keys=True, separators=(",", ":"))
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO jobs (key, kind, payload, state, attempts, next_at,"
                " created_at, updated_at) VALUES (?, ?, ?, 'pending', 0, ?, ?, ?)",
                (key, kind, text, 0.0 if not_before is None else not_before, stamp, stamp),
            )
            added = cur.rowcount == 1
        if not added:
            log.debug("outbox_duplicate", key=key, kind=kind)
        return added

    def due(self, now: float, kinds: Collection[str] | None = None, limit: int = 100) -> list[Job]:
        """Pending jobs whose time has come, oldest first (only ``kinds`` if given)."""
        sql = "SELECT * FROM jobs WHERE state = 'pending' AND next_at <= ?"
        args: list[Any] = [now]
        if kinds is not None:
            names = list(kinds)
            if not names:
                return []
            sql += f" AND kind IN ({','.join('?' * len(names))})"
            args += names
        sql += " ORDER BY next_at, created_at, key LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_job(r) for r in rows]

    def run_due(
        self, now: float, handlers: Mapping[str, Handler], limit: int = 100
    ) -> list[JobResult]:
        """Run every due job whose kind has a handler; jobs of other kinds wait.

        A handler that raises counts as a retryable failure (and is logged with its
        traceback): a bug or an outage in one action must not stop the loop.
        """
        results = []
        for job in self.due(now, handlers, limit):
            try:
                delivery = handlers[job.kind](dict(job.payload))
            except Exception as exc:
                log.exception("outbox_handler_error", key=job.key, kind=job.kind)
                delivery = Delivery.retry(
                    f"the {job.kind} handler raised {type(exc).__name__}: {exc}"
                )
            results.append(self._record(job, delivery, now))
        return results

    def _record(self, job: Job, delivery: Delivery, now: float) -> JobResult:
        attempts = job.attempts + 1
        if delivery.ok:
            state, next_at, error = "done", job.next_at, None
        elif delivery.retryable and (self.max_attempts is None or attempts < self.max_attempts):
            state = "pending"
            next_at = now + backoff_delay(job.key, attempts, base_s=self.base_s, cap_s=self.cap_s)
            error = delivery.error
        else:
            state, next_at, error = "dead", job.next_at, delivery.error
            if delivery.retryable:
                error = f"gave up after {attempts} attempts: {delivery.error}"
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, attempts = ?, next_at = ?, updated_at = ?,"
                " last_error = ? WHERE key = ?",
                (state, attempts, next_at, now, error, job.key),
            )
        outcome = {"done": "done", "pending": "retry", "dead": "dead"}[state]
        if outcome == "done":
            log.info("outbox_done", key=job.key, kind=job.kind, attempts=attempts)
        elif outcome == "retry":
            log.warning(
                "outbox_retry",
                key=job.key,
                kind=job.kind,
                attempts=attempts,
                error=error,
                next_at=next_at,
            )
        else:
            log.error("outbox_dead", key=job.key, kind=job.kind, attempts=attempts, error=error)
        return JobResult(
            job.key, job.kind, outcome, attempts, error, next_at if state == "pending" else None
        )

    def get(self, key: str) -> Job | None:
        """The stored job with this key, in whatever state."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return _job(row) if row else None

    def pending(self) -> list[Job]:
        """Every pending job (due or waiting for its next attempt), by next attempt."""
        return self._by_state("pending")

    def dead(self) -> list[Job]:
        """Every job that failed for good, with its last error."""
        return self._by_state("dead")

    def _by_state(self, state: str) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY next_at, created_at, key", (state,)
            ).fetchall()
        return [_job(r) for r in rows]

    def jobs(self, states: Collection[str]) -> list[Job]:
        """Every job in one of ``states``, oldest first."""
        names = list(states)
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(names))})"
                " ORDER BY created_at, key",
                names,
            ).fetchall()
        return [_job(r) for r in rows]

    def release(self, keys: Collection[str], now: float) -> int:
        """Pending jobs → ``released`` (another replica runs them now); returns how many."""
        return self._move(keys, "pending", "released", now)

    def revive(self, keys: Collection[str], now: float) -> int:
        """Released jobs → pending, due at once; returns how many."""
        return self._move(keys, "released", "pending", now)

    def _move(self, keys: Collection[str], old: str, new: str, now: float) -> int:
        n = 0
        with self._lock:
            for key in keys:
                n += self._db.execute(
                    "UPDATE jobs SET state = ?, next_at = ?, updated_at = ?"
                    " WHERE key = ? AND state = ?",
                    (new, now, now, key, old),
                ).rowcount
        return n

    def adopt(self, job: Mapping[str, Any], now: float) -> bool:
        """Take over a pending job handed over in a partition's checkpoint.

        Stored as pending and due at once, unless its key is here already: a ``released`` copy
        is revived; a pending, done or dead one is left as it is. True if it is pending now
        because of this call.
        """
        key = str(job["key"])
        text = json.dumps(dict(job["payload"]), sort_keys=True, separators=(",", ":"))
        stamp = float(job.get("created_at", now))
        with self._lock:
            added = self._db.execute(
                "INSERT OR IGNORE INTO jobs (key, kind, payload, state, attempts, next_at,"
                " created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
                (key, str(job["kind"]), text, int(job.get("attempts", 0)), now, stamp, now),
            ).rowcount
        return bool(added) or self.revive([key], now) == 1

    def retry_dead(self, key: str, now: float) -> bool:
        """Make a dead job pending again, due at ``now`` (False if ``key`` is not dead)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, next_at = ?, updated_at = ?"
                " WHERE key = ? AND state = 'dead'",
                (now, now, key),
            )
        return cur.rowcount == 1

    def stats(self) -> dict[str, int]:
        """Job counts by state, and the total number of attempts made."""
        out = {"pending": 0, "done": 0, "dead": 0, "released": 0, "attempts": 0}
        with self._lock:
            for state, n, attempts in self._db.execute(
                "SELECT state, COUNT(*), COALESCE(SUM(attempts), 0) FROM jobs GROUP BY state"
            ):
                out[state] = int(n)
                out["attempts"] += int(attempts)
        return out

    def prune_done(self, before: float) -> int:
        """Delete done jobs last updated before ``before``; returns how many.

        Only prune what no replay can reach any more (older than the last checkpoint): a
        pruned key enqueued again would run again.
        """
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM jobs WHERE state = 'done' AND updated_at < ?", (before,)
            )
        return int(cur.rowcount)


def _job(row: sqlite3.Row) -> Job:
    return Job(
        key=row["key"],
        kind=row["kind"],
        payload=json.loads(row["payload"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        next_at=float(row["next_at"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        last_error=row["last_error"],
    )
