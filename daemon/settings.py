"""Daemon settings: ``config/driftwarden.yaml`` plus ``DRIFTWARDEN_*`` environment overrides.

Nested keys are joined with a double underscore in the environment:
``DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` sets ``kafka.bootstrap_servers``. An
environment value is read as YAML only where the setting is a number, a boolean or a mapping;
anywhere else it is the exact string (a topic ``2024``, a group id ``no``). Unknown
keys are errors (a typo must not silently fall back to a default); every error names where the
value came from (``file:line``, or the environment variable) and the key path.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml

from driftwarden.policies.alerts import FIRING_HOLD_S

__all__ = ["ConfigError", "Settings", "key_lines", "load_settings", "parse_duration"]

_T = TypeVar("_T")

DEFAULTS: dict[str, Any] = {
    "source": "kafka",  # kafka | file
    "kafka": {
        "bootstrap_servers": "127.0.0.1:9092",
        "group_id": "driftwarden",
        "client_id": "driftwarden",
        "auto_offset_reset": "earliest",
        "max_poll_records": 2000,
        "poll_timeout_ms": 500,
        "session_timeout_ms": 45000,
        "max_poll_interval_ms": 300000,
        # How long the broker may hold a fetch for partitions with nothing new. kafka-python
        # sends one fetch per broker at a time, so while a caught-up partition's fetch waits,
        # the partitions still behind wait too (Kafka's 500 ms default cost a catching-up
        # daemon up to half a second per fetch).
        "fetch_max_wait_ms": 100,
        # How often the consumer refreshes the topics' metadata: input topics that gain
        # partitions are read from the new ones (after a rebalance) within this time.
        "metadata_max_age_ms": 300000,
        # Most bytes a fetch brings per partition (Kafka's default). The consumer holds up to
        # about this much per partition read, so its memory grows with it; a larger message
        # still comes, alone (the broker returns an oversized first batch: KIP-74).
        "max_partition_fetch_bytes": 1048576,
        # Static membership (KIP-345): a replica restarted within session_timeout_ms keeps its
        # partitions, with no rebalance. One id per replica (e.g. the pod name).
        "group_instance_id": None,
        "topics": {
            "predictions": "predictions",
            "labels": "labels",
            "dlq": "driftwarden.dlq",
            "decisions": "driftwarden.decisions",
            "windows": "driftwarden.windows",
            "alerts": "driftwarden.alerts",
            "routing": "driftwarden.routing",
            "state": "driftwarden.state",
            # state.backend kafka: the silences every replica shares (compacted, one record).
            "silences": "driftwarden.silences",
            # state.backend kafka: the labeled examples, so they move with their partition
            # (as many partitions as the input topics; retention retrain.labeled_retention).
            "labeled": "driftwarden.labeled",
        },
        # Passed through to kafka-python as-is (security_protocol, sasl_*, ssl_*).
        "security": {},
        # Create missing output topics at start-up (dlq, decisions, windows, alerts, routing,
        # and with state.backend kafka state, silences and labeled); off where an operator provisions
        # topics: a missing one is then a start-up error.
        "create_topics": True,
    },
    "file": {"events": None, "out_dir": ".driftwarden/out"},
    "policies": "config/policies",
    # backend: local (checkpoints in dir) or kafka (compacted topic kafka.topics.state, so a
    # replica taking over a partition restores its state); dir always holds the action outbox
    # and the labeled store.
    "state": {
        "backend": "local",
        "dir": ".driftwarden/state",
        "max_bytes": 16777216,
        "replica_id": None,
    },
    # max_share: at most this share of the time goes to count- or time-triggered checkpoints
    # (their cost grows with the state, e.g. predictions waiting for labels).
    "checkpoint": {"every_events": 50000, "every": "30s", "max_share": 0.1},
    "join": {"ttl": "7d", "max_entries": 200000, "compress": True},
    # max_future_skew: an event whose time is further ahead of its Kafka record's timestamp
    # goes to the dead-letter topic (null: no check).
    "limits": {"max_message_bytes": 1048576, "max_future_skew": "1d"},
    "http": {"enabled": True, "host": "127.0.0.1", "port": 9308},
    "mlflow": {"tracking_uri": None},
    # The labeled store retrains draw their recent rows from (per model, newest kept).
    # labeled_retention: how long the topic kafka.topics.labeled keeps them (state.backend kafka).
    "retrain": {"labeled_rows": 50000, "labeled_max_age": None, "labeled_retention": "30d"},
    # Intervals (> 0). alert_resend stays below FIRING_HOLD_S (5m): each firing send holds the
    # alert in Alertmanager that long, so a longer gap resolves it between resends.
    "scheduler": {"policy_reload": "10s", "outbox": "2s", "alert_resend": "60s", "freshness": "5m"},
    # Retry backoff of undeliverable actions (receiver or registry down): base * 2**(attempt-1)
    # with jitter, capped at retry_max; a job is retried until delivered (no attempt limit).
    "actions": {"retry_base": "1s", "retry_max": "5m"},
    "log": {"level": "info", "json": True},
}

# Settings that may be null: an environment value ``null`` (or ``~``) sets them to null.
_NULLABLE = frozenset(
    {
        "kafka.group_instance_id",
        "file.events",
        "state.replica_id",
        "mlflow.tracking_uri",
        "retrain.labeled_max_age",
        "limits.max_future_skew",
    }
)
_MISSING = object()  # no default: not a setting (merging reports the unknown key)

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


class ConfigError(ValueError):
    """The daemon's configuration is wrong; ``str()`` lists every problem, one per line."""


def parse_duration(value: Any, where: str = "duration") -> float:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"7d"`` or a number of seconds → seconds."""
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value >= 0
        and math.isfinite(value)  # .inf: a timer that never fires (Event.wait overflows)
    ):
        return float(value)
    m = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not m:
        raise ConfigError(f"{where}: {value!r} is not a duration (use e.g. 30s, 5m, 1h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Settings:
    """Validated settings (a nested dict underneath, with typed accessors for hot paths)."""

    data: Mapping[str, Any]
    source_path: str
    #: line of each key of the file, by dotted path (empty without a file)
    key_lines: Mapping[str, int] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def topics(self) -> Mapping[str, str]:
        return self.data["kafka"]["topics"]

    def seconds(self, section: str, key: str) -> float:
        return parse_duration(self.data[section][key], f"{section}.{key}")

    def where(self, dotted: str) -> str:
        """``file:line`` of the key ``dotted`` (its closest enclosing key), or the file."""
        return _Origins(self.source_path, self.key_lines).file(dotted)

    def path(self, value: str) -> Path:
        """A path from the config, relative to the current directory."""
        return Path(value)


def _merge(
    base: dict[str, Any],
    over: Mapping[str, Any],
    path: str,
    errors: list[str],
    where: Callable[[str], str],
) -> None:
    for key, value in over.items():
        dotted = f"{path}{key}"
        if key not in base:
            known = ", ".join(sorted(base))
            errors.append(f"{where(dotted)}: {dotted}: unknown key (known here: {known})")
            continue
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                errors.append(
                    f"{where(dotted)}: {dotted}: must be a mapping, got {type(value).__name__}"
                )
                continue
            if key == "security":
                # Opaque kafka-python settings: merged key by key (file, then environment).
                base[key] = {**base[key], **value}
            else:
                _merge(base[key], value, dotted + ".", errors, where)
        elif isinstance(value, Mapping):
            # A key under a value (DRIFTWARDEN_KAFKA__GROUP_ID__X): named where it was set.
            sub = f"{dotted}.{next(iter(value))}" if value else dotted
            errors.append(f"{where(sub)}: {sub}: unknown key ({dotted} is a value, not a section)")
        else:
            base[key] = value


def key_lines(text: str) -> dict[str, int]:
    """The line of every key of a YAML mapping document, by dotted path (``kafka.topics``)."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for knode, vnode in node.value:
            if isinstance(knode, yaml.ScalarNode):
                path = f"{prefix}{knode.value}"
                lines.setdefault(path, knode.start_mark.line + 1)
                walk(vnode, path + ".")

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "")
    return lines


class _Origins:
    """Where each setting came from, for error messages: ``file:line`` for a key of the file,
    ``environment (DRIFTWARDEN_...)`` for an override, the file (or "defaults") otherwise."""

    def __init__(self, src: str, lines: Mapping[str, int]) -> None:
        self.src = src
        self.lines = lines
        self.env: dict[str, str] = {}

    def file(self, dotted: str) -> str:
        line = _closest(self.lines, dotted)
        return self.src if line is None else f"{self.src}:{line}"

    def environment(self, dotted: str) -> str:
        name = self._variable(dotted)
        return f"environment ({name or 'DRIFTWARDEN_*'})"

    def __call__(self, dotted: str) -> str:
        """The origin of the value ``dotted`` holds after merging (environment wins)."""
        return self.environment(dotted) if self._variable(dotted) else self.file(dotted)

    def _variable(self, dotted: str) -> str | None:
        return _closest(self.env, dotted)


def _closest(by_path: Mapping[str, _T], dotted: str) -> _T | None:
    """The entry of ``dotted`` or of its closest enclosing key (``a.b.c``, ``a.b``, ``a``)."""
    path = dotted
    while path:
        if path in by_path:
            return by_path[path]
        path = path.rpartition(".")[0]
    return None


def _env_overrides(
    env: Mapping[str, str], names: dict[str, str], errors: list[str]
) -> dict[str, Any]:
    """The ``DRIFTWARDEN_*`` overrides as a nested mapping; ``names`` gets each one's variable
    by dotted path, ``errors`` a sentence for each value YAML cannot read."""
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith("DRIFTWARDEN_") or name == "DRIFTWARDEN_CONFIG":
            continue
        parts = name[len("DRIFTWARDEN_") :].lower().split("__")
        dotted = ".".join(parts)
        names[dotted] = name
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        try:
            node[parts[-1]] = _env_value(parts, raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            errors.append(f"environment ({name}): {dotted}: not valid YAML ({problem})")
    return out


def _env_value(parts: list[str], raw: str) -> Any:
    """One environment value, typed by the setting's default: YAML only where that is a
    number, a boolean or a mapping; the exact string elsewhere (YAML would make the topic
    ``2024`` an int, the group id ``no`` False, and refuse ``@driftwarden``)."""
    dotted = ".".join(parts)
    if parts[:-1] == ["kafka", "security"]:
        return _security_value(parts[-1], raw)
    default = _default(parts)
    if dotted in _NULLABLE and raw.strip() in ("null", "Null", "NULL", "~"):
        return None
    if default is _MISSING or default is None or isinstance(default, str):
        return raw
    if not raw.strip():
        return raw  # refused by the checks, naming the variable
    if isinstance(default, dict):
        node = yaml.compose(raw, Loader=yaml.SafeLoader)
        return None if node is None else _typed(node, default, dotted)
    return yaml.safe_load(raw)


def _security_value(key: str, raw: str) -> Any:
    """A ``kafka.security`` value from the environment: a string, but ``true``/``false`` are
    booleans (``ssl_check_hostname``) except in a password ("yes", "0x1f" are passwords too)."""
    flag = {"true": True, "false": False}.get(raw.strip().lower())
    return raw if flag is None or "password" in key else flag


def _default(parts: Sequence[str]) -> Any:
    """The default of the setting at ``parts`` (``_MISSING`` for no setting)."""
    node: Any = DEFAULTS
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            return _MISSING
        node = node[p]
    return node


def _typed(node: yaml.Node, default: Any, dotted: str) -> Any:
    """A mapping from the environment (``DRIFTWARDEN_KAFKA='{group_id: 123}'``) read as the
    YAML it is, except that a string setting gets its scalar's text and ``kafka.security`` the
    same strings as its per-key variables (a password ``123456`` stays that string)."""
    if isinstance(default, dict) and isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = _construct(knode)
            sub = f"{dotted}.{key}"
            if dotted == "kafka.security" and isinstance(vnode, yaml.ScalarNode):
                out[key] = _security_value(str(key), vnode.value)
            elif key in default:
                out[key] = _typed(vnode, default[key], sub)
            else:
                out[key] = _construct(vnode)
        return out
    if (default is None or isinstance(default, str)) and isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:null" and dotted in _NULLABLE:
            return None
        return node.value
    return _construct(node)


def _construct(node: yaml.Node) -> Any:
    """The Python value of a composed YAML node (as ``yaml.safe_load`` would give it)."""
    return yaml.SafeLoader("").construct_document(node)


def load_settings(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Settings:
    """Defaults ← YAML file (if given) ← environment; raises :class:`ConfigError` with all errors."""
    env = os.environ if env is None else env
    data = copy.deepcopy(DEFAULTS)
    errors: list[str] = []
    src = "defaults"
    origins = _Origins(src, {})
    if path is not None:
        p = Path(path)
        src = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        text = p.read_text(encoding="utf-8")
        try:
            loaded = yaml.safe_load(text) or {}
            lines = key_lines(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(
                f"{p}{line}: not valid YAML: {getattr(exc, 'problem', exc)}"
            ) from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{p}: the config must be a mapping at the top level")
        origins = _Origins(src, lines)
        _merge(data, loaded, "", errors, origins.file)
    overrides = _env_overrides(env, origins.env, errors)
    _merge(data, overrides, "", errors, origins.environment)
    _check(data, errors, origins)
    if errors:
        raise ConfigError("\n".join(sorted(errors, key=partial(_line_order, src))))
    return Settings(data=data, source_path=src, key_lines=origins.lines)


def _line_order(src: str, error: str) -> tuple[int, int]:
    """Sort key: errors at a line of the file by line (as the file reads), then the file's
    errors without a line, then the environment's (stable within each)."""
    rest = error[len(src) :] if error.startswith(src) else None
    if rest is None:
        return (2, 0)
    head = rest.split(":", 2)
    return (0, int(head[1])) if len(head) > 2 and head[1].isdigit() else (1, 0)


def _text(value: Any) -> bool:
    """A non-empty string (YAML reads 5, yes, [a] as other types)."""
    return isinstance(value, str) and bool(value.strip())


def _check(data: dict[str, Any], errors: list[str], where: Callable[[str], str]) -> None:
    """Check values; each error starts with where the value came from (``where``)."""

    def bad(dotted: str, message: str) -> None:
        errors.append(f"{where(dotted)}: {dotted}: {message}")

    if data["source"] not in ("kafka", "file"):
        bad("source", f"must be kafka or file, got {data['source']!r}")
    if data["source"] == "file" and not data["file"]["events"]:
        bad("file.events", "the file source needs an events file (JSONL)")
    if data["state"]["backend"] not in ("local", "kafka"):
        bad("state.backend", f"must be local or kafka (got {data['state']['backend']!r})")
    # Types the loader does not get from YAML for free: `validate` must refuse what `run`
    # would crash on ("verbose") or silently read the other way (http.enabled: "false").
    level = data["log"]["level"]
    if not isinstance(level, str) or level.lower() not in ("debug", "info", "warning", "error"):
        bad("log.level", f"must be one of debug, info, warning, error, got {level!r}")
    reset = data["kafka"]["auto_offset_reset"]
    if reset not in ("earliest", "latest"):
        bad("kafka.auto_offset_reset", f"must be earliest or latest, got {reset!r}")
    servers = data["kafka"]["bootstrap_servers"]
    if not _text(servers) and not (
        isinstance(servers, list) and servers and all(_text(s) for s in servers)
    ):  # kafka-python takes "h1:9092,h2:9092" or a list
        bad("kafka.bootstrap_servers", f"must be host:port (or a list of them), got {servers!r}")
    for dotted, what in (
        ("kafka.group_id", "a string"),
        ("kafka.client_id", "a string"),
        ("policies", "a path"),
        ("file.events", "a path or null"),
        ("file.out_dir", "a path"),
        ("state.dir", "a path"),
        ("state.replica_id", "a string or null"),
        ("http.host", "a host name or address"),
        ("mlflow.tracking_uri", "a URI or null"),
    ):
        section, _, key = dotted.rpartition(".")
        v = data[section][key] if section else data[key]
        if not _text(v) and not (v is None and what.endswith("or null")):
            bad(dotted, f"must be {what}, got {v!r}")
    durations: list[tuple[str, str]] = [
        ("checkpoint", "every"),
        ("join", "ttl"),
        ("scheduler", "policy_reload"),
        ("scheduler", "outbox"),
        ("scheduler", "alert_resend"),
        ("scheduler", "freshness"),
        ("actions", "retry_base"),
        ("actions", "retry_max"),
        ("retrain", "labeled_retention"),
    ]
    if data["retrain"]["labeled_max_age"] is not None:
        durations.insert(0, ("retrain", "labeled_max_age"))
    if data["limits"]["max_future_skew"] is not None:
        durations.append(("limits", "max_future_skew"))
    seconds: dict[str, float] = {}
    for section, key in durations:
        dotted = f"{section}.{key}"
        try:
            seconds[dotted] = parse_duration(data[section][key], f"{where(dotted)}: {dotted}")
        except ConfigError as exc:
            errors.append(str(exc))
    # Intervals of 0 are no setting an operator means: the action thread would spin
    # (scheduler.outbox), every model would be stale at once (freshness), a failed action
    # retried at once forever (actions.*); join.ttl 0 expires each prediction as soon as a later
    # label arrives, so no label would ever join its prediction.
    for dotted in (
        "checkpoint.every",
        "join.ttl",
        "scheduler.policy_reload",
        "scheduler.outbox",
        "scheduler.alert_resend",
        "scheduler.freshness",
        "actions.retry_base",
        "actions.retry_max",
    ):
        if seconds.get(dotted, 1.0) <= 0:
            section, _, key = dotted.partition(".")
            bad(dotted, f"must be longer than 0, got {data[section][key]!r}")
    # Each firing send holds the alert in Alertmanager for FIRING_HOLD_S (endsAt): resent any
    # less often, it resolves and fires again between two sends.
    if seconds.get("scheduler.alert_resend", 0.0) >= FIRING_HOLD_S:
        bad(
            "scheduler.alert_resend",
            f"must be below {FIRING_HOLD_S:g}s (Alertmanager keeps a firing alert that long "
            f"after each send), got {data['scheduler']['alert_resend']!r}",
        )
    base, cap = seconds.get("actions.retry_base"), seconds.get("actions.retry_max")
    if base and cap and base > cap:  # (a 0 is reported above)
        bad(
            "actions.retry_base",
            f"must not be longer than actions.retry_max ({data['actions']['retry_max']!r}), "
            f"got {data['actions']['retry_base']!r}",
        )
    for section, key in (
        ("kafka", "create_topics"),
        ("join", "compress"),
        ("http", "enabled"),
        ("log", "json"),
    ):
        if not isinstance(data[section][key], bool):
            bad(f"{section}.{key}", f"must be true or false, got {data[section][key]!r}")
    share = data["checkpoint"]["max_share"]
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        bad("checkpoint.max_share", f"must be a number in (0, 1], got {share!r}")
    # Counts and sizes of 0 are no setting an operator means: no records per poll (kafka-python
    # refuses it at the first poll), a fetch or poll wait of 0 (an idle consumer fetching in a
    # busy loop), every event too large for the dead-letter topic, no join or labeled rows
    # kept, no checkpoint record small enough; the Kafka timeouts are milliseconds kafka-python
    # takes as whole numbers.
    for section, key in (
        ("kafka", "max_poll_records"),
        ("kafka", "poll_timeout_ms"),
        ("kafka", "session_timeout_ms"),
        ("kafka", "max_poll_interval_ms"),
        ("state", "max_bytes"),
        ("kafka", "fetch_max_wait_ms"),
        ("kafka", "metadata_max_age_ms"),
        ("kafka", "max_partition_fetch_bytes"),
        ("join", "max_entries"),
        ("limits", "max_message_bytes"),
        ("checkpoint", "every_events"),
        ("retrain", "labeled_rows"),
    ):
        v = data[section][key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            bad(f"{section}.{key}", f"must be a whole number ≥ 1, got {v!r}")
    port = data["http"]["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        bad("http.port", f"must be a port number 0-65535 (0: any free port), got {port!r}")
    instance = data["kafka"]["group_instance_id"]
    if instance is not None and (
        not isinstance(instance, str)
        or not _TOPIC_NAME.fullmatch(instance)
        or instance in (".", "..")
    ):
        bad(
            "kafka.group_instance_id",
            f"must be null or 1-249 of a-z A-Z 0-9 . _ - (one per replica), got {instance!r}",
        )
    # A topic name Kafka refuses fails late and far from the file; two roles on one topic
    # (say dlq: predictions) would feed the daemon its own output.
    first_role: dict[str, str] = {}
    for role, name in data["kafka"]["topics"].items():
        dotted = f"kafka.topics.{role}"
        if not isinstance(name, str) or not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
            bad(dotted, f"must be a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -), got {name!r}")
        elif name in first_role:
            bad(
                dotted,
                f"{name!r} is already kafka.topics.{first_role[name]}; each role needs its own topic",
            )
        else:
            first_role[name] = role
