"""Connecting the daemon's loop to actions, retraining and the scheduler.

* :class:`RetrainLauncher` — the outbox's ``retrain`` handler: submits the request to the
  :class:`~driftwarden.retrain.pipeline.RetrainWorker` (off the main loop, one at a time per
  model), answers "retry" while it runs, records the outcome, and lets a registry outage be
  retried later (the action key keeps it to one registered version).
* :class:`Scheduler` — APScheduler 3.x jobs for what only a clock can see (outbox ticks, policy
  reload, freshness). Jobs never touch state: they only put work on the daemon's queue, which
  the main loop drains.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
import structlog

from driftwarden.policies.model import PolicySet
from driftwarden.policies.receivers.base import Delivery

from .sinks import Sink

__all__ = ["RetrainLauncher", "Scheduler"]

log = structlog.get_logger(__name__)


class RetrainLauncher:
    """Outbox handler for ``retrain`` actions (see the module docstring)."""

    def __init__(
        self,
        worker: Any,
        policies: Callable[[], PolicySet],
        profile_loader: Callable[[str, str | None], Any],
        *,
        sink: Sink,
        decisions_topic: str,
        search_paths: list[str],
    ) -> None:
        self.worker = worker
        self.policies = policies
        self.profile_loader = profile_loader
        self.sink = sink
        self.decisions_topic = decisions_topic
        self.search_paths = search_paths
        self._futures: dict[str, Future[Any]] = {}
        self.outcomes: list[dict[str, Any]] = []
        #: (model) -> (window summaries, decisions): attached to each retrain run as its report
        self.history: Callable[[str], tuple[list[dict[str, Any]], list[dict[str, Any]]]] | None = (
            None
        )
        self.tracking_uri: str | None = None

    def _request(self, decision: Mapping[str, Any], action: Mapping[str, Any]) -> Any:
        model = str(decision["model"])
        policy = self.policies().for_model(model)
        if policy is None:
            raise ValueError(f"no policy matches model {model!r} any more.")
        return retrain_request(
            decision, action, policy, self.profile_loader(model, None), self.search_paths
        )

    def __call__(self, decision: Mapping[str, Any], action: Mapping[str, Any]) -> Delivery:
        from driftwarden.retrain.registry import Unavailable

        key = str(action["key"])
        fut = self._futures.get(key)
        if fut is None:
            try:
                request = self._request(decision, action)
            except Exception as exc:  # a request that cannot be built will never succeed
                return Delivery.dead(f"retrain request for {decision.get('model')!r}: {exc}")
            self._futures[key] = self.worker.submit(request)
            log.info("retrain submitted", model=decision.get("model"), key=key)
            return Delivery.retry("retrain running")
        if not fut.done():
            return Delivery.retry("retrain running")
        del self._futures[key]
        err = fut.exception()
        if isinstance(err, Unavailable):
            return Delivery.retry(f"MLflow unavailable: {err}")
        if err is not None:
            return Delivery.dead(f"retrain failed: {type(err).__name__}: {err}")
        outcome = fut.result().to_dict()
        record = {
            "record": "retrain_outcome",
            "model": decision.get("model"),
            "rule": decision.get("rule"),
            "trigger": decision.get("key"),
            "action_key": key,
            **{
                k: outcome.get(k) for k in ("status", "version", "run_id", "reasons", "alias_moves")
            },
        }
        self.outcomes.append(record)
        if record["run_id"]:
            self._attach_report(str(decision.get("model")), str(record["run_id"]))
        self.sink.publish(
            self.decisions_topic,
            str(decision.get("model")),
            orjson.dumps(record, option=orjson.OPT_SORT_KEYS, default=str),
        )
        log.info(
            "retrain finished",
            model=decision.get("model"),
            status=record["status"],
            version=record["version"],
            reasons=record["reasons"],
        )
        return Delivery.success()

    def _attach_report(self, model: str, run_id: str) -> None:
        """Log the driftwarden report of what led to this retrain on its MLflow run."""
        if self.history is None or self.tracking_uri is None:
            return
        from mlflow.tracking import MlflowClient

        from .report import render_report

        windows, decisions = self.history(model)
        try:
            html = render_report(
                windows, decisions, title=f"driftwarden: {model} before this retrain"
            )
            MlflowClient(self.tracking_uri).log_text(run_id, html, "driftwarden/report.html")
        except Exception as exc:  # the run is registered already; a missing report is logged
            log.warning("report not attached to the retrain run", run_id=run_id, error=str(exc))


def retrain_request(
    decision: Mapping[str, Any],
    action: Mapping[str, Any],
    policy: Any,
    profile: Any,
    search_paths: list[str],
) -> Any:
    """The retrain request of a decision's retrain action: features and slices from the
    model's reference profile, the data gate's settings from the policy's data_quality detector,
    the trainer looked up next to the policy, then in ``search_paths``."""
    from driftwarden.retrain.pipeline import RetrainRequest

    dq = next((dict(d.params) for d in policy.detectors if d.type == "data_quality"), {})
    segments = sorted((profile.metrics or {}).get("slices", {}))
    paths = [str(Path(policy.source).parent), *search_paths]
    return RetrainRequest.from_decision(
        decision,
        action,
        target="label",
        features=list(profile.features),
        segments=segments,
        data_quality=dq,
        search_paths=paths,
    )


class Scheduler:
    """A background APScheduler whose jobs enqueue callables on ``work`` (one state thread)."""

    def __init__(self, work: Any) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.work = work
        self._sched = BackgroundScheduler(daemon=True, timezone="UTC")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closers: list[Callable[[], None]] = []

    def on_shutdown(self, close: Callable[[], None]) -> None:
        """Call ``close`` at :meth:`shutdown`, after the jobs' threads (a resource they use)."""
        self._closers.append(close)

    def every(self, seconds: float, job: Callable[[], None], name: str) -> None:
        """Enqueue ``job`` on the main loop every ``seconds`` (skipped if the last is queued)."""
        pending = {"queued": False}

        def run() -> None:
            pending["queued"] = False
            job()

        def enqueue() -> None:
            if not pending["queued"]:
                pending["queued"] = True
                self.work.put(run)

        self._sched.add_job(
            enqueue, "interval", seconds=seconds, id=name, name=name, coalesce=True, max_instances=1
        )

    def every_on_thread(self, seconds: float, job: Callable[[], None], name: str) -> None:
        """Run ``job`` every ``seconds`` on a thread of its own, off the main loop.

        For work that may block on the network (action delivery: a receiver or the registry
        down must not stall monitoring). A run that raises is logged; the next one still runs.
        """

        if not seconds > 0:  # Event.wait(0) would spin a core (settings refuse 0 intervals)
            raise ValueError(f"{name}: the interval must be longer than 0, got {seconds!r}")

        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    job()
                except Exception:
                    log.exception("scheduled job failed", job=name)

        self._threads.append(threading.Thread(target=loop, name=name, daemon=True))

    def cron(self, crontab: str, job: Callable[[], None], name: str) -> None:
        """Enqueue ``job`` on the main loop at the times of a crontab (UTC); replaces ``name``."""
        from apscheduler.triggers.cron import CronTrigger

        trigger = CronTrigger.from_crontab(crontab, timezone="UTC")
        self._sched.add_job(
            lambda: self.work.put(job),
            trigger,
            id=name,
            name=name,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
        )

    def remove_prefixed(self, prefix: str) -> None:
        """Remove every job whose name starts with ``prefix``."""
        for job in self._sched.get_jobs():
            if job.id.startswith(prefix):
                job.remove()

    def start(self) -> None:
        self._sched.start()
        for t in self._threads:
            t.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop scheduling; a job running on its own thread may finish within ``timeout``."""
        self._sched.shutdown(wait=False)
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)
        for close in self._closers:
            close()


def policy_files_signature(path: str | Path) -> tuple[tuple[str, float, int], ...]:
    """(name, mtime, size) of every policy file: a cheap change check for hot reload."""
    p = Path(path)
    files = sorted(p.glob("*.y*ml")) if p.is_dir() else [p]
    out = []
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        out.append((str(f), st.st_mtime, st.st_size))
    return tuple(out)
