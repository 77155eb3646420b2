"""Tests of silences: matching, time bounds, and the JSON store the CLI edits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from driftwarden.policies.model import PolicyError
from driftwarden.policies.silences import (
    Silence,
    SilenceSet,
    SilenceUnit,
    add_silence,
    expire_silence,
    load_silences,
)

T0 = 1_795_651_200.0  # 2026-11-26T00:00:00Z


def test_active_is_half_open() -> None:
    """A silence is active from its start (inclusive) to its end (exclusive)."""
    s = Silence("a", "*", "*", T0, T0 + 60, "alice")
    assert not s.active(T0 - 1) and s.active(T0) and s.active(T0 + 59) and not s.active(T0 + 60)


def test_matchers_are_globs_on_model_and_rule() -> None:
    """Both the model and the rule must match their globs (case-sensitive)."""
    s = Silence("a", "churn-*", "drift*", T0, T0 + 60, "alice")
    assert s.matches("churn-eu", "drifted")
    assert not s.matches("churn", "drifted")
    assert not s.matches("churn-eu", "broken-input")
    assert not s.matches("Churn-eu", "drifted")


def test_silence_set_reason_names_the_silence() -> None:
    """The mute reason names the id, creator, end and comment; no match gives None."""
    ss = SilenceSet((Silence("s9", "*", "drifted", T0, T0 + 3600, "alice", "fix rolling out"),))
    assert ss.mutes("churn", "drifted", T0) == (
        "silenced by s9 (created by alice, until 2026-11-26T01:00:00Z): fix rolling out"
    )
    assert ss.mutes("churn", "other", T0) is None
    assert ss.mutes("churn", "drifted", T0 + 3600) is None


def test_store_add_load_expire(tmp_path: Path) -> None:
    """add → load round-trips; expire ends a silence at ``now`` and keeps it for the record."""
    store = tmp_path / "state" / "silences.json"
    assert load_silences(store) == []
    a = add_silence(
        store,
        model="churn",
        rule="drifted",
        starts_at=T0,
        ends_at=T0 + 7200,
        created_by="alice",
        comment="fix",
        silence_id="s1",
    )
    b = add_silence(store, starts_at=T0, ends_at=T0 + 60, created_by="bob")
    assert sorted(load_silences(store), key=lambda s: s.id) == sorted([a, b], key=lambda s: s.id)
    assert len(b.id) == 12 and b.model == "*" and b.rule == "*"
    ended = expire_silence(store, "s1", now=T0 + 600)
    assert ended.ends_at == T0 + 600 and not ended.active(T0 + 600)
    assert {s.id: s.ends_at for s in load_silences(store)}["s1"] == T0 + 600
    raw = json.loads(store.read_text())
    by_id = {d["id"]: d for d in raw["silences"]}
    assert raw["version"] == 1 and by_id["s1"]["ends_at"] == "2026-11-26T00:10:00Z"


def test_store_refuses_bad_input(tmp_path: Path) -> None:
    """Duplicate ids, an end before the start, unknown ids and unknown versions are refused."""
    store = tmp_path / "silences.json"
    add_silence(store, starts_at=T0, ends_at=T0 + 60, created_by="a", silence_id="x")
    with pytest.raises(PolicyError, match="already exists"):
        add_silence(store, starts_at=T0, ends_at=T0 + 60, created_by="a", silence_id="x")
    with pytest.raises(PolicyError, match="ends .* before it starts"):
        add_silence(store, starts_at=T0, ends_at=T0, created_by="a")
    with pytest.raises(PolicyError, match="no silence with id 'nope'"):
        expire_silence(store, "nope", now=T0)
    store.write_text(json.dumps({"version": 7, "silences": []}))
    with pytest.raises(PolicyError, match="has version 7; this version of driftwarden reads"):
        load_silences(store)


class _Documents:
    """A keyed document store in memory, shaped like the daemon's checkpoint stores."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def load(self, unit: str) -> dict[str, Any] | None:
        return json.loads(json.dumps(self.docs[unit])) if unit in self.docs else None

    def save(self, unit: str, payload: dict[str, Any]) -> None:
        self.docs[unit] = json.loads(json.dumps(payload))


def test_silence_unit_is_the_same_store_in_a_shared_document() -> None:
    """As a unit of a keyed store (the Kafka state topic, shared by every replica) the store
    behaves as the file does: add, read back from another reader, expire, refuse duplicates;
    a malformed document names the unit."""
    documents = _Documents()
    store, other = SilenceUnit(documents), SilenceUnit(documents)
    assert load_silences(store) == []
    a = add_silence(
        store, model="churn", rule="drifted", starts_at=T0, ends_at=T0 + 7200,
        created_by="alice", comment="fix", silence_id="s1",
    )  # fmt: skip
    assert load_silences(other) == [a]
    assert documents.docs["silences"]["store"]["version"] == 1
    ended = expire_silence(other, "s1", now=T0 + 600)
    assert load_silences(store) == [ended] and ended.ends_at == T0 + 600
    with pytest.raises(PolicyError, match=r"silence store \(unit 'silences'\): a silence with id"):
        add_silence(store, starts_at=T0, ends_at=T0 + 60, created_by="a", silence_id="s1")
    documents.docs["silences"] = {"store": {"version": 7}}
    with pytest.raises(PolicyError, match=r"silence store \(unit 'silences'\): .* version 7"):
        load_silences(store)
