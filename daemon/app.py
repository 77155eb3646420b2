"""Assembling a daemon from settings: policies, profiles, source, sinks, state, HTTP.

Start-up problems (a bad config, a bad policy, a missing profile file) raise
:class:`StartupError` with one plain sentence per problem; the CLI prints them without a
traceback and exits 2.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from driftwarden.detectors.profile import ReferenceProfile
from driftwarden.policies.loader import load_policies
from driftwarden.policies.model import PolicyError, PolicySet
from driftwarden.policies.silences import SilenceSet, SilenceUnit, load_silences

from .checkpoint import CheckpointError, CheckpointStore, LocalCheckpointStore
from .profiles import ProfileLoader
from .runner import Daemon, DaemonOptions
from .settings import Settings, key_lines, parse_duration
from .sinks import FileSink, KafkaSink, Sink
from .sources import FileSource, KafkaSource, Source
from .topics import INPUT_ROLES, OUTPUT_ROLES, TopicError, check_topics
from .wiring import RetrainLauncher

__all__ = [
    "StartupError",
    "attach_scheduler",
    "build_daemon",
    "checkpoint_store",
    "load_policy_set",
    "profile_errors",
    "options_from",
    "silence_store",
]

log = structlog.get_logger(__name__)


class StartupError(RuntimeError):
    """The daemon cannot start; ``str()`` lists every reason, one per line."""


def load_policy_set(path: str | Path, *, check_files: bool = True) -> PolicySet:
    """Load every policy under ``path``; all errors at once as :class:`StartupError`."""
    p = Path(path)
    if not p.exists():
        raise StartupError(f"policy path {p} does not exist.")
    policies, errors = load_policies(p)
    if errors:
        raise StartupError("\n".join(errors))
    if len(policies) == 0:
        raise StartupError(f"no policy files (*.yaml) found under {p}.")
    if check_files:
        errors = profile_errors(policies)
        if errors:
            raise StartupError("\n".join(errors))
    return policies


def profile_errors(policies: PolicySet) -> list[str]:
    """What the ``file:`` reference profiles say about the policies, one sentence each: a
    profile that does not exist or cannot be read (at the ``reference:`` line), and a detector
    that does not fit its profile — a feature, slice or metric the profile lacks (at the
    detector's line). ``models:/`` references are checked when the daemon loads them."""
    import yaml

    out = []
    for pol in policies.policies:
        ref = pol.reference_path
        if ref is None:
            continue
        try:
            line = key_lines(Path(pol.source).read_text(encoding="utf-8")).get("reference")
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            line = None
        where = f"{pol.source}:{line}" if line else pol.source
        if not ref.exists():
            out.append(
                f"{where}: reference: profile file {ref} does not exist (build it with "
                f"`driftwarden profile --data TABLE --model {pol.model} --out {ref}`)."
            )
            continue
        try:
            profile = ReferenceProfile.load(ref)
        except (OSError, ValueError) as exc:
            out.append(f"{where}: reference: profile file {ref} cannot be read: {exc}")
            continue
        try:
            pol.build_detectors(profile)
        except PolicyError as exc:
            out.extend(exc.errors)
    return out


def _writable_dir(path: str | Path, key: str) -> Path:
    """Create the folder ``path`` when missing and check a file can be written in it; one
    sentence naming the setting ``key`` when not."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".driftwarden-write-check-"):
            pass
    except OSError as exc:
        raise StartupError(
            f"{key}: cannot write in {folder} ({exc.strerror or exc}"
            f"{': ' + exc.filename if isinstance(exc.filename, str) else ''}); "
            f"set {key} to a folder driftwarden can create and write."
        ) from None
    return folder


def checkpoint_store(settings: Settings, *, create_topic: bool | None = None) -> CheckpointStore:
    """The checkpoint store ``state.backend`` names. The Kafka state topic is created when
    missing if ``kafka.create_topics`` allows (``create_topic=False``: a reader that must not
    create it)."""
    d = settings.data
    if d["state"]["backend"] != "kafka":
        return LocalCheckpointStore(d["state"]["dir"])
    return _kafka_documents(settings, "state", int(d["state"]["max_bytes"]), create_topic)


#: The silences topic's record limit: a silence is ~300 bytes, so thousands fit.
SILENCES_MAX_BYTES = 1024 * 1024


def silence_store(settings: Settings) -> Path | SilenceUnit:
    """Where silences live: with ``state.backend: kafka`` the one record of the compacted
    topic ``kafka.topics.silences`` that every replica reads (created when missing if
    ``kafka.create_topics`` allows; the caller closes it with :meth:`SilenceUnit.close`), else
    ``state.dir``'s file."""
    if settings.data["state"]["backend"] != "kafka":
        return Path(settings.data["state"]["dir"]) / "silences.json"
    return SilenceUnit(_kafka_documents(settings, "silences", SILENCES_MAX_BYTES, None))


def _kafka_documents(
    settings: Settings, role: str, max_bytes: int, create_topic: bool | None
) -> CheckpointStore:
    """A keyed document store on the compacted topic ``kafka.topics.<role>``."""
    from .checkpoint_kafka import KafkaCheckpointStore

    k = settings.data["kafka"]
    try:
        return KafkaCheckpointStore(
            k["bootstrap_servers"],
            k["topics"][role],
            security=dict(k["security"]),
            client_id=k["client_id"] if role == "state" else f"{k['client_id']}-{role}",
            max_bytes=max_bytes,
            create_topic=bool(k["create_topics"]) if create_topic is None else create_topic,
            kind="checkpoint" if role == "state" else "silence",
        )
    except CheckpointError as exc:
        raise StartupError(str(exc)) from None


def _check_topics(settings: Settings, *, outputs: bool) -> dict[str, int]:
    """The input topics exist with equal partition counts; the output topics exist (created
    when missing and allowed), checked when the daemon publishes to Kafka (``outputs``).
    Returns the partition count of each by role."""
    k = settings.data["kafka"]
    roles = INPUT_ROLES + (OUTPUT_ROLES if outputs else ())
    try:
        return check_topics(
            k["bootstrap_servers"],
            {r: k["topics"][r] for r in roles},
            security=dict(k["security"]),
            client_id=k["client_id"],
            create=bool(k["create_topics"]),
        )
    except TopicError as exc:
        raise StartupError(str(exc)) from None


def options_from(settings: Settings) -> DaemonOptions:
    """The loop's tuning knobs from the settings."""
    d = settings.data
    return DaemonOptions(
        topics=dict(d["kafka"]["topics"]),
        join_ttl_s=parse_duration(d["join"]["ttl"]),
        join_max_entries=int(d["join"]["max_entries"]),
        join_compress=bool(d["join"]["compress"]),
        max_message_bytes=int(d["limits"]["max_message_bytes"]),
        max_future_skew_s=None
        if d["limits"]["max_future_skew"] is None
        else parse_duration(d["limits"]["max_future_skew"]),
        max_poll_records=int(d["kafka"]["max_poll_records"]),
        poll_timeout_s=int(d["kafka"]["poll_timeout_ms"]) / 1000.0,
        checkpoint_every_events=int(d["checkpoint"]["every_events"]),
        checkpoint_every_s=parse_duration(d["checkpoint"]["every"]),
        checkpoint_max_share=float(d["checkpoint"]["max_share"]),
    )


def build_daemon(
    settings: Settings,
    *,
    policies: PolicySet | None = None,
    sink: Sink | None = None,
    profile: ReferenceProfile | None = None,
    events_path: str | None = None,
    with_state: bool = True,
    with_actions: bool = True,
    **daemon_kwargs: Any,
) -> Daemon:
    """A :class:`Daemon` wired from settings (Kafka or file source, local checkpoints)."""
    d = settings.data
    policies = policies if policies is not None else load_policy_set(d["policies"])
    loader = ProfileLoader(policies, tracking_uri=d["mlflow"]["tracking_uri"], override=profile)
    opts = options_from(settings)
    use_file = events_path is not None or d["source"] == "file"
    # Checkpoints, the action outbox, silences and labeled examples live there: a folder that
    # cannot be written is said before any client is opened.
    if with_state or with_actions:
        _writable_dir(d["state"]["dir"], "state.dir")
    if use_file and sink is None:
        _writable_dir(d["file"]["out_dir"], "file.out_dir")
    counts: dict[str, int] = {}
    if not use_file:  # before any other Kafka client is opened
        counts = _check_topics(settings, outputs=sink is None)
    store = checkpoint_store(settings) if with_state else None
    if sink is None:
        if use_file:
            sink = FileSink(d["file"]["out_dir"])
        else:
            k = d["kafka"]
            sink = KafkaSink(k["bootstrap_servers"], k["client_id"], dict(k["security"]))

    def source_factory(daemon: Daemon) -> Source:
        if use_file:
            path = events_path or d["file"]["events"]
            try:
                src: Source = FileSource(path)
            except FileNotFoundError as exc:
                raise StartupError(str(exc) + ".") from None
            src.seek(daemon.assign([0]))
            return src
        k = d["kafka"]
        return KafkaSource(
            bootstrap_servers=k["bootstrap_servers"],
            group_id=k["group_id"],
            client_id=k["client_id"],
            topics=dict(k["topics"]),
            security=dict(k["security"]),
            auto_offset_reset=k["auto_offset_reset"],
            session_timeout_ms=int(k["session_timeout_ms"]),
            max_poll_interval_ms=int(k["max_poll_interval_ms"]),
            fetch_max_wait_ms=int(k["fetch_max_wait_ms"]),
            metadata_max_age_ms=int(k["metadata_max_age_ms"]),
            # A message over this size still comes (alone) and an oversized one reaches the
            # DLQ: tests/daemon/test_kafka_ingest.py checks it on the broker.
            max_partition_fetch_bytes=int(k["max_partition_fetch_bytes"]),
            on_assign=daemon.assign,
            on_revoke=daemon.revoke,
            group_instance_id=k["group_instance_id"],
        )

    executor = None
    on_labeled = None
    sync_labeled = None
    share = None
    holder: dict[str, Any] = {"policies": policies}
    if with_state and with_actions:
        executor, on_labeled, sync_labeled, examples = _actions(
            settings, policies, sink, loader, holder
        )
        if d["state"]["backend"] == "kafka" and not use_file:
            share = holder["share"] = _labeled_share(
                settings, examples, partitions=counts["predictions"]
            )
    # One replica = one state directory: replicas sharing a host differ by their directory.
    replica = (
        d["state"]["replica_id"] or f"{socket.gethostname()}:{Path(d['state']['dir']).resolve()}"
    )
    daemon = Daemon(
        actions_unit="actions" if d["state"]["backend"] == "local" else f"actions-{replica}",
        replica=replica,
        handover=d["state"]["backend"] == "kafka",
        source_factory=source_factory,
        sink=sink,
        store=store,
        policies=policies,
        profile_loader=loader,
        options=opts,
        executor=executor,
        on_labeled=on_labeled,
        labeled_share=share,
        **daemon_kwargs,
    )
    if sync_labeled is not None:
        daemon.before_checkpoint.append(sync_labeled)
    if share is not None:
        share.metrics = daemon.metrics
    if executor is not None:
        executor.metrics = daemon.metrics
        launcher = executor.retrain_launcher
        if isinstance(launcher, RetrainLauncher):
            launcher.history = daemon.history_of
            launcher.tracking_uri = d["mlflow"]["tracking_uri"]

    def follow(new: PolicySet) -> None:
        loader.policies = new
        holder["policies"] = new

    daemon.policy_listeners.append(follow)
    return daemon


def _actions(
    settings: Settings,
    policies: PolicySet,
    sink: Sink,
    loader: ProfileLoader,
    holder: dict[str, Any],
) -> tuple[Any, Any, Callable[[], Any], tuple[Any, Callable[[str], bool]]]:
    """The action executor, the labeled store's append and sync, (with MLflow) the worker;
    and the store with the test of whether a model's examples are kept. The append hands the
    stored rows on to ``holder["share"]`` (a :class:`LabeledShare`) when there is one."""

    from .actions import ActionExecutor

    d = settings.data
    state_dir = Path(d["state"]["dir"])
    store = labeled_store(settings)
    uri = d["mlflow"]["tracking_uri"]
    registry_factory = None
    launcher = None
    if uri:
        from driftwarden.retrain.pipeline import RetrainWorker
        from driftwarden.retrain.registry import Registry

        def registry_factory() -> Registry:
            return Registry(uri)

        from importlib.metadata import version

        worker = RetrainWorker(
            registry=Registry(uri),
            store=store,
            code_version=f"driftwarden {version('driftwarden')}",
        )
        config_dir = str(Path(d["policies"]).resolve().parent)
        launcher = RetrainLauncher(
            worker,
            lambda: holder["policies"],
            loader,
            sink=sink,
            decisions_topic=d["kafka"]["topics"]["decisions"],
            search_paths=[config_dir],
        )
    try:
        executor = ActionExecutor(
            state_dir / "outbox.sqlite",
            sink,
            policies,
            topics=dict(d["kafka"]["topics"]),
            registry_factory=registry_factory,
            retrain_launcher=launcher,
            resend_every_s=parse_duration(d["scheduler"]["alert_resend"]),
            outbox_options={
                "base_s": parse_duration(d["actions"]["retry_base"]),
                "cap_s": parse_duration(d["actions"]["retry_max"]),
            },
        )
    except PolicyError as exc:
        raise StartupError(str(exc)) from None

    # Only a model whose policy retrains can use its labeled examples (a retrain, manual or
    # not, needs the policy's retrain action): the others' are not stored, which saves the
    # store's disk and index (~0.7 KB and ~40 B of memory per row, up to retrain.labeled_rows
    # per model) and ~7 % of the ingest time. Answered once per model and policy set (a hot
    # reload asks again).
    retrains: dict[str, bool] = {}
    asked_of: list[Any] = [None]

    def keeps_examples(model: str) -> bool:
        current = holder["policies"]
        if asked_of[0] is not current:
            asked_of[0] = current
            retrains.clear()
        answer = retrains.get(model)
        if answer is None:
            try:
                policy = current.for_model(model)
            except PolicyError:
                policy = None
            answer = policy is not None and any(
                kind == "retrain" for rule in policy.rules for kind, _ in rule.actions
            )
            retrains[model] = answer
        return answer

    def on_labeled(model: str, rows: list[dict[str, Any]], partition: int) -> None:
        if not keeps_examples(model):
            return
        share = holder.get("share")
        written: list[bytes] | None = [] if share is not None else None
        try:
            # fsync'ed at the next checkpoint (on_labeled.sync), before the offsets commit.
            store.append(model, rows, sync=False, written=written)
        except ValueError as exc:  # e.g. a model name that cannot name a folder
            log.warning("labeled examples not stored", model=model, error=str(exc))
        if share is not None and written:
            share.add(partition, model, written)

    return executor, on_labeled, store.sync, (store, keeps_examples)


def _labeled_share(
    settings: Settings, examples: tuple[Any, Callable[[str], bool]], *, partitions: int
) -> Any:
    """The labeled examples' handover through ``kafka.topics.labeled`` (state.backend kafka)."""
    from .labeled_share import LabeledShare, LabeledShareError, LabeledTopicMissing

    d = settings.data
    k = d["kafka"]
    store, keeps = examples
    try:
        return LabeledShare(
            k["bootstrap_servers"],
            k["topics"]["labeled"],
            store=store,
            keeps=keeps,
            max_rows=int(d["retrain"]["labeled_rows"]),
            marks_path=Path(d["state"]["dir"]) / "labeled-shared.json",
            partitions=partitions,
            security=dict(k["security"]),
            client_id=k["client_id"],
            create_topic=bool(k["create_topics"]),
            retention_ms=int(parse_duration(d["retrain"]["labeled_retention"]) * 1000),
        )
    except LabeledTopicMissing as exc:
        # Monitoring does not need it: the examples then stay with the replica that joined them.
        log.warning("labeled examples will not move with their partitions", reason=str(exc))
        return None
    except LabeledShareError as exc:
        raise StartupError(str(exc)) from None


def labeled_store(
    settings: Settings, *, read_only: bool = False, directory: Path | None = None
) -> Any:
    """The joined examples retrains draw on, under the state directory (or ``directory``),
    bounded by settings (``read_only``: for a reader beside a running daemon, which owns the
    folder)."""
    from driftwarden.retrain.labeled_store import LabeledStore

    d = settings.data
    age = d["retrain"]["labeled_max_age"]
    return LabeledStore(
        directory if directory is not None else Path(d["state"]["dir"]) / "labeled",
        max_rows_per_model=int(d["retrain"]["labeled_rows"]),
        max_age_s=None if age is None else parse_duration(age),
        read_only=read_only,
    )


def attach_scheduler(daemon: Daemon, settings: Settings) -> Any:
    """Start the clock-driven jobs: action ticks, policy hot reload, freshness."""
    import time

    from .wiring import Scheduler, policy_files_signature

    d = settings.data
    sched = Scheduler(daemon.work)
    if daemon.executor is not None:
        sched.every_on_thread(parse_duration(d["scheduler"]["outbox"]), daemon.tick, "actions")
    policy_dir = d["policies"]
    seen = {"sig": policy_files_signature(policy_dir)}

    def cron_job(policy: Any) -> Callable[[], None]:
        def job() -> None:
            daemon.scheduled_retrain(policy, time.time())

        return job

    def schedule_retrains() -> None:
        sched.remove_prefixed("cron-")
        for policy in daemon.policies.policies:
            if policy.schedule is not None:
                sched.cron(policy.schedule.cron, cron_job(policy), f"cron-{policy.source}")

    schedule_retrains()
    daemon.policy_listeners.append(lambda _: schedule_retrains())

    def reload() -> None:
        sig = policy_files_signature(policy_dir)
        if sig == seen["sig"]:
            return
        seen["sig"] = sig
        daemon.reload_policies(policy_dir)

    sched.every(parse_duration(d["scheduler"]["policy_reload"]), reload, "policy-reload")
    silences = silence_store(settings)
    shared = isinstance(silences, SilenceUnit)
    seen_silences: dict[str, Any] = {"sig": None, "value": None}

    def reload_silences() -> None:
        if not isinstance(silences, SilenceUnit):  # a file: read again only when it changed
            sig = policy_files_signature(silences)
            if sig == seen_silences["sig"]:
                return
            seen_silences["sig"] = sig
        try:
            current = tuple(load_silences(silences))
        except (PolicyError, CheckpointError) as exc:  # the last good silences stay in force
            log.error("silences not reloaded", error=str(exc))
            return
        if current != seen_silences["value"]:
            if seen_silences["value"] is not None or current:  # at start, only if any
                now = time.time()
                log.info(
                    "silences changed",
                    active=sorted(f"{s.id} ({s.model}/{s.rule})" for s in current if s.active(now)),
                    total=len(current),
                )
            seen_silences["value"] = current
            if shared:  # read on its own thread; the monitors are changed on the main loop
                daemon.work.put(partial(daemon.set_silences, SilenceSet(current)))
            else:
                daemon.set_silences(SilenceSet(current))

    reload_silences()
    every = parse_duration(d["scheduler"]["policy_reload"])
    if isinstance(silences, SilenceUnit):
        sched.on_shutdown(silences.close)
        # Reading the silences topic up to its end waits on the broker: never on the main loop.
        sched.every_on_thread(every, reload_silences, "silences")
    else:
        sched.every(every, reload_silences, "silences")
    stale_after = parse_duration(d["scheduler"]["freshness"])

    def freshness() -> None:
        now = time.time()
        for model in daemon.report_freshness(now, stale_after):
            age = now - daemon.last_event_wall[model]
            log.warning("no events for this model", model=model, seconds=round(age))

    sched.every(min(stale_after, 60.0), freshness, "freshness")
    sched.start()
    return sched
