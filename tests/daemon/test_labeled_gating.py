"""Labeled examples are stored only for models whose policy retrains: a retrain (manual,
scheduled or by rule) needs the policy's retrain action, so the others' examples would cost
memory and ingest time for nothing. A hot reload that adds a retrain action starts the store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from driftwarden.daemon.app import build_daemon, labeled_store
from driftwarden.daemon.cli import main
from driftwarden.daemon.settings import Settings, load_settings
from driftwarden.daemon.sinks import MemorySink

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "config" / "examples" / "events.jsonl.gz"
RETRAIN = "      - retrain: {trainer: examples.churn:train, gates: {min: {roc_auc: 0.7}}}\n"


def _policies(tmp_path: Path, name: str, *, retrain: bool) -> Path:
    pol = tmp_path / name
    shutil.copytree(ROOT / "config" / "embedded" / "policies", pol)
    shutil.copy(ROOT / "config" / "profiles" / "churn.json", tmp_path / "churn.json")
    policy = pol / "churn.yaml"
    text = policy.read_text().replace("file:../../profiles/churn.json", "file:../churn.json")
    if retrain:
        marker = "    actions: [{alert: log}]\nreceivers:"
        assert marker in text
        text = text.replace(marker, f"    actions:\n      - {{alert: log}}\n{RETRAIN}receivers:")
    policy.write_text(text)
    return pol


def _settings(tmp_path: Path, name: str, policies: Path) -> Settings:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {EVENTS}}}\npolicies: {policies}\n"
        f"state: {{dir: {tmp_path / name}}}\nhttp: {{enabled: false}}\n"
    )
    return load_settings(cfg, env={})


def test_examples_are_stored_only_for_a_policy_that_retrains(tmp_path: Path) -> None:
    """Same events: no stored examples without a retrain action, thousands with one."""
    counts = {}
    for retrain in (False, True):
        name = "with" if retrain else "without"
        settings = _settings(tmp_path, name, _policies(tmp_path, f"pol-{name}", retrain=retrain))
        daemon = build_daemon(settings, sink=MemorySink())
        summary = daemon.run(max_events=20_000)
        assert summary.valid == 20_000
        counts[retrain] = labeled_store(settings).count("churn")
    assert counts[False] == 0
    assert counts[True] > 1_000


def test_a_reload_that_adds_a_retrain_action_starts_the_store(tmp_path: Path) -> None:
    """The answer is asked again of each new policy set (hot reload)."""
    without = _policies(tmp_path, "pol-without", retrain=False)
    settings = _settings(tmp_path, "state", without)
    daemon = build_daemon(settings, sink=MemorySink())
    daemon.run(max_events=10_000)
    assert labeled_store(settings).count("churn") == 0
    with_retrain = _policies(tmp_path, "pol-with", retrain=True)
    assert daemon.reload_policies(str(with_retrain)) == []
    daemon.run(max_events=20_000)  # counted from the start: 10 000 more
    assert labeled_store(settings).count("churn") > 500


def test_status_reports_the_stored_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``driftwarden status`` gives each model's stored labeled examples next to its counters."""
    settings = _settings(tmp_path, "state", _policies(tmp_path, "pol", retrain=True))
    build_daemon(settings, sink=MemorySink()).run(max_events=20_000)
    stored = labeled_store(settings).count("churn")
    assert stored > 1_000
    assert main(["status", "--config", str(tmp_path / "state.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in out if line.startswith("{")]  # not the log lines
    churn = [r for r in rows if r.get("model") == "churn"]
    assert churn and all(r["labeled_examples"] == stored for r in churn)
    assert sum(r["join"]["matched"] for r in churn) >= stored
    assert all("drift" in r["detectors"] for r in churn)  # judged: its detectors are built
    units = [r for r in rows if "offsets" in r]
    assert units and all(r["unmonitored"] == {} for r in units)
