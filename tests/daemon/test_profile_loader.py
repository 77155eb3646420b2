"""The profile loader on the daemon's main loop: a registry lookup that failed is not tried
again for a while (30 s, doubling to 10 min), so a registry outage does not cost every batch
of the model the MLflow client's retries; the first success is cached and ends the backoff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from driftwarden.daemon import profiles
from driftwarden.daemon.monitor import ProfileMissing
from driftwarden.daemon.profiles import ProfileLoader
from driftwarden.detectors.profile import ReferenceProfile
from driftwarden.policies.loader import load_policies

ROOT = Path(__file__).resolve().parents[2]


def test_a_failed_registry_lookup_backs_off_then_recovers(tmp_path: Path) -> None:
    text = (ROOT / "config/embedded/policies/churn.yaml").read_text()
    (tmp_path / "churn.yaml").write_text(
        text.replace("file:../../profiles/churn.json", "models:/churn@champion")
    )
    policies, errors = load_policies(tmp_path)
    assert errors == []
    now = [1000.0]
    loader = ProfileLoader(policies, tracking_uri="http://127.0.0.1:9", clock=lambda: now[0])
    calls: list[Any] = []
    registry_up = [False]
    profile = ReferenceProfile.load(ROOT / "config/profiles/churn.json")

    def from_registry(ref: str, model: str, version: str | None, source: str) -> Any:
        calls.append(now[0])
        if not registry_up[0]:
            raise ProfileMissing(f"{source}: MLflow is unreachable")
        return profile

    loader._from_registry = from_registry  # type: ignore[method-assign]

    def attempt() -> str | None:
        try:
            loader("churn", "3")
        except ProfileMissing as exc:
            return str(exc)
        return None

    assert "unreachable" in (attempt() or "") and len(calls) == 1
    now[0] += 10
    assert "tried again in 20 s" in (attempt() or "") and len(calls) == 1  # no new request
    now[0] += 21
    assert attempt() is not None and len(calls) == 2  # tried; next wait doubles to 60 s
    now[0] += 59
    assert attempt() is not None and len(calls) == 2
    registry_up[0] = True
    now[0] += 2
    assert attempt() is None and len(calls) == 3
    assert loader("churn", "3") is profile and len(calls) == 3  # cached


def test_the_backoff_is_capped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = (ROOT / "config/embedded/policies/churn.yaml").read_text()
    (tmp_path / "churn.yaml").write_text(
        text.replace("file:../../profiles/churn.json", "models:/churn@champion")
    )
    policies, _ = load_policies(tmp_path)
    now = [0.0]
    loader = ProfileLoader(policies, tracking_uri="http://127.0.0.1:9", clock=lambda: now[0])

    def down(*_: Any) -> Any:
        raise ProfileMissing("down")

    loader._from_registry = down  # type: ignore[method-assign]
    delays = []
    for _ in range(8):
        with pytest.raises(ProfileMissing):
            loader("churn", None)
        until, delay, _msg = loader._failed[("models:/churn@champion", None)]
        delays.append(delay)
        now[0] = until
    assert delays == [30, 60, 120, 240, 480, 600, 600, 600]
    assert profiles.RETRY_MAX_S == 600
