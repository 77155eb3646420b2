"""The ``driftwarden`` command line (DESIGN §6).

Every subcommand turns expected failures (bad config, bad policy, missing file, unreachable
service) into one plain sentence on stderr and a non-zero exit code, never a traceback.
Exit codes: 0 ok, 1 the checked thing is invalid / a test failed, 2 cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import orjson

__all__ = ["main"]


def _fail(msg: str, code: int = 2) -> int:
    print(f"driftwarden: {msg}", file=sys.stderr)
    return code


def _mlflow_fails_fast() -> None:
    """MLflow's client retries one request for minutes by default (``approve`` against a server
    that is down waited ~4 minutes); the daemon's outbox retries every action with backoff and
    an operator can run a command again, so an outage should fail fast (the operator's own
    ``MLFLOW_HTTP_REQUEST_*`` settings win). Every subcommand that talks to MLflow calls this."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _settings(args: argparse.Namespace) -> Any:
    from .settings import load_settings

    path = args.config
    if path is None and os.environ.get("DRIFTWARDEN_CONFIG"):
        path = os.environ["DRIFTWARDEN_CONFIG"]
    return load_settings(path)


# -- run -------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .app import attach_scheduler, build_daemon
    from .logs import configure

    settings = _settings(args)
    configure(settings["log"]["level"], bool(settings["log"]["json"]))
    _mlflow_fails_fast()
    daemon = _build_or_explain(build_daemon, settings, args.events)
    # Long-lived objects built at start-up (policies, profiles, imports) never need scanning
    # again, and the loop allocates many short-lived dicts: fewer, larger young collections.
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    server = None
    http = settings["http"]
    try:
        if http["enabled"]:
            server = _health_server(http, settings["kafka"], daemon)
            server.start()
        daemon.install_signal_handlers()
        scheduler = attach_scheduler(daemon, settings)
        try:
            summary = daemon.run(
                max_events=args.max_events,
                timeout_s=args.timeout,
                idle_timeout_s=args.idle_timeout,
            )
        finally:
            scheduler.shutdown()
    finally:
        if server is not None:
            server.stop()
        daemon.sink.close()
        daemon.source.close()
        if daemon.store is not None:
            daemon.store.close()
        if daemon.labeled_share is not None:
            daemon.labeled_share.close()
    print(json.dumps(summary.__dict__, sort_keys=True))
    return 0


def _health_server(http: Mapping[str, Any], kafka: Mapping[str, Any], daemon: Any) -> Any:
    """The health/metrics server on ``http.host:http.port``; a port it cannot listen on (held
    by another process, a host that is not this machine's) is one sentence naming both keys."""
    from .app import StartupError
    from .http import HealthServer

    host, port = http["host"], int(http["port"])
    max_stall_s = int(kafka["max_poll_interval_ms"]) / 1000.0
    try:
        return HealthServer(
            host,
            port,
            daemon.metrics.registry,
            lambda: (daemon.ready, "ready" if daemon.ready else "not ready"),
            # kafka.max_poll_interval_ms: a loop stalled that long has lost its partitions.
            partial(daemon.health, max_stall_s),
        )
    except OSError as exc:
        raise StartupError(
            f"http: cannot listen on {host}:{port} ({exc.strerror or exc}). Another process "
            "may hold the port (a second daemon on this machine?): set http.port (0 takes any "
            "free port), http.host, or http.enabled: false."
        ) from None


def _build_or_explain(build: Any, settings: Any, events: str | None) -> Any:
    """``build_daemon``, with a Kafka connection failure at start-up as one plain sentence."""
    from kafka.errors import KafkaError

    from .app import StartupError

    try:
        return build(settings, events_path=events)
    except KafkaError as exc:
        kafka = settings["kafka"]
        proto = kafka["security"].get("security_protocol", "PLAINTEXT")
        name, text = type(exc).__name__, str(exc)
        detail = text if text.startswith(name) else f"{name}: {text}"
        raise StartupError(
            f"kafka: cannot connect to {kafka['bootstrap_servers']} over {proto} "
            f"({detail}). Check kafka.bootstrap_servers and kafka.security: "
            "a wrong SASL user or password or an untrusted certificate looks like this from "
            "the client (the broker's log names the failed authentication)."
        ) from None


# -- validate / test -------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from driftwarden.policies.loader import load_policies

    from .app import profile_errors
    from .settings import ConfigError, load_settings

    errors: list[str] = []
    policy_paths: dict[Path, str] = {}  # resolved -> as given (each checked once)
    paths = args.paths
    if not paths:  # the daemon's own config (and the policies it names), and config/policies
        from_env = os.environ.get("DRIFTWARDEN_CONFIG")
        config = from_env or "config/driftwarden.yaml"
        if from_env and not Path(from_env).is_file():
            # `run` refuses to start without it; only the implicit default may be absent.
            errors.append(f"{from_env}: config file not found (named by DRIFTWARDEN_CONFIG)")
        paths = [config, "config/policies"] if Path(config).is_file() else ["config/policies"]
    for p in paths:
        path = Path(p)
        if _is_settings_file(path):
            try:
                settings = load_settings(path, env={})
            except ConfigError as exc:
                errors.extend(str(exc).splitlines())
                continue
            named = Path(settings["policies"])  # relative to the current folder, as `run` reads it
            if named.exists():
                policy_paths.setdefault(named.resolve(), str(named))
            else:
                errors.append(
                    f"{settings.where('policies')}: policies: {named} does not exist "
                    f"(relative paths are read from the current folder, {Path.cwd()})"
                )
        elif not path.exists():
            errors.append(f"{path}: no such file or directory")
        else:
            policy_paths.setdefault(path.resolve(), str(path))
    if policy_paths:
        policies, policy_errors = load_policies(list(policy_paths.values()))
        errors.extend(policy_errors)
        # What `run` refuses beyond the files' own content: a profile file that is not there,
        # or that a detector does not fit.
        errors.extend(profile_errors(policies))
    for e in errors:
        print(e)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    print("ok", file=sys.stderr)
    return 0


def _is_settings_file(path: Path) -> bool:
    """A daemon configuration rather than a policy: named ``driftwarden*.yaml``, or a mapping
    without a policy's ``apiVersion``/``kind`` whose top-level keys include a settings section
    (``kafka:``, ``state:``, ...). Anything else, unreadable YAML included, goes to the policy
    validator, which reports it with file:line."""
    import yaml

    from .settings import DEFAULTS

    if not path.is_file() or path.suffix not in (".yaml", ".yml"):
        return False
    if path.name.startswith("driftwarden"):
        return True
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return False
    return (
        isinstance(doc, dict)
        and "apiVersion" not in doc
        and "kind" not in doc
        and bool(set(doc) & set(DEFAULTS))
    )


def cmd_test(args: argparse.Namespace) -> int:
    from driftwarden.policies.policytest import run_policy_tests

    code = 0
    for f in args.files:
        report = run_policy_tests(f)
        print(report.text)
        if not report.ok:
            code = 1
    return code


# -- replay ----------------------------------------------------------------------------------
def replay(
    policies_dir: str,
    events: str,
    out: str,
    profile_path: str | None = None,
    windows_out: str | None = None,
) -> dict[str, Any]:
    """Run the pipeline over recorded events (event time), write decisions; returns a summary."""
    from driftwarden.detectors.profile import ReferenceProfile

    from .app import build_daemon, load_policy_set
    from .settings import load_settings
    from .sinks import MemorySink

    settings = load_settings(None, env={})
    profile = ReferenceProfile.load(profile_path) if profile_path else None
    policies = load_policy_set(policies_dir, check_files=profile is None)
    sink = MemorySink()
    daemon = build_daemon(
        settings,
        policies=policies,
        sink=sink,
        profile=profile,
        events_path=events,
        with_state=False,
    )
    summary = daemon.run()
    decisions = sink.values(settings.topics["decisions"])
    with open(out, "wb") as fh:
        for d in decisions:
            fh.write(orjson.dumps(d, option=orjson.OPT_SORT_KEYS) + b"\n")
    windows = sink.values(settings.topics["windows"])
    if windows_out:
        with open(windows_out, "wb") as fh:
            for w in windows:
                fh.write(orjson.dumps(w, option=orjson.OPT_SORT_KEYS) + b"\n")
    by_rule = Counter(f"{d['model']}/{d['rule']}:{d['status']}" for d in decisions)
    return {
        "events": summary.records,
        "valid": summary.valid,
        "invalid": summary.invalid,
        "windows": len(windows),
        "decisions": len(decisions),
        "by_rule": dict(sorted(by_rule.items())),
        "out": out,
    }


def cmd_replay(args: argparse.Namespace) -> int:
    summary = replay(args.policies, args.events, args.out, args.profile, args.windows_out)
    print(
        f"replayed {summary['events']} events ({summary['invalid']} invalid) "
        f"into {summary['windows']} windows and {summary['decisions']} decisions → {summary['out']}"
    )
    for k, v in summary["by_rule"].items():
        print(f"  {k}: {v}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report, load_jsonl

    for p in (args.windows, args.decisions):
        if not Path(p).is_file():
            return _fail(f"{p} does not exist.")
    try:  # a line that is not a JSON object: named as file:line
        decisions = [d for d in load_jsonl(args.decisions) if d.get("record") is None]
        windows = load_jsonl(args.windows)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    try:
        path = build_report(windows, decisions, args.out, title=args.title)
    except OSError as exc:
        return _fail(f"cannot write {args.out}: {exc.strerror or exc}.")
    print(f"report → {path}")
    return 0


def cmd_silence(args: argparse.Namespace) -> int:
    import time

    from driftwarden.policies.silences import (
        SilenceUnit,
        add_silence,
        expire_silence,
        load_silences,
    )

    from .app import silence_store
    from .settings import parse_duration

    settings = _settings(args)
    # With state.backend: kafka the silences are shared by every replica, in the topic
    # kafka.topics.silences; otherwise a file in state.dir.
    store = silence_store(settings)
    now = time.time()
    try:
        if args.silence_command == "add":
            s = add_silence(
                store,
                model=args.model,
                rule=args.rule,
                starts_at=now,
                ends_at=now + parse_duration(args.duration, "--for"),
                created_by=args.by,
                comment=args.comment,
            )
            print(json.dumps(s.to_dict(), sort_keys=True))
        elif args.silence_command == "list":
            for s in load_silences(store):
                print(json.dumps({**s.to_dict(), "active": s.active(now)}, sort_keys=True))
        else:
            print(json.dumps(expire_silence(store, args.id, now).to_dict(), sort_keys=True))
    finally:
        if isinstance(store, SilenceUnit):
            store.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from .demo import run_demo
    from .logs import configure

    configure("error", json_logs=False)  # the demo tells its own story on stdout
    directory = Path(args.dir)
    if args.dir == DEMO_DIR and (directory / "mlflow.db").exists():
        # The default directory holds an earlier demo: start afresh (an explicit --dir is kept).
        shutil.rmtree(directory)
    run_demo(directory)
    return 0


DEMO_DIR = ".driftwarden/demo"


# -- profile ---------------------------------------------------------------------------------
def cmd_profile(args: argparse.Namespace) -> int:
    from driftwarden.detectors.profile import build_profile, read_table

    if not Path(args.data).is_file():
        return _fail(f"data file {args.data} does not exist.")
    try:
        df = read_table(args.data)
    except (ValueError, OSError) as exc:  # not CSV/parquet, or not parseable (pandas, pyarrow)
        msg = " ".join(str(exc).split())
        return _fail(msg if args.data in msg else f"{args.data}: cannot read the table: {msg}")
    missing = [
        c for c in [args.target, args.prediction, args.score, *args.segment] if c and c not in df
    ]
    if missing:
        return _fail(f"{args.data}: column(s) not in the table: {', '.join(missing)}.")
    try:
        profile = build_profile(
            df,
            args.model,
            target=args.target,
            prediction=args.prediction,
            score=args.score,
            segments=args.segment,
            model_version=args.model_version,
        )
    except ValueError as exc:  # a table the profile cannot describe
        return _fail(f"{args.data}: {exc}")
    if args.out:
        profile.save(args.out)
        print(
            f"profile of {args.model} ({len(profile.features)} features, {profile.n_rows} rows) → {args.out}"
        )
    else:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        if not args.tracking_uri:
            return _fail("--run-id needs --tracking-uri or MLFLOW_TRACKING_URI.")
        _mlflow_fails_fast()
        try:
            MlflowClient(args.tracking_uri).log_text(
                args.run_id, profile.to_json(), "driftwarden/profile.json"
            )
        except (MlflowException, OSError) as exc:  # server down, no such run
            msg = " ".join(str(exc).split())
            return _fail(f"could not log the profile to MLflow run {args.run_id}: {msg}")
        print(f"profile of {args.model} logged to run {args.run_id} as driftwarden/profile.json")
    return 0


# -- registry --------------------------------------------------------------------------------
def _registry(args: argparse.Namespace) -> Any:
    from driftwarden.retrain.registry import Registry

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise SystemExit(_fail("set --tracking-uri or MLFLOW_TRACKING_URI."))
    _mlflow_fails_fast()
    return Registry(uri)


def _print_moves(moves: Any) -> int:
    for m in moves:  # each alias move, as recorded on the version's tags
        print(json.dumps(m.to_dict(), sort_keys=True, default=str))
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    reg = _registry(args)
    return _print_moves(reg.approve(args.model, args.version, actor=args.actor, reason=args.reason))


def cmd_rollback(args: argparse.Namespace) -> int:
    return _print_moves(_registry(args).rollback(args.model, actor=args.actor, reason=args.reason))


def _shared_examples(settings: Any, model: str, workdir: Path) -> tuple[Any, dict[str, Any]] | None:
    """With ``state.backend: kafka``: the model's examples as its owner published them to
    ``kafka.topics.labeled`` (up to the owner's last checkpoint), read into a store in
    ``workdir`` (none, if none were published yet); None when no checkpoint holds the model
    with a record of this labeled topic."""
    from .app import checkpoint_store, labeled_store
    from .labeled_share import first_mark, read_partition
    from .runner import state_newness

    d = settings.data
    k = d["kafka"]
    states = checkpoint_store(settings, create_topic=False)
    try:
        found = None
        for unit in states.units():
            doc = states.load(unit) if unit.startswith("p") else None
            if not doc or model not in doc.get("models", {}) or not doc.get("labeled"):
                continue
            # Two partitions hold the model for a while after its events moved (the input
            # topics gained partitions): the newer state is the owner's.
            newness = state_newness(doc["models"][model])
            if found is None or newness > found[0]:
                found = (newness, int(doc["partition"]), doc["labeled"])
    finally:
        states.close()
    if found is None:
        return None
    _, partition, labeled = found
    if labeled.get("topic") != k["topics"]["labeled"]:
        return None
    start = first_mark(labeled, lambda m: m == model)
    end = int(labeled["end"])
    store = labeled_store(settings, directory=workdir)
    if start is not None:  # else its owner has published none yet: no rows, not stale ones
        read_partition(
            k["bootstrap_servers"],
            k["topics"]["labeled"],
            partition,
            start,
            end,
            {model},
            store,
            security=dict(k["security"]),
            client_id=f"{k['client_id']}-retrain",
        )
    else:
        start = end
    return store, {
        "from": "kafka.topics.labeled",
        "topic": k["topics"]["labeled"],
        "partition": partition,
        "offsets": [start, end],
    }


def cmd_retrain(args: argparse.Namespace) -> int:
    """An operator's retrain, run here and now through the same gated pipeline."""
    import time
    from importlib.metadata import version

    from driftwarden.retrain.pipeline import load_reference_data, run_retrain
    from driftwarden.retrain.registry import Registry

    from .app import labeled_store, load_policy_set
    from .manual import manual_retrain_decision
    from .profiles import ProfileLoader
    from .wiring import retrain_request

    settings = _settings(args)
    d = settings.data
    uri = args.tracking_uri or d["mlflow"]["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return _fail(
            "retraining needs MLflow: set mlflow.tracking_uri, --tracking-uri or MLFLOW_TRACKING_URI."
        )
    _mlflow_fails_fast()
    policies = load_policy_set(d["policies"])
    policy = policies.for_model(args.model)
    if policy is None:
        return _fail(f"no policy in {d['policies']} matches model {args.model!r}.")
    try:
        decision = manual_retrain_decision(
            policy,
            args.model,
            time.time(),
            requested_by=args.by,
            reason=args.reason,
            rule=args.rule,
        )
    except ValueError as exc:
        return _fail(str(exc))
    profile = ProfileLoader(policies, tracking_uri=uri)(args.model, None)
    action = decision.actions[0]
    request = retrain_request(
        decision.to_dict(),
        action.to_dict(),
        policy,
        profile,
        [str(Path(d["policies"]).resolve().parent)],
    )
    # The daemon may be running and own the store: read it without repairing anything.
    store = labeled_store(settings, read_only=True)
    examples: dict[str, Any] = {"from": "state.dir"}
    workdir = None
    if d["state"]["backend"] == "kafka":
        # Any replica, or an operator's machine: the model's examples are those its owner
        # published, not whatever this state.dir holds.
        workdir = tempfile.TemporaryDirectory(prefix="driftwarden-retrain-")
        try:
            shared = _shared_examples(settings, args.model, Path(workdir.name))
        except Exception as exc:  # noqa: BLE001 - said in a sentence, no traceback
            workdir.cleanup()
            return _fail(
                f"the labeled examples of {args.model!r} could not be read from Kafka: {exc}"
            )
        if shared is not None:
            store, examples = shared
    examples["rows"] = int(store.count(args.model))
    try:
        outcome = run_retrain(
            request,
            registry=Registry(uri),
            store=store,
            reference_data=load_reference_data(request),
            code_version=f"driftwarden {version('driftwarden')}",
        )
    finally:
        if workdir is not None:
            workdir.cleanup()
    print(
        json.dumps(
            {"decision": decision.to_dict(), "outcome": outcome.to_dict(), "examples": examples},
            sort_keys=True,
            default=str,
        )
    )
    return 0 if outcome.status == "registered" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from .app import checkpoint_store, labeled_store
    from .runner import state_newness

    settings = _settings(args)
    directory = Path(settings["state"]["dir"])
    kafka = settings["state"]["backend"] == "kafka"
    if not kafka and not directory.exists():
        return _fail(f"no state directory at {directory} (has the daemon run?).", 1)
    # The checkpoints where the daemon keeps them: the local folder, or the Kafka state topic
    # (read, never created, by this command).
    store = checkpoint_store(settings, create_topic=False)
    try:
        # What a retrain would draw on now (0 for a model whose policy does not retrain);
        # read-only beside a running daemon.
        examples = labeled_store(settings, read_only=True)
        rows = []
        for unit in store.units():
            doc = store.load(unit) or {}
            for model, st in doc.get("models", {}).items():
                rows.append(
                    {
                        "model": model,
                        "unit": unit,
                        "_newness": state_newness(st),
                        "events": st["events"],
                        "labels": st["labels"],
                        "join": st["join"]["counters"],
                        "profile_version": st.get("profile_version"),
                        # No detectors: not judged yet, or its profile is missing or does not
                        # fit the policy (the daemon's log and alert say which).
                        "detectors": sorted(st.get("detectors") or ()),
                        "labeled_examples": _examples(examples, model),
                    }
                )
            if "offsets" in doc:  # a partition's unit (the action executor's has none)
                rows.append(
                    {
                        "unit": unit,
                        "offsets": doc["offsets"],
                        "invalid": doc.get("invalid"),
                        "unmonitored": doc.get("unmonitored") or {},
                    }
                )
    finally:
        store.close()
    _mark_superseded(rows)
    if not rows:
        where = f"topic {settings['kafka']['topics']['state']!r}" if kafka else str(directory)
        print(f"no checkpoint yet in {where}", file=sys.stderr)
    for r in rows:
        print(json.dumps(r, sort_keys=True))
    return 0


def _mark_superseded(rows: list[dict[str, Any]]) -> None:
    """A model in more than one partition's checkpoint moved (the input topics gained
    partitions): each older copy names the unit of the newest (the daemon retires it once idle
    for ``scheduler.freshness``)."""
    newest: dict[str, dict[str, Any]] = {}
    for r in rows:
        if "model" in r and (
            r["model"] not in newest or r["_newness"] > newest[r["model"]]["_newness"]
        ):
            newest[r["model"]] = r
    for r in rows:
        if "model" in r and newest[r["model"]] is not r:
            r["superseded_by"] = newest[r["model"]]["unit"]
    for r in rows:
        r.pop("_newness", None)


def _examples(store: Any, model: str) -> int | None:
    """The labeled examples stored for ``model``; ``None`` when its name cannot name a store
    folder (the daemon stores none for it then)."""
    try:
        return int(store.count(model))
    except ValueError:
        return None


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    ap = argparse.ArgumentParser(prog="driftwarden", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument(
        "--config", help="config file (default: $DRIFTWARDEN_CONFIG or built-in defaults)"
    )
    run.add_argument("--events", help="read events from this JSONL file instead of Kafka")
    run.add_argument("--max-events", type=int, help="stop after this many records (bounded runs)")
    run.add_argument("--timeout", type=float, help="stop after this many seconds")
    run.add_argument(
        "--idle-timeout",
        type=float,
        help="stop after this many seconds without events (counted once partitions are assigned)",
    )
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check config and policy files")
    val.add_argument(
        "paths",
        nargs="*",
        help="policy files/directories and daemon configs (a config's policies are checked "
        "too); default: $DRIFTWARDEN_CONFIG or config/driftwarden.yaml, and config/policies",
    )
    val.set_defaults(func=cmd_validate)

    test = sub.add_parser("test", help="run policy unit tests")
    test.add_argument("files", nargs="+")
    test.set_defaults(func=cmd_test)

    rep = sub.add_parser("replay", help="run the pipeline over recorded events")
    rep.add_argument("--policies", required=True)
    rep.add_argument("--events", required=True)
    rep.add_argument("--profile", help="use this profile file for every model")
    rep.add_argument("--out", required=True, help="decisions, one JSON object per line")
    rep.add_argument("--windows-out", help="also write the window summaries (for `report`)")
    rep.set_defaults(func=cmd_replay)

    rp = sub.add_parser("report", help="static HTML report from window summaries and decisions")
    rp.add_argument("--windows", required=True, help="window summaries (JSONL)")
    rp.add_argument("--decisions", required=True, help="decisions (JSONL)")
    rp.add_argument("--out", required=True, help="the HTML file to write")
    rp.add_argument("--title", default="driftwarden report")
    rp.set_defaults(func=cmd_report)

    si = sub.add_parser("silence", help="mute a model's or rule's notifications for a while")
    si_sub = si.add_subparsers(dest="silence_command", required=True)
    sa = si_sub.add_parser("add", help="add a silence")
    sa.add_argument("--model", default="*", help="model name or glob")
    sa.add_argument("--rule", default="*", help="rule name or glob")
    sa.add_argument("--for", dest="duration", required=True, help="how long, e.g. 2h")
    sa.add_argument("--comment", required=True, help="why (shown in every muted decision)")
    sa.add_argument("--by", default=os.environ.get("USER", "cli"))
    sa.add_argument("--config")
    sl = si_sub.add_parser("list", help="list silences")
    sl.add_argument("--config")
    se = si_sub.add_parser("expire", help="end a silence now")
    se.add_argument("id")
    se.add_argument("--config")
    si.set_defaults(func=cmd_silence)

    prof = sub.add_parser("profile", help="build a reference profile from a CSV/parquet table")
    prof.add_argument("--data", required=True)
    prof.add_argument("--model", required=True)
    prof.add_argument("--model-version")
    prof.add_argument("--target")
    prof.add_argument("--prediction")
    prof.add_argument("--score")
    prof.add_argument("--segment", action="append", default=[])
    dest = prof.add_mutually_exclusive_group(required=True)
    dest.add_argument("--run-id")
    dest.add_argument("--out")
    prof.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    prof.set_defaults(func=cmd_profile)

    for name, func, help_ in (
        ("approve", cmd_approve, "promote a version to champion"),
        ("rollback", cmd_rollback, "move champion back to previous"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("model")
        if name == "approve":
            p.add_argument("version")
        p.add_argument("--actor", default=os.environ.get("USER", "cli"))
        p.add_argument("--reason", required=True)
        p.add_argument("--tracking-uri")
        p.set_defaults(func=func)

    dm = sub.add_parser("demo", help="the whole loop on embedded defaults, with a report")
    dm.add_argument("--dir", default=DEMO_DIR, help=f"where to put it (default {DEMO_DIR})")
    dm.set_defaults(func=cmd_demo)

    rt = sub.add_parser("retrain", help="retrain a model now, through every gate")
    rt.add_argument("model")
    rt.add_argument("--rule", help="use this rule's retrain action (default: the first one)")
    rt.add_argument("--reason", required=True, help="why (recorded on the run and the decision)")
    rt.add_argument("--by", default=os.environ.get("USER", "cli"))
    rt.add_argument("--config")
    rt.add_argument("--tracking-uri")
    rt.set_defaults(func=cmd_retrain)

    st = sub.add_parser("status", help="per-model state from the last checkpoints")
    st.add_argument("--config")
    st.set_defaults(func=cmd_status)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``driftwarden`` console script."""
    from driftwarden.detectors.base import StateVersionError
    from driftwarden.policies.model import PolicyError

    from .app import StartupError
    from .checkpoint import CheckpointError
    from .events import InvalidEvent
    from .monitor import ProfileMissing
    from .settings import ConfigError
    from .sinks import SinkError
    from .sources import SourceFenced

    args = build_parser().parse_args(argv)
    if args.command != "run":  # `run` configures logging from its settings
        from .logs import configure

        configure("warning", json_logs=False)
    try:
        return int(args.func(args))
    except (
        ConfigError,
        StartupError,
        PolicyError,
        ProfileMissing,
        CheckpointError,
        StateVersionError,
        InvalidEvent,
        FileNotFoundError,
        SourceFenced,
        SinkError,
    ) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # RegistryError (Unavailable included): a missing version or alias, MLflow down. Its
        # module imports mlflow (~1.5 s), so it is looked up only if a command loaded it.
        registry = sys.modules.get("driftwarden.retrain.registry")
        if registry is not None and isinstance(exc, registry.RegistryError):
            return _fail(" ".join(str(exc).split()))
        raise


if __name__ == "__main__":
    sys.exit(main())
