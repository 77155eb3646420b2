"""A model's active alerts and pending actions move with its partition between replicas.

With ``state.backend: kafka`` a partition's checkpoint carries
:meth:`ActionExecutor.handover_state` of its models; the replica that is assigned the
partition adopts it. These tests drive two executors (two replicas, two outboxes) against a
webhook that is down and then up, and count what it receives.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from driftwarden.daemon.actions import ActionExecutor
from driftwarden.daemon.outbox import Outbox
from driftwarden.detectors.base import StateVersionError
from tests.daemon.test_actions import Clock, Windows, executor, run_until_quiet, webhook_policy

MODELS = {"churn"}


def replica(tmp_path: Path, name: str, policy: Any, clock: Clock, hook: Any) -> ActionExecutor:
    """An executor in its own state directory that hands its models over."""
    ex = executor(tmp_path / name, policy, clock, env={"HOOK_URL": hook.url})
    ex.enable_handover()
    return ex


def statuses(hook: Any) -> list[str]:
    return [r["body"]["status"] for r in hook.delivered]


def test_pending_actions_move_with_the_partition_and_run_once(
    tmp_path: Path, webhook_server: Any
) -> None:
    """Revoked from A with a notification pending → B sends it (and later the resolution);
    A sends nothing, also after a restart that is handed B's later checkpoint."""
    policy = webhook_policy(tmp_path)
    clock = Clock()
    w = Windows(policy, "churn")
    a = replica(tmp_path, "a", policy, clock, webhook_server)
    assert a.adopt(MODELS, None, ours=False) == 0  # a fresh partition
    webhook_server.down = True
    assert a.on_decisions(w.next("drift")) == 2
    assert a.tick().counts.get(("alert", "retry")) == 1
    checkpoint = a.handover_state(MODELS)  # revoke: checkpoint, then release
    assert [j["kind"] for j in checkpoint["jobs"]] == ["alert", "retrain"]
    assert a.release(MODELS) == 2
    assert a.outbox.pending() == [] and len(a.book) == 0
    clock.t += 600
    assert a.tick().counts == {}
    tried = len(webhook_server.requests)

    b = replica(tmp_path, "b", policy, clock, webhook_server)
    assert b.adopt(MODELS, json.loads(json.dumps(checkpoint)), ours=False) == 2
    assert len(b.book) == 1  # the firing alert came along
    webhook_server.down = False
    run_until_quiet(b, clock)
    assert statuses(webhook_server) == ["firing"]
    assert b.on_decisions(w.next()) == 1  # clear: the alert B inherited is resolved by B
    run_until_quiet(b, clock)
    assert statuses(webhook_server) == ["firing", "resolved"]

    later = b.handover_state(MODELS)
    assert [j["kind"] for j in later["jobs"]] == ["retrain"]  # no launcher: it waits
    a.close()
    a2 = replica(tmp_path, "a", policy, clock, webhook_server)  # A restarts, gets it back
    # Only the retrain B still had pending is A's again (revived: the same key); the alert jobs
    # A released stay released — B delivered them.
    assert a2.adopt(MODELS, later, ours=False) == 1
    assert [j.kind for j in a2.outbox.pending()] == ["retrain"]
    run_until_quiet(a2, clock)
    assert statuses(webhook_server) == ["firing", "resolved"]
    assert set(webhook_server.deliveries_per_key().values()) == {1}
    assert len(webhook_server.requests) == tried + 2
    for ex in (a2, b):
        ex.close()


def test_killed_replica_does_not_repeat_what_the_survivor_delivered(
    tmp_path: Path, webhook_server: Any
) -> None:
    """A is killed (no release) with a notification pending; B delivers it from A's last
    checkpoint; A restarted keeps its copy released and sends nothing."""
    policy = webhook_policy(tmp_path)
    clock = Clock()
    a = replica(tmp_path, "a", policy, clock, webhook_server)
    webhook_server.down = True
    a.on_decisions(Windows(policy, "churn").next("drift"))
    a.tick()
    checkpoint = a.handover_state(MODELS)
    a.close()  # SIGKILL: nothing released, the job is pending in A's outbox

    b = replica(tmp_path, "b", policy, clock, webhook_server)
    b.adopt(MODELS, checkpoint, ours=False)
    webhook_server.down = False
    run_until_quiet(b, clock)
    a2 = replica(tmp_path, "a", policy, clock, webhook_server)
    assert a2.outbox.pending() == []  # released at start-up, waiting for a partition
    run_until_quiet(a2, clock)
    assert statuses(webhook_server) == ["firing"]
    for ex in (a2, b):
        ex.close()


def test_a_restarted_replica_runs_its_own_jobs_also_those_after_its_checkpoint(
    tmp_path: Path, webhook_server: Any
) -> None:
    """The same replica gets its partition back with the checkpoint it wrote itself: every
    job it had pending runs, including one enqueued after that checkpoint."""
    policy = webhook_policy(tmp_path)
    clock = Clock()
    w = Windows(policy, "churn")
    a = replica(tmp_path, "a", policy, clock, webhook_server)
    webhook_server.down = True
    a.on_decisions(w.next("drift"))
    checkpoint = a.handover_state(MODELS)
    a.on_decisions(w.next())  # resolved after the checkpoint
    assert len(a.outbox.pending()) == 3
    a.close()

    a2 = replica(tmp_path, "a", policy, clock, webhook_server)
    assert a2.outbox.pending() == []
    assert a2.adopt(MODELS, checkpoint, ours=True) == 3
    webhook_server.down = False
    run_until_quiet(a2, clock)
    assert statuses(webhook_server) == ["firing", "resolved"]
    a2.close()


def test_an_unknown_handover_version_is_refused(tmp_path: Path, webhook_server: Any) -> None:
    policy = webhook_policy(tmp_path)
    a = replica(tmp_path, "a", policy, Clock(), webhook_server)
    with pytest.raises(StateVersionError, match="version 99"):
        a.adopt(MODELS, {"version": 99, "alerts": {}, "jobs": []}, ours=False)
    a.close()


def test_a_version_1_outbox_is_migrated_with_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE jobs (
            key TEXT PRIMARY KEY, kind TEXT NOT NULL, payload TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, last_error TEXT);
        CREATE INDEX jobs_due ON jobs (state, next_at);
        INSERT INTO jobs VALUES ('k1', 'alert', '{"model":"churn"}', 'pending', 2, 5.0, 1.0,
                                 1.0, 'down');
        INSERT INTO jobs VALUES ('k2', 'alert', '{"model":"churn"}', 'done', 1, 5.0, 1.0, 1.0,
                                 NULL);
        PRAGMA user_version = 1;
        """
    )
    db.close()
    box = Outbox(path)
    (job,) = box.pending()
    assert (job.key, job.attempts, job.last_error) == ("k1", 2, "down")
    assert box.release(["k1", "k2"], now=10.0) == 1  # only a pending job is released
    assert box.stats()["released"] == 1 and box.stats()["done"] == 1
    assert box.revive(["k1"], now=11.0) == 1
    assert [j.key for j in box.due(11.0)] == ["k1"]
    box.close()


def test_two_ticks_at_once_deliver_each_job_once(tmp_path: Path, webhook_server: Any) -> None:
    """The action thread's tick and the final tick at shutdown may overlap: a job picked by one
    must not be sent by the other (a slow receiver widens the window)."""
    import threading
    import time

    policy = webhook_policy(tmp_path)
    clock = Clock()
    ex = executor(tmp_path, policy, clock, env={"HOOK_URL": webhook_server.url})
    ex.on_decisions(Windows(policy, "churn").next("drift"))
    hook = ex.receiver("churn", "ml-team")
    assert hook is not None
    send = hook.send

    def slow_send(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return send(*args, **kwargs)

    hook.send = slow_send  # type: ignore[method-assign]
    threads = [threading.Thread(target=ex.tick) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert list(webhook_server.deliveries_per_key().values()) == [1]
    ex.close()


def test_a_moved_model_takes_only_its_own_actions_and_the_old_replica_stops_resending(
    tmp_path: Path, webhook_server: Any
) -> None:
    """A model whose events moved partition (the input topics gained partitions): the new
    owner adopts, from the old partition's checkpoint, that model's alerts and jobs only; the
    old owner, retiring its copy, stops re-sending the model's alerts (the new owner resends
    and resolves them) while its pending jobs still run."""
    policy = webhook_policy(tmp_path)
    clock = Clock()
    w = Windows(policy, "churn")
    a = replica(tmp_path, "a", policy, clock, webhook_server)
    assert a.adopt(MODELS, None, ours=False) == 0
    webhook_server.down = True
    assert a.on_decisions(w.next("drift")) == 2
    state = a.handover_state(MODELS)
    mine = len(state["jobs"])
    stranger = dict(state["jobs"][0])
    stranger["key"] = f"{stranger['key']}-other"
    stranger["payload"] = {**stranger["payload"], "model": "another-model"}
    state["jobs"].append(stranger)  # the old partition's other models' jobs stay there

    b = replica(tmp_path, "b", policy, clock, webhook_server)
    assert b.adopt(MODELS, json.loads(json.dumps(state)), ours=False) == mine
    assert len(b.book) == 1
    assert "another-model" not in {j.payload.get("model") for j in b.outbox.pending()}

    a.drop_alerts(MODELS)
    assert len(a.book) == 0
    assert len(a.outbox.pending()) == mine  # its jobs still run here
