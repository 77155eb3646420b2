"""The operator-facing surface: receivers that redirect, the outbox's retry bound, the CLI's
one-sentence failures, environment overrides, and the settings checks ``validate`` relies on.
No Kafka broker or MLflow server is needed (an unreachable MLflow is a closed local port)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from driftwarden.daemon.cli import main
from driftwarden.daemon.outbox import Outbox, backoff_delay
from driftwarden.daemon.settings import ConfigError, load_settings
from driftwarden.policies.alerts import FIRING_HOLD_S, Alert
from driftwarden.policies.receivers import build_receiver
from driftwarden.policies.receivers.base import Delivery

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def closed_port() -> int:
    """A local port nothing listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> object:
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(text)
    return load_settings(cfg, env=env or {})


def refused(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


# --- 1. a receiver url that redirects is a failed delivery ------------------------------------


@pytest.fixture
def redirecting() -> Iterator[tuple[str, list[tuple[str, str, int]]]]:
    """A server that moves ``/hook`` to ``/hook/`` (301) and answers 200 to anything else."""
    seen: list[tuple[str, str, int]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            seen.append((self.command, self.path, len(body)))
            if self.path in ("/hook", "/api/v2/alerts"):
                self.send_response(301)
                self.send_header("Location", self.path + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


ALERT = Alert(
    fingerprint="abc",
    labels={"alertname": "DriftwardenBrokenInput", "model": "churn", "severity": "critical"},
    annotations={"summary": "x"},
    starts_at="2026-01-01T00:00:00Z",
)


@pytest.mark.parametrize(("kind", "path"), [("webhook", "/hook"), ("alertmanager", "")])
def test_a_redirect_is_a_failed_delivery_naming_the_target(
    redirecting: tuple[str, list[tuple[str, str, int]]], kind: str, path: str
) -> None:
    """urllib would re-send the POST as a body-less GET and count its 200 as delivered: the
    redirect is not followed, and the delivery fails for good naming the status and target."""
    base, seen = redirecting
    receiver = build_receiver("r", {"type": kind, "url": base + path})
    d = receiver.send([ALERT], key="k")
    assert not d.ok and not d.retryable
    assert d.error is not None
    assert "HTTP 301" in d.error
    endpoint = "/hook" if kind == "webhook" else "/api/v2/alerts"
    assert f"{base}{endpoint}/" in d.error  # the Location, made absolute
    assert "set the receiver's url to the final address" in d.error
    assert [m for m, _, _ in seen] == ["POST"]  # no GET to the new address


def test_a_redirected_alert_job_is_not_done(
    tmp_path: Path, redirecting: tuple[str, list[tuple[str, str, int]]]
) -> None:
    """In the outbox, the job of a redirecting receiver ends dead with that error, not done."""
    base, _ = redirecting
    receiver = build_receiver("r", {"type": "webhook", "url": base + "/hook"})
    with Outbox(tmp_path / "o.sqlite") as box:
        box.enqueue("k", "alert", {}, now=0.0)
        (result,) = box.run_due(0.0, {"alert": lambda _: receiver.send([ALERT], key="k")})
        assert result.outcome == "dead"
        job = box.get("k")
        assert job is not None and job.state == "dead" and "HTTP 301" in str(job.last_error)


# --- 2. the outbox retries until delivered ----------------------------------------------------


def test_outbox_retries_until_delivered_by_default(tmp_path: Path) -> None:
    """As the settings and the README say: no attempt limit (it gave up after 50, ~2.7 h);
    the backoff stays capped at cap_s however many attempts were made."""
    with Outbox(tmp_path / "o.sqlite", base_s=1.0, cap_s=300.0) as box:
        assert box.max_attempts is None
        box.enqueue("k", "alert", {}, now=0.0)
        now = 0.0
        for _ in range(120):
            (result,) = box.run_due(now, {"alert": lambda _: Delivery.retry("refused")})
            assert result.outcome == "retry"
            assert result.next_at is not None and result.next_at - now <= 300.0
            now = result.next_at
        job = box.get("k")
        assert job is not None and job.state == "pending" and job.attempts == 120
        (result,) = box.run_due(now, {"alert": lambda _: Delivery.success()})
        assert result.outcome == "done"


def test_backoff_does_not_overflow_after_many_attempts() -> None:
    """Unbounded attempts: 2.0**1024 would raise OverflowError (after ~3.5 days at the cap)."""
    for attempts in (1_025, 10_000):
        assert 150.0 <= backoff_delay("k", attempts, base_s=1.0, cap_s=300.0) <= 300.0


# --- 3. the CLI: one sentence, exit 2, and MLflow failing fast --------------------------------


def test_registry_errors_are_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version or alias the registry lacks is `driftwarden: ...`, exit 2, not a traceback."""
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    capsys.readouterr()
    assert main(["approve", "churn", "3", "--reason", "r", "--tracking-uri", uri]) == 2
    assert "driftwarden: model 'churn' has no version '3'" in capsys.readouterr().err
    assert main(["rollback", "churn", "--reason", "r", "--tracking-uri", uri]) == 2
    assert "driftwarden: model 'churn' has no 'previous' version" in capsys.readouterr().err


def test_approve_with_mlflow_down_fails_fast_in_one_sentence(tmp_path: Path) -> None:
    """MLflow's own retries took ~4 minutes and ended in a traceback; `approve` caps them as
    `run` does (unless the operator set MLFLOW_HTTP_REQUEST_*) and says it in one line."""
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "driftwarden.daemon.cli", "approve", "churn", "3"]
        + ["--reason", "r", "--tracking-uri", f"http://127.0.0.1:{closed_port()}"],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
        cwd=tmp_path,
    )
    assert time.monotonic() - t0 < 60, res.stderr[-2000:]
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("driftwarden: the MLflow server did not answer"), last


def test_profile_logged_to_mlflow_down_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`profile --run-id` talks to MLflow too: capped retries, one sentence, exit 2."""
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,x\n2,y\n3,x\n")
    uri = f"http://127.0.0.1:{closed_port()}"
    args = ["profile", "--data", str(data), "--model", "m", "--run-id", "r1"]
    assert main([*args, "--tracking-uri", uri]) == 2
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert "driftwarden: could not log the profile to MLflow run r1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("data.json", "a,b\n", "cannot read table"),
        ("bad.csv", 'a,b\n1,2,3,4\n"x\n', "bad.csv: cannot read the table: Error tokenizing"),
        ("empty.csv", "", "empty.csv: cannot read the table"),
    ],
)
def test_profile_of_an_unreadable_table_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, message: str
) -> None:
    data = tmp_path / name
    data.write_text(text)
    rc = main(["profile", "--data", str(data), "--model", "m", "--out", str(tmp_path / "p.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("driftwarden: ") and message in err and err.count("\n") == 1


def test_report_of_a_file_that_is_not_jsonl_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "w.jsonl"
    bad.write_text("not json\n")
    rc = main(["report", "--windows", str(bad), "--decisions", str(bad), "--out", "r.html"])
    assert rc == 2
    assert f"driftwarden: {bad}:1: not valid JSON" in capsys.readouterr().err


# --- 4. environment values: YAML only where the setting is not a string -----------------------


@pytest.mark.parametrize(
    ("var", "raw", "path", "value"),
    [
        (
            "DRIFTWARDEN_KAFKA__TOPICS__PREDICTIONS",
            "2024",
            ("kafka", "topics", "predictions"),
            "2024",
        ),
        ("DRIFTWARDEN_KAFKA__TOPICS__LABELS", "on", ("kafka", "topics", "labels"), "on"),
        ("DRIFTWARDEN_KAFKA__GROUP_ID", "123", ("kafka", "group_id"), "123"),
        ("DRIFTWARDEN_KAFKA__GROUP_ID", "no", ("kafka", "group_id"), "no"),
        ("DRIFTWARDEN_KAFKA__CLIENT_ID", "@driftwarden", ("kafka", "client_id"), "@driftwarden"),
        ("DRIFTWARDEN_KAFKA__GROUP_INSTANCE_ID", "0", ("kafka", "group_instance_id"), "0"),
        ("DRIFTWARDEN_STATE__REPLICA_ID", "1", ("state", "replica_id"), "1"),
        (
            "DRIFTWARDEN_MLFLOW__TRACKING_URI",
            "http://m:5000 #p",
            ("mlflow", "tracking_uri"),
            "http://m:5000 #p",
        ),
        # numbers, booleans and null where the setting takes them
        ("DRIFTWARDEN_HTTP__PORT", "0", ("http", "port"), 0),
        ("DRIFTWARDEN_HTTP__ENABLED", "false", ("http", "enabled"), False),
        ("DRIFTWARDEN_CHECKPOINT__MAX_SHARE", "0.5", ("checkpoint", "max_share"), 0.5),
        ("DRIFTWARDEN_LIMITS__MAX_FUTURE_SKEW", "null", ("limits", "max_future_skew"), None),
        ("DRIFTWARDEN_KAFKA", "{group_id: 007}", ("kafka", "group_id"), "007"),
    ],
)
def test_environment_values_keep_the_type_of_the_setting(
    var: str, raw: str, path: tuple[str, ...], value: object
) -> None:
    got: object = load_settings(None, env={var: raw}).data
    for p in path:
        got = got[p]  # type: ignore[index]
    assert got == value and type(got) is type(value)


def test_environment_security_mapping_keeps_secrets_strings(tmp_path: Path) -> None:
    """The mapping form the shipped config shows reads its values as the per-key variables do
    (a password 123456 stayed an int, 012345 became 5349)."""
    env = {
        "DRIFTWARDEN_KAFKA__SECURITY": "{security_protocol: SASL_SSL, "
        "sasl_plain_password: 012345, ssl_check_hostname: false}"
    }
    assert load_settings(None, env=env)["kafka"]["security"] == {
        "security_protocol": "SASL_SSL",
        "sasl_plain_password": "012345",
        "ssl_check_hostname": False,
    }
    # ... and per key, over the file's mapping (README "Secured Kafka")
    cfg = tmp_path / "dw.yaml"
    cfg.write_text("kafka:\n  security: {security_protocol: SASL_SSL}\n")
    env = {"DRIFTWARDEN_KAFKA__SECURITY__SASL_PLAIN_PASSWORD": "123456"}
    assert load_settings(cfg, env=env)["kafka"]["security"] == {
        "security_protocol": "SASL_SSL",
        "sasl_plain_password": "123456",
    }


def test_environment_value_yaml_cannot_read_is_a_config_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"DRIFTWARDEN_KAFKA__MAX_POLL_RECORDS": "@5"}
    with pytest.raises(ConfigError, match=r"^environment \(DRIFTWARDEN_KAFKA__MAX_POLL_RECORDS\)"):
        load_settings(None, env=env)
    monkeypatch.setenv("DRIFTWARDEN_KAFKA", "{a: [")
    assert main(["status"]) == 2
    assert "driftwarden: environment (DRIFTWARDEN_KAFKA): kafka: not valid YAML" in (
        capsys.readouterr().err
    )


# --- 5. validate: a DRIFTWARDEN_CONFIG that names no file -------------------------------------


def test_validate_reports_a_missing_config_named_by_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(ROOT / "config" / "policies", tmp_path / "config" / "policies")
    shutil.copytree(ROOT / "config" / "profiles", tmp_path / "config" / "profiles")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DRIFTWARDEN_CONFIG", raising=False)
    capsys.readouterr()
    assert main(["validate"]) == 0  # the implicit default config/driftwarden.yaml may be absent
    missing = tmp_path / "driftwarden.yml"
    monkeypatch.setenv("DRIFTWARDEN_CONFIG", str(missing))
    assert main(["validate"]) == 1
    assert f"{missing}: config file not found" in capsys.readouterr().out


# --- 6. setting types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("log:\n  level: verbose\n", ":2: log.level: must be one of debug, info, warning, error"),
        ("http:\n  enabled: 'false'\n", ":2: http.enabled: must be true or false"),
        ("log:\n  json: 'no'\n", ":2: log.json: must be true or false"),
        ("policies: 5\n", ":1: policies: must be a path"),
        ("file:\n  events: [a, b]\n", ":2: file.events: must be a path or null"),
        ("file:\n  out_dir: 3\n", ":2: file.out_dir: must be a path"),
        ("http:\n  host: 5\n", ":2: http.host: must be a host name"),
        ("kafka:\n  group_id: 123\n", ":2: kafka.group_id: must be a string"),
        ("kafka:\n  client_id: 7\n", ":2: kafka.client_id: must be a string"),
        ("kafka:\n  security: SASL_SSL\n", ":2: kafka.security: must be a mapping"),
        ("kafka:\n  auto_offset_reset: latets\n", ":2: kafka.auto_offset_reset: must be earliest"),
        ("kafka:\n  poll_timeout_ms: '500'\n", ":2: kafka.poll_timeout_ms: must be a whole number"),
        ("kafka:\n  poll_timeout_ms: 0\n", ":2: kafka.poll_timeout_ms: must be a whole number"),
        ("kafka:\n  session_timeout_ms: -1\n", ":2: kafka.session_timeout_ms: must be a whole"),
        (
            "kafka:\n  max_poll_interval_ms: 1.5\n",
            ":2: kafka.max_poll_interval_ms: must be a whole",
        ),
        ("state:\n  max_bytes: 16MB\n", ":2: state.max_bytes: must be a whole number"),
    ],
)
def test_setting_types_are_refused_at_their_line(tmp_path: Path, text: str, message: str) -> None:
    assert message in refused(tmp_path, text)


def test_security_string_with_an_env_password_is_a_config_error(tmp_path: Path) -> None:
    """The file's `security: SASL_SSL` merged with a per-key variable was a TypeError."""
    env = {"DRIFTWARDEN_KAFKA__SECURITY__SASL_PLAIN_PASSWORD": "s3cret"}
    assert ":2: kafka.security: must be a mapping" in refused(
        tmp_path, "kafka:\n  security: SASL_SSL\n", env
    )


def test_every_shipped_daemon_config_loads() -> None:
    """config/driftwarden.yaml, config/embedded/driftwarden.yaml, ... pass the new checks."""
    configs = sorted((ROOT / "config").rglob("driftwarden*.yaml"))
    assert len(configs) >= 2
    for cfg in configs:
        load_settings(cfg, env={})


def test_valid_values_are_still_accepted(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "log: {level: WARNING, json: false}\nkafka: {auto_offset_reset: latest,"
        " bootstrap_servers: [a:9092, b:9092]}\nlimits: {max_future_skew: 0}\n"
        "scheduler: {alert_resend: 299s}\nactions: {retry_base: 5m, retry_max: 5m}\n",
    )
    assert s["kafka"]["bootstrap_servers"] == ["a:9092", "b:9092"]  # type: ignore[index]


# --- 7. scheduler.alert_resend below the firing hold -------------------------------------------


@pytest.mark.parametrize("value", ["5m", "300", "10m"])
def test_alert_resend_at_or_above_the_firing_hold_is_refused(tmp_path: Path, value: str) -> None:
    """Each firing send holds the alert for FIRING_HOLD_S: resent less often, it flaps."""
    assert FIRING_HOLD_S == 300.0
    message = refused(tmp_path, f"scheduler:\n  alert_resend: {value}\n")
    assert ":2: scheduler.alert_resend: must be below 300s" in message


# --- 8. intervals of zero ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("checkpoint", "every"),
        ("join", "ttl"),
        ("scheduler", "policy_reload"),
        ("scheduler", "outbox"),
        ("scheduler", "alert_resend"),
        ("scheduler", "freshness"),
        ("actions", "retry_base"),
        ("actions", "retry_max"),
    ],
)
@pytest.mark.parametrize("zero", ["0", "0s", "0ms"])
def test_zero_intervals_are_refused_at_their_line(
    tmp_path: Path, section: str, key: str, zero: str
) -> None:
    message = refused(tmp_path, f"{section}:\n  {key}: {zero}\n")
    assert f":2: {section}.{key}: must be longer than 0" in message


def test_retry_base_above_retry_max_and_infinite_durations_are_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "actions:\n  retry_base: 10m\n  retry_max: 1s\n")
    assert ":2: actions.retry_base: must not be longer than actions.retry_max" in message
    assert ":2: checkpoint.every: inf is not a duration" in refused(
        tmp_path, "checkpoint:\n  every: .inf\n"
    )


def test_a_thread_job_of_interval_zero_is_refused() -> None:
    """Event.wait(0) in a loop spins a core: the scheduler refuses it too."""
    from queue import SimpleQueue

    from driftwarden.daemon.wiring import Scheduler

    sched = Scheduler(SimpleQueue())
    with pytest.raises(ValueError, match="longer than 0"):
        sched.every_on_thread(0.0, lambda: None, "outbox")
