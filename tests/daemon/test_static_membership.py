"""Static membership (``kafka.group_instance_id``, KIP-345) against the real broker: a replica
restarted within the session timeout gets its own partitions back and the others are never
revoked (no rebalance); a second consumer with the same id fences the first, whose next commit
stops it with a sentence naming the id — and a fenced daemon writes no checkpoint on its way
out (its partitions' state belongs to the other replica now)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from driftwarden.daemon.sources import FileSource, SourceFenced
from tests.daemon.kafka_sources import kafka_source


class Member:
    """A KafkaSource with a static id, recording what it was assigned and revoked."""

    def __init__(self, bootstrap: str, group: str, topics: dict[str, str], instance: str) -> None:
        self.assigned: list[list[int]] = []
        self.revoked: list[list[int]] = []
        self.source = kafka_source(
            bootstrap,
            topics,
            group_id=group,
            client_id=f"static-{instance}",
            session_timeout_ms=20_000,
            # The rebalance timeout too: a join that waits on a slow member ends within it.
            max_poll_interval_ms=30_000,
            on_assign=lambda parts: self.assigned.append(parts) or {},
            on_revoke=self.revoked.append,
            group_instance_id=instance,
        )
        # The topics' metadata before the first poll joins the group: a leader that assigns
        # without it gives the topics to nobody until a later rebalance (seen once: the group
        # took 120 s to settle, under the full suite's load; that later rebalance was being
        # lost, the kafka-python bug driftwarden.daemon.kafka_rejoin patches).
        for topic in topics.values():
            assert self.source._consumer.partitions_for_topic(topic), topic

    def owned(self) -> set[int]:
        return {tp.partition for tp in self.source._consumer.assignment()}


def _poll_until(members: list[Member], done: Callable[[], bool], deadline_s: float = 120.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not done():
        owned = [sorted(m.owned()) for m in members]
        assert time.monotonic() < deadline, f"the group did not settle in time: {owned}"
        for m in members:
            m.source.poll(100, 0.1)


@pytest.fixture
def group(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> Iterator[tuple[Callable[[str], Member], dict[str, str]]]:
    topics = {"predictions": kafka_topic_factory(4), "labels": kafka_topic_factory(4)}
    name = f"static-{uuid.uuid4().hex[:8]}"
    made: list[Member] = []

    def member(instance: str) -> Member:
        made.append(Member(kafka_bootstrap, name, topics, instance))
        return made[-1]

    try:
        yield member, topics
    finally:
        for m in made:
            m.source.close()


@pytest.mark.kafka
def test_a_restarted_static_member_keeps_its_partitions_without_a_rebalance(
    group: tuple[Callable[[str], Member], dict[str, str]],
) -> None:
    member, _ = group
    a, b = member("replica-a"), member("replica-b")
    _poll_until([a, b], lambda: bool(a.owned()) and bool(b.owned()) and not a.owned() & b.owned())
    a_before, b_before = a.owned(), b.owned()
    assert a_before | b_before == {0, 1, 2, 3}
    revoked_before = list(a.revoked)

    b.source.close()  # a static member leaves no LeaveGroup: the group waits for it
    again = member("replica-b")
    _poll_until([a, again], lambda: bool(again.owned()))
    for _ in range(20):  # a while longer: no rebalance reaches replica-a
        a.source.poll(100, 0.1)
        again.source.poll(100, 0.1)
    assert again.owned() == b_before and a.owned() == a_before
    assert a.revoked == revoked_before


@pytest.mark.kafka
def test_a_fenced_member_stops_at_its_next_commit(
    group: tuple[Callable[[str], Member], dict[str, str]],
) -> None:
    member, topics = group
    first = member("replica-x")
    _poll_until([first], lambda: first.owned() == {0, 1, 2, 3})
    second = member("replica-x")  # a misconfigured second replica with the same id
    _poll_until([first, second], lambda: second.owned() == {0, 1, 2, 3})
    time.sleep(4)  # the first one's heartbeat is refused (kafka-python only logs it)
    with pytest.raises(SourceFenced, match="kafka.group_instance_id 'replica-x'") as err:
        first.source.commit({(topics["predictions"], 0): 0})
    assert "Each replica needs its own id" in str(err.value)
    with pytest.raises(SourceFenced):  # the idle daemon's probe (a commit, bounded in time)
        first.source.confirm({(topics["predictions"], 0): 0}, 5.0)
    second.source.commit({(topics["predictions"], 0): 0})  # the new owner commits
    second.source.confirm({(topics["predictions"], 0): 0}, 5.0)  # and is confirmed


def test_a_fenced_daemon_writes_no_checkpoint_on_its_way_out(tmp_path: Path) -> None:
    """The source's commit raises SourceFenced at the first checkpoint: run() re-raises it and
    the revocation that closing the consumer brings saves nothing over the new owner's state."""
    from tests.daemon.embedded import EVENTS, embedded_daemon

    class FencedFile(FileSource):
        def commit(self, offsets: Any, *, wait: bool = True) -> None:
            raise SourceFenced("kafka: this replica was fenced")

    daemon = embedded_daemon(tmp_path, extra="checkpoint: {every_events: 1000}\n")
    fenced = FencedFile(str(EVENTS))
    fenced.seek(daemon.assign([0]))
    daemon.source = fenced
    with pytest.raises(SourceFenced):
        daemon.run(max_events=5_000)
    store = daemon.store
    assert store is not None
    saves: list[Any] = []
    save_all = store.save_all
    store.save_all = lambda units: saves.append(list(units)) or save_all(iter(()))  # type: ignore[method-assign]
    daemon.revoke([0])  # what closing the consumer does
    assert saves == [] and 0 not in daemon.units


def test_an_idle_fenced_daemon_stops_within_the_checkpoint_interval(tmp_path: Path) -> None:
    """Fenced while idle (no record, so no checkpoint falls due): the daemon asks the group
    again every ``checkpoint.every`` by committing its last offsets, and the refusal stops it;
    it does not go on reporting partitions another replica owns."""
    from tests.daemon.embedded import EVENTS, embedded_daemon

    class Quiet(FileSource):
        """The first 3000 events, then nothing (a topic gone quiet, not an ended file)."""

        fenced = False
        commits = 0

        def poll(self, max_records: int, timeout_s: float) -> list[Any]:
            if self._next >= 3000:
                time.sleep(min(timeout_s, 0.05))
                return []
            return super().poll(min(max_records, 3000 - self._next), timeout_s)

        @property
        def exhausted(self) -> bool:
            return False

        def commit(self, offsets: Any, *, wait: bool = True) -> None:
            self.commits += 1
            if self.fenced:
                raise SourceFenced("kafka: this replica was fenced")

    daemon = embedded_daemon(tmp_path, extra="checkpoint: {every_events: 1000, every: 1s}\n")
    quiet = Quiet(str(EVENTS))
    quiet.seek(daemon.assign([0]))
    daemon.source = quiet
    summary = daemon.run(timeout_s=4)  # idle after 3000 events: ownership probed each second
    assert summary.records == 3000 and summary.stopped_by == "timeout"
    probes = quiet.commits
    # 3 checkpoints and the final one; the idle seconds between were probed (≥ 1 of ~3).
    assert probes >= 5
    daemon._closed = False
    quiet.fenced = True  # another replica took the id meanwhile
    started = time.monotonic()
    with pytest.raises(SourceFenced):
        daemon.run(timeout_s=30)
    assert time.monotonic() - started < 5


def test_an_ownership_probe_does_not_delay_the_next_checkpoint(tmp_path: Path) -> None:
    """The probe keeps its own clock: records arriving after a probe still get their
    time-based checkpoint ``checkpoint.every`` after the last checkpoint, not after the probe."""
    from tests.daemon.embedded import embedded_daemon

    daemon = embedded_daemon(tmp_path, extra="checkpoint: {every_events: 100000, every: 30s}\n")
    daemon.assign([0])
    now = time.monotonic()
    daemon._last_checkpoint = now - 40  # idle since: a probe is due
    assert daemon._probe_due()
    daemon._last_probe = now - 1  # ... and was just made
    assert not daemon._probe_due()
    daemon._since_checkpoint = 5  # records came in after the probe
    assert daemon._checkpoint_due()
