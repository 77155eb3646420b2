"""A policy whose window changes kind between a checkpoint and its restore (count → event time,
and back): the model goes on being judged — windows keep closing with the new spec, no record
is dropped as late, none waits forever — instead of the restored window state and the new spec
contradicting each other."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from driftwarden.daemon.monitor import _specs
from tests.daemon.embedded import POLICIES, ROOT, embedded_daemon

COUNT = "window: {events: 2000, labeled: {events: 1000}}"
# The example events are two seconds apart: a 1 h window holds ~1800 of them.
DURATION = "window: {duration: 1h, labeled: {duration: 1h}}"


def _policies(tmp: Path, window: str) -> Path:
    pol = tmp / "policies"
    shutil.rmtree(pol, ignore_errors=True)
    shutil.copytree(POLICIES, pol)
    shutil.copy(ROOT / "config" / "profiles" / "churn.json", tmp / "churn.json")
    policy = pol / "churn.yaml"
    text = policy.read_text().replace("file:../../profiles/churn.json", "file:../churn.json")
    assert COUNT in text
    policy.write_text(text.replace(COUNT, window))
    return pol


@pytest.mark.parametrize(("before", "after"), [(COUNT, DURATION), (DURATION, COUNT)])
def test_a_window_that_changes_kind_goes_on_after_a_restore(
    tmp_path: Path, before: str, after: str
) -> None:
    first = embedded_daemon(tmp_path, policies=_policies(tmp_path, before))
    assert first.run(max_events=12_000).records == 12_000
    windows_before = first.summary.windows
    assert windows_before > 0

    second = embedded_daemon(tmp_path, policies=_policies(tmp_path, after))
    summary = second.run(max_events=24_000)
    assert summary.records == 24_000  # from the checkpoint on: records 12 000 to 36 000
    mon = second.units[0].models["churn"]
    assert summary.windows >= 8  # both streams keep closing windows with the new spec
    assert (mon.pred_windows.spec, mon.lab_windows.spec) == _specs(mon.policy)
    assert mon.pred_windows.late == 0 and mon.lab_windows.late == 0
    # Nothing waits for a window that never opens: what is buffered is at most the span of
    # the open windows.
    waiting = sum(len(v) for v in mon.pred_windows.future.values())
    assert waiting <= 2000
