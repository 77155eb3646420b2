"""Local checkpoints (atomic, versioned) and settings (strict keys, env overrides)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from driftwarden.daemon.checkpoint import CheckpointError, LocalCheckpointStore
from driftwarden.daemon.settings import ConfigError, load_settings, parse_duration


def test_checkpoint_round_trip_and_no_temp_left(tmp_path: Path) -> None:
    """A saved checkpoint loads back equal; the temp file is renamed away."""
    store = LocalCheckpointStore(tmp_path)
    store.save("p0", {"offsets": [["predictions", 0, 10]], "models": {}})
    doc = store.load("p0")
    assert doc is not None and doc["offsets"] == [["predictions", 0, 10]] and doc["version"] == 1
    assert not list(tmp_path.glob("*.tmp"))
    assert store.load("p1") is None


def test_checkpoint_unknown_version_is_refused(tmp_path: Path) -> None:
    """A checkpoint from another format version is refused with a plain sentence."""
    (tmp_path / "checkpoint-p0.json").write_text(
        json.dumps({"format": "driftwarden.checkpoint", "version": 99})
    )
    with pytest.raises(
        CheckpointError, match="checkpoint version 99; this driftwarden reads version 1"
    ):
        LocalCheckpointStore(tmp_path).load("p0")


def test_settings_env_override_and_unknown_key(tmp_path: Path) -> None:
    """DRIFTWARDEN_A__B overrides a.b; an unknown key is an error naming file and key."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text("kafka:\n  group_id: g1\n")
    s = load_settings(
        cfg, env={"DRIFTWARDEN_KAFKA__GROUP_ID": "g2", "DRIFTWARDEN_HTTP__PORT": "9999"}
    )
    assert s["kafka"]["group_id"] == "g2" and s["http"]["port"] == 9999
    cfg.write_text("kafka:\n  group: g1\n")
    with pytest.raises(ConfigError, match=r"driftwarden.yaml:2: kafka.group: unknown key"):
        load_settings(cfg, env={})


def test_settings_errors_name_the_line_or_the_variable(tmp_path: Path) -> None:
    """Each error says where the bad value came from: ``file:line`` for a key of the file (the
    key's own line, nested or in a flow mapping), the variable for an environment override
    (which wins over the file), the file alone for a value it lacks; listed as the file reads."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        "source: file\n"  # file.events missing: no line to name
        "kafka:\n"
        "  bootstrap_servers: b:9092\n"
        "  max_poll_records: 0\n"
        "checkpoint: {every: soon, max_share: 2}\n"
        "http:\n"
        "  port: 9308\n"
    )
    env = {"DRIFTWARDEN_HTTP__PORT": "70000", "DRIFTWARDEN_JOIN__TTLL": "1d"}
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env=env)
    # In the file's order, then the file's errors without a line, then the environment's.
    assert str(err.value).splitlines() == [
        f"{cfg}:4: kafka.max_poll_records: must be a whole number ≥ 1, got 0",
        f"{cfg}:5: checkpoint.every: 'soon' is not a duration (use e.g. 30s, 5m, 1h, 7d)",
        f"{cfg}:5: checkpoint.max_share: must be a number in (0, 1], got 2",
        f"{cfg}: file.events: the file source needs an events file (JSONL)",
        "environment (DRIFTWARDEN_JOIN__TTLL): join.ttll: unknown key (known here: "
        "compress, max_entries, ttl)",
        "environment (DRIFTWARDEN_HTTP__PORT): http.port: must be a port number 0-65535 "
        "(0: any free port), got 70000",
    ]


def test_settings_bad_values_all_reported(tmp_path: Path) -> None:
    """Every bad value is reported at once."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text("join: {ttl: soon}\nhttp: {port: -1}\nsource: carrier-pigeon\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    text = str(err.value)
    assert "join.ttl" in text and "http.port" in text and "source" in text


def test_max_future_skew_is_a_duration_or_null(tmp_path: Path) -> None:
    from driftwarden.daemon.app import options_from

    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text("limits:\n  max_future_skew: soonish\n")
    with pytest.raises(ConfigError, match=r"driftwarden.yaml:2: limits.max_future_skew: "):
        load_settings(cfg, env={})
    cfg.write_text("limits: {max_future_skew: 2h}\n")
    assert options_from(load_settings(cfg, env={})).max_future_skew_s == 7200
    cfg.write_text("limits: {max_future_skew: null}\n")
    assert options_from(load_settings(cfg, env={})).max_future_skew_s is None
    cfg.write_text("limits: {max_message_bytes: 1000}\n")
    assert options_from(load_settings(cfg, env={})).max_future_skew_s == 86400


def test_durations() -> None:
    """Durations accept units and plain seconds."""
    assert parse_duration("30s") == 30 and parse_duration("2h") == 7200 and parse_duration(5) == 5
    with pytest.raises(ConfigError):
        parse_duration("fortnight")


def test_shipped_configs_are_valid() -> None:
    """The config files in config/ load with their defaults."""
    for cfg in sorted(Path("config").glob("driftwarden*.yaml")):
        load_settings(cfg, env={})


def test_kafka_security_merges_per_key_and_env_secrets_stay_strings(tmp_path: Path) -> None:
    """The file names the mechanism, the environment adds the secret: one merged mapping; a
    password that YAML would read as a number or a bool stays the exact string."""
    cfg = tmp_path / "dw.yaml"
    cfg.write_text(
        "kafka:\n  security: {security_protocol: SASL_SSL, sasl_mechanism: SCRAM-SHA-512,\n"
        "             sasl_plain_username: driftwarden}\n"
    )
    env = {
        "DRIFTWARDEN_KAFKA__SECURITY__SASL_PLAIN_PASSWORD": "012345",
        "DRIFTWARDEN_KAFKA__SECURITY__SSL_CHECK_HOSTNAME": "false",
    }
    sec = load_settings(cfg, env=env)["kafka"]["security"]
    assert sec == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "driftwarden",
        "sasl_plain_password": "012345",
        "ssl_check_hostname": False,
    }
    for secret in ("yes", "true", "1e3"):
        env = {"DRIFTWARDEN_KAFKA__SECURITY__SASL_PLAIN_PASSWORD": secret}
        assert load_settings(cfg, env=env)["kafka"]["security"]["sasl_plain_password"] == secret


@pytest.mark.parametrize("bad", [0, -5, "100ms", True, 1.5])
def test_fetch_max_wait_must_be_a_positive_whole_number(tmp_path: Path, bad: object) -> None:
    """0 would make an idle consumer fetch in a busy loop; the error names the key and value."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(f"kafka: {{fetch_max_wait_ms: {bad!r}}}\n")
    with pytest.raises(ConfigError, match=r"kafka.fetch_max_wait_ms: must be a whole number ≥ 1"):
        load_settings(cfg, env={})
    cfg.write_text("kafka: {fetch_max_wait_ms: 250}\n")
    assert load_settings(cfg, env={})["kafka"]["fetch_max_wait_ms"] == 250


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("kafka", "max_poll_records"),
        ("kafka", "max_partition_fetch_bytes"),
        ("join", "max_entries"),
        ("limits", "max_message_bytes"),
        ("checkpoint", "every_events"),
        ("retrain", "labeled_rows"),
    ],
)
def test_counts_of_zero_are_refused_at_load(tmp_path: Path, section: str, key: str) -> None:
    """0 is no count an operator means (kafka-python refuses 0 records per poll only at the
    first poll, the labeled store only once a retrain policy builds it): refused when the file
    is loaded, naming the key; 1 is accepted."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(f"{section}: {{{key}: 0}}\n")
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: must be a whole number ≥ 1, got 0"):
        load_settings(cfg, env={})
    cfg.write_text(f"{section}: {{{key}: 1}}\n")
    assert load_settings(cfg, env={})[section][key] == 1


def test_http_port_is_a_port_number(tmp_path: Path) -> None:
    """0 (any free port) and 65535 load; 65536 and -1 are refused with the key named."""
    cfg = tmp_path / "driftwarden.yaml"
    for ok in (0, 65535):
        cfg.write_text(f"http: {{port: {ok}}}\n")
        assert load_settings(cfg, env={})["http"]["port"] == ok
    for bad in (65536, -1):
        cfg.write_text(f"http: {{port: {bad}}}\n")
        with pytest.raises(ConfigError, match=rf"http\.port: must be a port number 0-65535.*{bad}"):
            load_settings(cfg, env={})


def test_topic_names_are_kafka_names_one_per_role(tmp_path: Path) -> None:
    """A name Kafka refuses, or one topic for two roles (the daemon would read its own dead
    letters as predictions), is an error at the key's line; distinct legal names load."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        "kafka:\n  topics:\n    dlq: predictions\n    alerts: 'on call'\n    windows: ''\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert str(info.value).splitlines() == [
        f"{cfg}:3: kafka.topics.dlq: 'predictions' is already kafka.topics.predictions; "
        "each role needs its own topic",
        f"{cfg}:4: kafka.topics.alerts: must be a Kafka topic name "
        "(1-249 of a-z A-Z 0-9 . _ -), got 'on call'",
        f"{cfg}:5: kafka.topics.windows: must be a Kafka topic name "
        "(1-249 of a-z A-Z 0-9 . _ -), got ''",
    ]
    cfg.write_text("kafka:\n  topics:\n    dlq: team-a.dlq_v2\n    silences: team-a.silences\n")
    topics = load_settings(cfg, env={})["kafka"]["topics"]
    assert topics["dlq"] == "team-a.dlq_v2" and topics["silences"] == "team-a.silences"


def test_group_instance_id_is_null_or_a_legal_id(tmp_path: Path) -> None:
    """Static membership is off by default; an id Kafka refuses is named at its line."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text("kafka:\n  group_id: dw\n")
    assert load_settings(cfg, env={})["kafka"]["group_instance_id"] is None
    env = {"DRIFTWARDEN_KAFKA__GROUP_INSTANCE_ID": "driftwarden-0"}
    assert load_settings(cfg, env=env)["kafka"]["group_instance_id"] == "driftwarden-0"
    cfg.write_text("kafka:\n  group_id: dw\n  group_instance_id: 'host:/var/lib/dw'\n")
    with pytest.raises(ConfigError, match=rf"{cfg}:3: kafka\.group_instance_id: must be null or"):
        load_settings(cfg, env={})


def test_join_compress_is_true_or_false(tmp_path: Path) -> None:
    """``join.compress`` defaults to true, takes false, and a string is refused at its line."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text("log: {level: info}\n")
    assert load_settings(cfg, env={})["join"]["compress"] is True
    cfg.write_text("join: {compress: false}\n")
    assert load_settings(cfg, env={})["join"]["compress"] is False
    cfg.write_text("log: {level: info}\njoin:\n  compress: 'yes'\n")
    with pytest.raises(
        ConfigError, match=r"driftwarden\.yaml:3.*join\.compress: must be true or false"
    ):
        load_settings(cfg, env={})
