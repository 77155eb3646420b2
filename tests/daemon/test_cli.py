"""The command line as users run it: one clear sentence on errors, deterministic replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from driftwarden.daemon.cli import main

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "config" / "embedded"
EVENTS = ROOT / "config" / "examples" / "events.jsonl.gz"


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "driftwarden.daemon.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_config_error_is_one_sentence_not_a_traceback(tmp_path: Path) -> None:
    """A typo in the config names file and key, exits 2, and prints no traceback."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text("kafka:\n  bootstrap: x\n")
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 2
    assert "driftwarden.yaml:2: kafka.bootstrap: unknown key" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_reference_profile_is_one_sentence(tmp_path: Path) -> None:
    """A policy whose profile file is missing stops start-up with one sentence naming it."""
    pol = tmp_path / "policies"
    pol.mkdir()
    text = (EMBEDDED / "policies" / "churn.yaml").read_text()
    (pol / "churn.yaml").write_text(
        text.replace("file:../../profiles/churn.json", "file:nope.json")
    )
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {EVENTS}}}\npolicies: {pol}\n"
        f"state: {{dir: {tmp_path / 'state'}}}\nhttp: {{enabled: false}}\n"
    )
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 2, res.stderr
    assert "churn.yaml:6: reference: profile file" in res.stderr
    assert "nope.json does not exist" in res.stderr
    assert "Traceback" not in res.stderr


def test_http_port_in_use_is_one_sentence(tmp_path: Path) -> None:
    """A second daemon on the same metrics port stops with one sentence naming the address and
    the keys to change (not an OSError traceback), exit 2."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cfg = tmp_path / "driftwarden.yaml"
        cfg.write_text(
            f"source: file\nfile: {{events: {EVENTS}, out_dir: {tmp_path / 'out'}}}\n"
            f"policies: {EMBEDDED / 'policies'}\nstate: {{dir: {tmp_path / 'state'}}}\n"
            f"http: {{enabled: true, host: 127.0.0.1, port: {port}}}\n"
        )
        res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"http: cannot listen on 127.0.0.1:{port} (Address already in use)" in res.stderr
    assert "http.port" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("key", ["state.dir", "file.out_dir"])
def test_a_folder_that_cannot_be_written_is_one_sentence(tmp_path: Path, key: str) -> None:
    """A state or output folder under a plain file stops start-up with one sentence naming the
    setting and the path (it was a traceback, or a failure at the first checkpoint), exit 2."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    folders = {"state.dir": tmp_path / "state", "file.out_dir": tmp_path / "out"}
    folders[key] = blocker / "sub"
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {EVENTS}, out_dir: {folders['file.out_dir']}}}\n"
        f"policies: {EMBEDDED / 'policies'}\nstate: {{dir: {folders['state.dir']}}}\n"
        "http: {enabled: false}\n"
    )
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"{key}: cannot write in {blocker / 'sub'} (Not a directory" in res.stderr
    assert "Traceback" not in res.stderr


def test_validate_reports_file_line_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate: exit 0 for the shipped policies, 1 with file:line for a broken one."""
    assert main(["validate", str(ROOT / "config" / "policies")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (EMBEDDED / "policies" / "churn.yaml").read_text().replace("when: quality", "when: qualty")
    )
    capsys.readouterr()
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:" in out and "qualty" in out


def test_validate_knows_a_config_file_by_its_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon config under any name (prod.yaml) is checked as a config, with file:line, not
    as a policy missing apiVersion; the shipped config and policies pass together."""
    assert (
        main(["validate", str(ROOT / "config/driftwarden.yaml"), str(ROOT / "config/policies")])
        == 0
    )
    prod = tmp_path / "prod.yaml"
    prod.write_text("state:\n  dir: /var/lib/driftwarden\nkafka:\n  max_poll_records: -1\n")
    capsys.readouterr()
    assert main(["validate", str(prod)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{prod}:4: kafka.max_poll_records: must be a whole number ≥ 1, got -1"
    ]
    prod.write_text("state:\n  dir: /var/lib/driftwarden\n")
    assert main(["validate", str(prod)]) == 0


def test_validate_a_config_checks_the_policies_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validating a config also validates its ``policies:`` folder (a broken policy there is
    reported with its file:line), and a folder that does not exist is the config's error at
    the key's line."""
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "churn.yaml").write_text(
        (EMBEDDED / "policies" / "churn.yaml").read_text().replace("when: quality", "when: qualty")
    )
    cfg = tmp_path / "driftwarden-prod.yaml"
    cfg.write_text(f"state:\n  dir: {tmp_path / 'state'}\npolicies: {pol}\n")
    capsys.readouterr()
    assert main(["validate", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert f"{pol / 'churn.yaml'}:" in out and "qualty" in out
    cfg.write_text(f"state:\n  dir: {tmp_path / 'state'}\npolicies: {tmp_path / 'nope'}\n")
    assert main(["validate", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{cfg}:3: policies: {tmp_path / 'nope'} does not exist"), out


def test_validate_reports_a_missing_reference_profile_as_run_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy whose ``file:`` profile is missing passes the file checks but `run` refuses
    it: validate reports it too, at the ``reference:`` line (it said ok)."""
    pol = tmp_path / "policies"
    pol.mkdir()
    text = (EMBEDDED / "policies" / "churn.yaml").read_text()
    (pol / "churn.yaml").write_text(
        text.replace("file:../../profiles/churn.json", "file:nope.json")
    )
    line = 1 + next(i for i, t in enumerate(text.splitlines()) if t.startswith("reference:"))
    capsys.readouterr()
    assert main(["validate", str(pol)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{pol / 'churn.yaml'}:{line}: reference: profile file {pol / 'nope.json'} does not "
        f"exist (build it with `driftwarden profile --data TABLE --model churn --out "
        f"{pol / 'nope.json'}`)."
    ]


@pytest.mark.kafka
def test_status_reads_the_kafka_state_topic(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic_factory: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With ``state.backend: kafka`` the checkpoints live in the state topic: status reads them
    there (it read the local folder, found no checkpoint file and printed nothing), and does
    not create the topic when it is missing."""
    from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

    topic = kafka_topic_factory(1, compact=True)
    writer = KafkaCheckpointStore(kafka_bootstrap, topic, create_topic=False)
    try:
        join = {"counters": {"matched": 5}}
        model = {"events": 12, "labels": 5, "join": join, "profile_version": "3"}
        writer.save_all(
            [
                (
                    "p0",
                    {"offsets": [["predictions", 0, 12]], "invalid": 1, "models": {"churn": model}},
                ),
                ("actions", {"executor": {}}),
            ]
        )
    finally:
        writer.close()
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"state: {{backend: kafka, dir: {tmp_path / 'state'}}}\n"
        f"kafka: {{bootstrap_servers: '{kafka_bootstrap}', topics: {{state: {topic}}}}}\n"
    )
    capsys.readouterr()
    assert main(["status", "--config", str(cfg)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        {
            "model": "churn",
            "unit": "p0",
            "events": 12,
            "labels": 5,
            "join": {"matched": 5},
            "profile_version": "3",
            "detectors": [],
            "labeled_examples": 0,
        },
        {"unit": "p0", "offsets": [["predictions", 0, 12]], "invalid": 1, "unmonitored": {}},
    ]
    missing = f"{topic}-absent"
    cfg.write_text(cfg.read_text().replace(f"state: {topic}", f"state: {missing}"))
    assert main(["status", "--config", str(cfg)]) == 2
    assert "does not exist and creating it is turned off" in capsys.readouterr().err


def test_policy_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """The example policy tests pass through `driftwarden test`."""
    files = sorted(str(p) for p in (ROOT / "config" / "policy-tests").glob("*.yaml"))
    assert files and main(["test", *files]) == 0


def test_replay_twice_is_byte_identical_and_report_renders(tmp_path: Path) -> None:
    """The same events replayed twice give byte-identical decisions; the report is built."""
    outs = []
    for i in range(2):
        out = tmp_path / f"d{i}.jsonl"
        win = tmp_path / f"w{i}.jsonl"
        assert (
            main(
                [
                    "replay",
                    "--policies",
                    str(EMBEDDED / "policies"),
                    "--events",
                    str(EVENTS),
                    "--out",
                    str(out),
                    "--windows-out",
                    str(win),
                ]
            )
            == 0
        )
        outs.append((out.read_bytes(), win.read_bytes()))
    assert outs[0] == outs[1]
    decisions = outs[0][0].decode().splitlines()
    assert any('"rule":"broken-input"' in d for d in decisions)
    html = tmp_path / "r.html"
    assert (
        main(
            [
                "report",
                "--windows",
                str(tmp_path / "w0.jsonl"),
                "--decisions",
                str(tmp_path / "d0.jsonl"),
                "--out",
                str(html),
            ]
        )
        == 0
    )
    assert "<svg" in html.read_text()


def test_embedded_run_is_the_readme_command(tmp_path: Path) -> None:
    """The README's first command runs on embedded defaults and finds the incident."""
    env = {
        "DRIFTWARDEN_STATE__DIR": str(tmp_path / "state"),
        "DRIFTWARDEN_FILE__OUT_DIR": str(tmp_path / "out"),
    }
    res = run_cli("run", "--config", "config/embedded/driftwarden.yaml", cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = res.stdout.strip().splitlines()[-1]
    assert '"valid": 48005' in summary and '"stopped_by": "end of input"' in summary
    decisions = (tmp_path / "out" / "driftwarden.decisions.jsonl").read_text()
    assert "broken-input" in decisions
    # Run again on the same state: it resumes from its checkpoint and counts nothing twice.
    again = run_cli("run", "--config", "config/embedded/driftwarden.yaml", cwd=ROOT, env=env)
    assert again.returncode == 0 and '"records": 0' in again.stdout


def test_silences_mute_notifications(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A silence added with the CLI turns a firing decision into a suppressed one."""
    import orjson

    from driftwarden.daemon.app import build_daemon
    from driftwarden.daemon.settings import load_settings
    from driftwarden.daemon.sinks import MemorySink
    from driftwarden.policies.silences import SilenceSet, add_silence

    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {EVENTS}}}\npolicies: {EMBEDDED / 'policies'}\n"
        f"state: {{dir: {tmp_path / 'state'}}}\nhttp: {{enabled: false}}\n"
    )
    settings = load_settings(cfg, env={})
    s = add_silence(
        tmp_path / "state" / "silences.json",
        model="churn",
        rule="broken-input",
        starts_at=0,
        ends_at=4e9,
        created_by="test",
        comment="planned migration",
    )
    sink = MemorySink()
    daemon = build_daemon(settings, sink=sink)
    daemon.set_silences(SilenceSet((s,)))
    daemon.run()
    decisions = [orjson.loads(v) for _, v, _ in sink.records["driftwarden.decisions"]]
    broken = [d for d in decisions if d.get("rule") == "broken-input"]
    assert broken and all(d["status"] == "suppressed" for d in broken)
    assert any("planned migration" in r for d in broken for r in d["reasons"])


@pytest.mark.kafka
def test_silences_are_shared_through_their_kafka_topic(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic_factory: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With ``state.backend: kafka`` a silence added with the CLI lands in the silences topic
    (created by the first writer), not in one replica's folder nor in the state topic: another
    replica (its own ``state.dir``) reads it, and a daemon's scheduler loads it into the
    monitors (it starts now: the recorded events are older, so only its effect on the muter is
    checked here; the suppression itself is the test above)."""
    import time
    import uuid

    from driftwarden.daemon.app import attach_scheduler, build_daemon
    from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore
    from driftwarden.daemon.settings import load_settings
    from driftwarden.daemon.sinks import MemorySink
    from driftwarden.policies.silences import SilenceUnit, load_silences

    state = kafka_topic_factory(1, compact=True)
    silences = f"silences-{uuid.uuid4().hex[:8]}"  # missing: `silence add` creates it

    def config(name: str) -> Path:
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(
            f"source: file\nfile: {{events: {EVENTS}}}\npolicies: {EMBEDDED / 'policies'}\n"
            f"state: {{backend: kafka, dir: {tmp_path / name}}}\nhttp: {{enabled: false}}\n"
            f"kafka: {{bootstrap_servers: '{kafka_bootstrap}', "
            f"topics: {{state: {state}, silences: {silences}}}}}\n"
        )
        return cfg

    operator, replica = config("operator"), config("replica")
    args = ["--model", "churn", "--rule", "broken-input", "--for", "2h"]
    assert main(["silence", "add", "--config", str(operator), *args, "--comment", "migration"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "operator" / "silences.json").exists()
    assert main(["silence", "list", "--config", str(replica)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["id"] == added["id"] and listed["active"] is True
    reader = KafkaCheckpointStore(kafka_bootstrap, silences, create_topic=False)
    try:
        assert [s.id for s in load_silences(SilenceUnit(reader))] == [added["id"]]
    finally:
        reader.close()

    daemon = build_daemon(load_settings(replica, env={}), sink=MemorySink())
    scheduler = attach_scheduler(daemon, load_settings(replica, env={}))
    try:
        daemon.run(max_events=100)  # runs the scheduled work queued before it
    finally:
        scheduler.shutdown()
        assert daemon.store is not None
        # The state topic holds checkpoints only: the silences never went there.
        assert "silences" not in daemon.store.units()
        daemon.store.close()
        _delete_topic(kafka_bootstrap, silences)
    reason = daemon.muter.mutes("churn", "broken-input", time.time())
    assert reason is not None and added["id"] in reason and "migration" in reason
    assert all(
        mon.muter is daemon.muter for u in daemon.units.values() for mon in u.models.values()
    )


def _delete_topic(bootstrap: str, topic: str) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()


@pytest.mark.kafka
def test_topics_are_not_created_when_the_operator_provisions_them(
    tmp_path: Path, kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kafka.create_topics: false``: a missing silences (or state) topic is an error naming it,
    and nothing is created."""
    import uuid

    from kafka import KafkaAdminClient

    missing = f"silences-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"state: {{backend: kafka, dir: {tmp_path / 'state'}}}\n"
        f"kafka: {{bootstrap_servers: '{kafka_bootstrap}', create_topics: false, "
        f"topics: {{silences: {missing}}}}}\n"
    )
    assert main(["silence", "list", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"silence topic {missing!r} does not exist and creating it is turned off" in err
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert missing not in admin.list_topics()
    finally:
        admin.close()


def test_demo_command_as_the_readme_runs_it(tmp_path: Path) -> None:
    """`driftwarden demo` from a fresh directory tells the whole story and writes the report;
    running it again starts afresh."""
    for _ in range(2):
        res = run_cli("demo", cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for expected in (
        "broken-input firing",
        "blocked_by_data_gate",
        "route_back",
        "drifted firing",
        "registered",
        "challenger",
        "mlflow ui --backend-store-uri",
    ):
        assert expected in out, expected
    assert (tmp_path / ".driftwarden" / "demo" / "report.html").is_file()
