"""`driftwarden demo` end to end: MLflow on SQLite, the in-process source, the real daemon."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from driftwarden.daemon.demo import DemoResult, InProcessSource, run_demo
from driftwarden.retrain.registry import Registry


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, str]:
    """One demo run shared by the tests of this module (it takes about ten seconds)."""
    out = io.StringIO()
    result = run_demo(tmp_path_factory.mktemp("demo") / "run", out=out)
    return result, out.getvalue()


def _rule(result: DemoResult, rule: str, status: str) -> list[dict]:
    return [d for d in result.decisions if d["rule"] == rule and d["status"] == status]


def test_broken_input_alerts_and_falls_back(demo: tuple[DemoResult, str]) -> None:
    """The zero-filled incident fires broken-input with an on-call alert and a fallback."""
    result, _ = demo
    fired = _rule(result, "broken-input", "firing")
    assert len(fired) == 1
    d = fired[0]
    assert d["detectors"]["quality"] is True
    kinds = {
        (a["type"], a["params"].get("receiver") or a["params"].get("to")) for a in d["actions"]
    }
    assert ("alert", "oncall") in kinds and ("fallback", "previous") in kinds
    spiked = {t["feature"] for t in d["evidence"]["quality"]["evidence"]["top"]}
    assert "days_since_last_login" in spiked


def test_fallback_moved_serving_and_routed_back(demo: tuple[DemoResult, str]) -> None:
    """Serving moved to `previous` (v1) during the incident and back to the champion after."""
    result, _ = demo
    assert [(r["action"], r["version"]) for r in result.routes] == [
        ("fallback", "1"),
        ("route_back", "2"),
    ]
    assert len(_rule(result, "broken-input", "resolved")) == 1
    registry = Registry(result.mlflow_uri)
    serving_tags = registry.model_version("churn", "1").tags
    assert serving_tags["driftwarden.alias.serving.set_by"] == "driftwarden"
    assert "broken-input" in serving_tags["driftwarden.alias.serving.reason"]
    assert registry.version_by_alias("churn", "serving") == "2"
    assert registry.version_by_alias("churn", "champion") == "2"


def test_predictions_during_fallback_carry_the_fallback_version(
    demo: tuple[DemoResult, str],
) -> None:
    """The demo's serving app scored with whatever `serving` pointed at: v1 windows exist."""
    result, _ = demo
    windows = [orjson.loads(x) for x in result.windows_path.read_bytes().splitlines()]
    versions = [w["model_version"] for w in windows if w["stream"] == "predictions"]
    assert versions[0] == "2" and versions[-1] == "2"
    assert "1" in versions


def test_retrain_during_incident_is_blocked_by_the_data_gate(
    demo: tuple[DemoResult, str],
) -> None:
    """The operator's retrain during the incident stops at the data gate, naming the feature."""
    result, _ = demo
    manual = [o for o in result.retrain_outcomes if o["rule"] == "manual-retrain"]
    assert len(manual) == 1
    assert manual[0]["status"] == "blocked_by_data_gate"
    assert manual[0]["version"] is None
    assert any("days_since_last_login" in r for r in manual[0]["reasons"])


def test_drift_retrain_registers_a_challenger(demo: tuple[DemoResult, str]) -> None:
    """The population shift fires `drifted` after two windows; its retrain becomes challenger."""
    result, _ = demo
    fired = _rule(result, "drifted", "firing")
    assert len(fired) == 1
    assert fired[0]["detectors"]["drift"] is True
    assert fired[0]["detectors"]["quality"] is False
    outcomes = [o for o in result.retrain_outcomes if o["rule"] == "drifted"]
    assert [o["status"] for o in outcomes] == ["registered"]
    version = outcomes[0]["version"]
    registry = Registry(result.mlflow_uri)
    assert registry.version_by_alias("churn", "challenger") == version
    assert registry.version_by_alias("churn", "champion") == "2"  # promote: manual
    assert registry.load_profile("churn", version).features


def test_retrain_runs_carry_the_report_of_what_led_to_them(demo: tuple[DemoResult, str]) -> None:
    """Every retrain run (registered or blocked) has driftwarden's HTML report attached."""
    from mlflow.tracking import MlflowClient

    result, _ = demo
    client = MlflowClient(result.mlflow_uri)
    runs = [o["run_id"] for o in result.retrain_outcomes if o.get("run_id")]
    assert runs
    for run_id in runs:
        html = client.download_artifacts(run_id, "driftwarden/report.html")
        text = open(html, encoding="utf-8").read()
        assert "<svg" in text and "churn" in text


def test_outputs_and_story(demo: tuple[DemoResult, str]) -> None:
    """The report, the JSONL outputs and the printed story (with the MLflow UI command) exist."""
    result, printed = demo
    assert result.report_path.is_file()
    assert "manual-retrain" in result.report_path.read_text(encoding="utf-8")
    assert result.decisions_path.is_file() and result.windows_path.is_file()
    assert f"mlflow ui --backend-store-uri {result.mlflow_uri}" in printed
    assert "blocked_by_data_gate" in printed and "challenger -> v" in printed
    assert result.mlflow_uri == f"sqlite:///{result.directory / 'mlflow.db'}"
    experiment = Registry(result.mlflow_uri).client.get_experiment_by_name("driftwarden/churn")
    assert experiment.artifact_location.startswith(result.directory.as_uri())


def test_refuses_a_directory_with_an_earlier_demo(demo: tuple[DemoResult, str]) -> None:
    """A second run into the same directory is refused instead of mixing registries."""
    result, _ = demo
    from driftwarden.daemon.app import StartupError

    with pytest.raises(StartupError, match="already exists"):
        run_demo(result.directory, out=io.StringIO())


def test_in_process_source_polls_in_order_and_seeks() -> None:
    """The in-process source hands records over in order, keyed by model, and honours seek."""
    src = InProcessSource()
    assert src.feed([b"a", b"b", b"c"]) == 3
    first = src.poll(2, 0.0)
    assert [(r.offset, r.value, r.key) for r in first] == [(0, b"a", b"churn"), (1, b"b", b"churn")]
    assert not src.exhausted
    assert [r.value for r in src.poll(10, 0.0)] == [b"c"]
    assert src.exhausted
    src.seek({(InProcessSource.TOPIC, 0): 1})
    assert [r.value for r in src.poll(10, 0.0)] == [b"b", b"c"]


def test_demo_policy_is_valid() -> None:
    """The demo's policy file loads without errors."""
    from driftwarden.daemon.app import load_policy_set
    from driftwarden.daemon.demo import DEMO_POLICIES

    policies = load_policy_set(DEMO_POLICIES)
    assert Path(policies.policies[0].source).parent == DEMO_POLICIES


def test_operator_retrain_command_runs_the_gated_pipeline(
    demo: tuple[DemoResult, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`driftwarden retrain churn` on the demo's registry and labeled store: one gated attempt,
    recorded as a manual-retrain decision, with an MLflow run tagged with its action key."""
    import json

    from mlflow.tracking import MlflowClient

    from driftwarden.daemon.cli import main
    from driftwarden.daemon.demo import DEMO_POLICIES, STORE_ROWS

    result = demo[0]
    cfg = result.directory / "driftwarden-cli.yaml"
    cfg.write_text(
        f"policies: {DEMO_POLICIES}\nstate: {{dir: {result.directory / 'state'}}}\n"
        f"mlflow: {{tracking_uri: '{result.mlflow_uri}'}}\n"
        f"retrain: {{labeled_rows: {STORE_ROWS}}}\n"
    )
    capsys.readouterr()
    code = main(
        ["retrain", "churn", "--reason", "weekly refresh", "--by", "ops", "--config", str(cfg)]
    )
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["decision"]["rule"] == "manual-retrain"
    assert doc["decision"]["reasons"] == ["weekly refresh"]
    outcome = doc["outcome"]
    assert outcome["status"] in ("registered", "gates_failed")
    assert code == (0 if outcome["status"] == "registered" else 1)
    run = MlflowClient(result.mlflow_uri).get_run(outcome["run_id"])
    assert run.data.tags["driftwarden.action_key"] == doc["decision"]["actions"][0]["key"]


def test_approve_then_rollback_from_the_command_line(
    demo: tuple[DemoResult, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`driftwarden approve` makes the challenger champion (old one kept as previous);
    `driftwarden rollback` moves champion back; each move prints its audit record.
    (Last in the module: it changes the demo's registry.)"""
    import json

    from driftwarden.daemon.cli import main

    result, _ = demo
    registry = Registry(result.mlflow_uri)
    challenger = registry.version_by_alias("churn", "challenger")
    uri = ["--tracking-uri", result.mlflow_uri, "--actor", "alice"]
    capsys.readouterr()
    assert main(["approve", "churn", str(challenger), "--reason", "report reviewed", *uri]) == 0
    moves = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(m["alias"] == "champion" and m["version"] == challenger for m in moves)
    assert all(m["actor"] == "alice" and m["reason"].endswith("report reviewed") for m in moves)
    assert registry.version_by_alias("churn", "champion") == challenger
    assert registry.version_by_alias("churn", "previous") == "2"
    assert main(["rollback", "churn", "--reason", "canary errors", *uri]) == 0
    assert registry.version_by_alias("churn", "champion") == "2"
