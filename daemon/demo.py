"""``driftwarden demo``: the whole loop on embedded defaults, in under a minute.

No Kafka, no servers: MLflow runs on SQLite in the demo directory, events reach the daemon
through :class:`InProcessSource` (raw JSON bytes, so decoding, joining, windows, detectors,
policies, the outbox and the retrain worker are the daemon's own code), and alerts go to the
policy's ``log`` receivers. The story, in event-time order:

1. **bootstrap** — two logistic churn models are trained through the retrain pipeline
   (``promote: auto``): version 1 becomes ``previous``, version 2 ``champion``; ``serving``
   points at version 2. Each run carries its reference profile and training snapshot;
2. **clean traffic** scored by the model ``serving`` points at, with delayed labels;
3. **the incident** — an upstream pipeline starts filling missing ``days_since_last_login``
   (and ``monthly_spend``) with 0: ``broken-input`` fires, alerts on-call and falls back
   (``serving`` → ``previous``, ``ModelFallbackActive``);
4. **an operator asks for a retrain** during the incident — a ``manual-retrain`` decision
   handed to the same action executor and outbox the policies use (the policy itself never
   retrains on a window whose data quality fired). The retrain pipeline's **data gate**
   refuses: the snapshot holds the zero-filled rows;
5. **the pipeline is fixed** — after ``recover_after`` clean windows ``serving`` routes back to
   the champion and the fallback alert resolves;
6. **a real population shift** (longer login gaps) — ``drifted`` fires for ``for:`` windows
   and retrains; the candidate passes its gates and is registered as ``challenger``.

The demo's "serving app" re-reads ``models:/churn@serving`` before every batch of
:data:`BATCH` predictions, so the fallback changes which version scores the traffic (and the
events' ``model_version``). After each batch the demo runs the due actions until the outbox is
empty, so the story reads in order (the daemon itself never waits for its actions).
"""

from __future__ import annotations

import copy
import importlib.resources
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import orjson
import pandas as pd
import structlog

from driftwarden.examples import churn
from driftwarden.policies.model import Decision, Policy, PolicySet
from driftwarden.retrain.labeled_store import LabeledStore
from driftwarden.retrain.pipeline import RetrainRequest, RetrainWorker, run_retrain
from driftwarden.retrain.registry import Registry

from .actions import ActionExecutor
from .app import StartupError, load_policy_set, options_from
from .checkpoint import LocalCheckpointStore
from .events import LABEL_SCHEMA, PREDICTION_SCHEMA, format_time
from .manual import manual_retrain_decision
from .profiles import ProfileLoader
from .report import build_report
from .runner import Daemon
from .settings import DEFAULTS, Settings
from .sinks import FileSink
from .sources import RawRecord, Source
from .wiring import RetrainLauncher

__all__ = [
    "BATCH",
    "DEMO_POLICIES",
    "DemoResult",
    "InProcessSource",
    "run_demo",
    "train_logistic",
]

log = structlog.get_logger(__name__)

MODEL = "churn"
#: predictions per batch the demo's serving app scores with one model version (= one window)
BATCH = 500
#: the demo's policy (config/demo/policies in the source tree)
# Shipped inside the package (config/examples is installed as driftwarden.examples).
DEMO_POLICIES = Path(str(importlib.resources.files("driftwarden.examples") / "demo" / "policies"))
# Event time of the first prediction (2026-11-18T00:00:00Z) and the gap between predictions.
T0 = 1_795_046_400.0
STEP_S = 2.0
# The retrain snapshot is the labeled store; the demo keeps it to about three windows of
# labeled examples so the incident's rows age out once the pipeline is fixed, as they would
# in a store bounded by rows or age.
STORE_ROWS = 1200
SETTLE_TIMEOUT_S = 120.0


def train_logistic(
    train: pd.DataFrame, *, target: str, features: list[str], params: Mapping[str, Any]
) -> Any:
    """The demo policy's trainer: the example churn trainer with a logistic model (fast)."""
    return churn.train(
        train, target=target, features=features, params={"kind": "logistic", **params}
    )


class InProcessSource(Source):
    """Raw records handed over in process (one topic, one partition; offsets are positions).

    ``feed`` appends JSON bytes as a producer would publish them (keyed by model); ``poll``
    hands them to the daemon in order. Like the file source, the event's ``schema`` field tells
    predictions from labels.
    """

    TOPIC = "demo"

    def __init__(self) -> None:
        self.roles = {self.TOPIC: None}
        self._records: list[RawRecord] = []
        self._next = 0

    def feed(self, values: Iterable[bytes], key: str | None = MODEL) -> int:
        """Append raw event bytes; returns how many were added."""
        raw_key = None if key is None else key.encode()
        start = len(self._records)
        for value in values:
            offset = len(self._records)
            self._records.append(RawRecord(self.TOPIC, 0, offset, raw_key, value, None))
        return len(self._records) - start

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        out = self._records[self._next : self._next + max_records]
        self._next += len(out)
        return out

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        self._next = offsets.get((self.TOPIC, 0), 0)

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._records)


@dataclass
class DemoResult:
    """What a demo run did and where its outputs are.

    ``decisions``: every decision record in order (``Decision.to_dict()`` form, including the
    operator's ``manual-retrain``); ``retrain_outcomes``: the ``retrain_outcome`` records the
    retrain launcher published; ``routes``: the routing records (fallback, route back);
    ``story``: the lines printed.
    """

    directory: Path
    mlflow_uri: str
    report_path: Path
    windows_path: Path
    decisions_path: Path
    decisions: list[dict[str, Any]] = field(default_factory=list)
    retrain_outcomes: list[dict[str, Any]] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    story: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- bootstrap ---------------------------------------------------------------------------------
def _bootstrap(registry: Registry, directory: Path, out: _Story) -> None:
    """Versions 1 (``previous``) and 2 (``champion``, ``serving``) through the retrain pipeline."""
    store = LabeledStore(directory / "bootstrap-store")
    reference = churn.generate(2000, seed=1)
    base: dict[str, Any] = {
        "model": MODEL,
        "target": churn.TARGET,
        "features": churn.FEATURES,
        "segments": churn.SEGMENTS,
        "trainer": "driftwarden.daemon.demo:train_logistic",
        "promote": "auto",
        "gates": {"min": {"roc_auc": 0.6}},
    }
    for n, (rows, seed, params) in enumerate(
        ((1000, 2, {"C": 0.01}), (3000, 3, {"C": 1.0})), start=1
    ):
        store.append(MODEL, churn.to_rows(churn.generate(rows, seed=seed), start=n * 100_000))
        key = f"demo/bootstrap/v{n}"
        request = RetrainRequest(
            trigger={"key": key, "rule": "demo-bootstrap"}, action_key=key, params=params, **base
        )
        outcome = run_retrain(
            request, registry=registry, store=store, reference_data=reference, code_version="demo"
        )
        if outcome.status != "registered":
            raise RuntimeError(
                f"demo bootstrap: version {n} of model {MODEL!r} was not registered "
                f"({outcome.status}: {'; '.join(outcome.reasons)})."
            )
        auc = outcome.report.get("candidate", {}).get("overall", {}).get("roc_auc")
        out.say(
            f"bootstrap: trained version {outcome.version} (logistic, holdout roc_auc "
            f"{auc:.3f}) and made it champion"
        )
    champion = registry.version_by_alias(MODEL, "champion")
    assert champion is not None  # the loop above registered and promoted it
    registry.set_serving(MODEL, "champion", "driftwarden demo", "bootstrap: serve the champion")
    out.say(
        f"bootstrap: champion = v{champion}, previous = "
        f"v{registry.version_by_alias(MODEL, 'previous')}, serving = v{champion}"
    )


# -- events ------------------------------------------------------------------------------------
class _ServingApp:
    """Scores traffic with whatever ``models:/churn@serving`` points at, and emits events."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._models: dict[str, Any] = {}
        self.t = T0
        self.n = 0
        self.rng = np.random.default_rng(7)

    def batch(self, frame: pd.DataFrame) -> tuple[str, list[bytes]]:
        """Prediction events for ``frame`` and their delayed labels, in event-time order."""
        ver = self.registry.version_by_alias(MODEL, "serving")
        if ver is None:
            raise RuntimeError(f"model {MODEL!r} has no 'serving' alias to score traffic with.")
        model = self._models.get(ver)
        if model is None:
            model = self._models[ver] = self.registry.load_model(MODEL, ver)
        scores = np.asarray(model.predict_proba(frame[churn.FEATURES]))[:, 1]
        delays = self.rng.exponential(120.0, len(frame)) + 10.0
        labeled = self.rng.random(len(frame)) < 0.9
        timed: list[tuple[float, int, bytes]] = []
        for i, row in enumerate(frame.to_dict("records")):
            ts = self.t + i * STEP_S
            pid = f"{MODEL}-{self.n + i}"
            timed.append((ts, 0, _prediction(pid, ver, ts, row, float(scores[i]))))
            if labeled[i]:
                lts = round(ts + float(delays[i]), 3)
                timed.append((lts, 1, _label(pid, lts, int(row[churn.TARGET]))))
        self.n += len(frame)
        self.t += len(frame) * STEP_S
        timed.sort(key=lambda x: (x[0], x[1]))
        return ver, [raw for _, _, raw in timed]


def _prediction(pid: str, ver: str, ts: float, row: Mapping[str, Any], score: float) -> bytes:
    return orjson.dumps(
        {
            "schema": PREDICTION_SCHEMA,
            "prediction_id": pid,
            "model": MODEL,
            "model_version": ver,
            "timestamp": format_time(ts),
            "features": {k: row[k] for k in churn.FEATURES},
            "prediction": {"label": int(score >= 0.5), "score": round(score, 6)},
            "segment": {k: row[k] for k in churn.SEGMENTS},
        }
    )


def _label(pid: str, ts: float, label: int) -> bytes:
    return orjson.dumps(
        {
            "schema": LABEL_SCHEMA,
            "prediction_id": pid,
            "model": MODEL,
            "timestamp": format_time(ts),
            "label": label,
        }
    )


# -- the story ---------------------------------------------------------------------------------
class _Story:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, file=self.out, flush=True)


def _settings(directory: Path, uri: str) -> Settings:
    data: dict[str, Any] = copy.deepcopy(DEFAULTS)
    data["source"] = "file"  # no Kafka; the in-process source replaces the file
    data["file"] = {"events": None, "out_dir": str(directory / "out")}
    data["policies"] = str(DEMO_POLICIES)
    data["state"]["dir"] = str(directory / "state")
    data["mlflow"]["tracking_uri"] = uri
    data["http"]["enabled"] = False
    return Settings(data=data, source_path="driftwarden demo")


def _code_version() -> str:
    try:
        return f"driftwarden {version('driftwarden')} (demo)"
    except PackageNotFoundError:
        return "driftwarden (demo)"


def _wire(
    settings: Settings, policies: PolicySet, sink: FileSink, source: InProcessSource
) -> tuple[Daemon, RetrainLauncher]:
    """The daemon as ``build_daemon`` wires it, with the in-process source, a labeled store
    bounded to :data:`STORE_ROWS` and a fast outbox backoff (the demo polls it)."""
    d = settings.data
    uri = str(d["mlflow"]["tracking_uri"])
    state_dir = Path(d["state"]["dir"])
    loader = ProfileLoader(policies, tracking_uri=uri)
    store = LabeledStore(state_dir / "labeled", max_rows_per_model=STORE_ROWS)
    worker = RetrainWorker(registry=Registry(uri), store=store, code_version=_code_version())
    launcher = RetrainLauncher(
        worker,
        lambda: policies,
        loader,
        sink=sink,
        decisions_topic=d["kafka"]["topics"]["decisions"],
        search_paths=[str(DEMO_POLICIES.parent)],
    )
    executor = ActionExecutor(
        state_dir / "outbox.sqlite",
        sink,
        policies,
        topics=dict(d["kafka"]["topics"]),
        registry_factory=lambda: Registry(uri),
        retrain_launcher=launcher,
        outbox_options={"base_s": 0.05, "cap_s": 0.5},
    )

    def on_labeled(model: str, rows: list[dict[str, Any]], partition: int = 0) -> None:
        store.append(model, rows)

    def source_factory(daemon: Daemon) -> Source:
        source.seek(daemon.assign([0]))
        return source

    daemon = Daemon(
        source_factory=source_factory,
        sink=sink,
        store=LocalCheckpointStore(state_dir),
        policies=policies,
        profile_loader=loader,
        options=options_from(settings),
        executor=executor,
        on_labeled=on_labeled,
    )
    executor.metrics = daemon.metrics
    launcher.history = daemon.history_of
    launcher.tracking_uri = uri
    return daemon, launcher


def _settle(daemon: Daemon) -> None:
    """Run due actions until the outbox has nothing pending (retrains included)."""
    executor = daemon.executor
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        daemon.tick()
        if not executor.outbox.pending():
            return
        if time.monotonic() > deadline:
            keys = [j.key for j in executor.outbox.pending()]
            raise RuntimeError(
                f"demo: actions still pending after {SETTLE_TIMEOUT_S:.0f} s: {', '.join(keys)}."
            )
        time.sleep(0.05)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _manual_retrain(policy: Policy, at: float) -> Decision:
    """An operator's retrain request, with the ``drifted`` rule's trainer and gates."""
    try:
        return manual_retrain_decision(
            policy,
            MODEL,
            at,
            requested_by="operator (driftwarden demo)",
            reason="an operator asked for a retrain while the incident was on",
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from None


class _Narrator:
    """Turns new decision / outcome / route records into one story line each."""

    def __init__(
        self, story: _Story, out_dir: Path, topics: Mapping[str, str], registry: Registry
    ) -> None:
        self.story = story
        self.registry = registry
        self.paths = {k: out_dir / f"{topics[k]}.jsonl" for k in ("decisions", "routing")}
        self.seen = {k: 0 for k in self.paths}

    def new(self, kind: str) -> list[dict[str, Any]]:
        records = _read_jsonl(self.paths[kind])
        fresh = records[self.seen[kind] :]
        self.seen[kind] = len(records)
        return fresh

    def tell(self) -> None:
        for rec in self.new("decisions"):
            if rec.get("record") == "retrain_outcome":
                self.story.say(_outcome_line(rec, self._metrics(rec.get("run_id"))))
            else:
                self.story.say(_decision_line(rec))
        for rec in self.new("routing"):
            self.story.say(
                f"  route: serving of {rec['model']} -> {rec['target']} (version "
                f"{rec['version']}) [{rec['action']}]"
            )

    def _metrics(self, run_id: Any) -> dict[str, float]:
        if not run_id:
            return {}
        return dict(self.registry.client.get_run(str(run_id)).data.metrics)


def _decision_line(d: Mapping[str, Any]) -> str:
    fired = sorted(k for k, v in (d.get("detectors") or {}).items() if v)
    actions = ", ".join(_action_text(a) for a in d.get("actions") or []) or "no actions"
    evidence = _evidence_text(d)
    line = (
        f"{d.get('window_end')}  {d.get('rule')} {d.get('status')} ({d.get('severity')}); "
        f"detectors fired: {', '.join(fired) or 'none'}; actions: {actions}"
    )
    if evidence:
        line += f"\n    evidence: {evidence}"
    for reason in d.get("reasons") or []:
        line += f"\n    why: {reason}"
    return line


def _action_text(a: Mapping[str, Any]) -> str:
    p = a.get("params") or {}
    if a.get("type") in ("alert", "resolve"):
        return f"{a['type']} {p.get('receiver')}"
    if a.get("type") == "fallback":
        return f"fallback to {p.get('to')}"
    return str(a.get("type"))


def _evidence_text(d: Mapping[str, Any]) -> str:
    ev = d.get("evidence") or {}
    parts = []
    for name in sorted(ev):
        e = ev[name]
        if not isinstance(e, Mapping) or not (d.get("detectors") or {}).get(name):
            continue
        top = (
            (e.get("evidence") or {}).get("top") if isinstance(e.get("evidence"), Mapping) else None
        )
        if top and isinstance(top[0], Mapping):
            t = top[0]
            what = ", ".join(t.get("checks") or []) or "drift"
            stat = t.get("statistic")
            extra = f" {stat:.3f}" if isinstance(stat, (int, float)) else ""
            parts.append(f"{name}: {what} on {t.get('feature')}{extra}")
        elif e.get("statistic") is not None:
            parts.append(f"{name}: statistic {e['statistic']:.3g}")
    return "; ".join(parts)


def _outcome_line(rec: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
    status = rec.get("status")
    line = f"  retrain for {rec.get('rule')}: {status}"
    if rec.get("version"):
        line += f", version {rec['version']}"
    moves = [f"{m['alias']} -> v{m['version']}" for m in rec.get("alias_moves") or []]
    if moves:
        line += f" ({', '.join(moves)})"
    cand, champ = metrics.get("candidate.roc_auc"), metrics.get("champion.roc_auc")
    if cand is not None:
        line += f"\n    evidence: holdout roc_auc candidate {cand:.3f}"
        line += f" vs champion {champ:.3f}" if champ is not None else ""
    for reason in (rec.get("reasons") or [])[:4]:
        line += f"\n    why: {reason[:200]}"
    return line


def _report_rows(
    decisions: list[dict[str, Any]], outcomes: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Decisions plus one row per retrain outcome, at its trigger's window, for the report."""
    by_key = {d.get("key"): d for d in decisions}
    rows = list(decisions)
    for o in outcomes:
        trigger = by_key.get(o.get("trigger"))
        if trigger is None:
            continue
        rows.append(
            {
                "model": o.get("model"),
                "rule": f"{o.get('rule')}: retrain",
                "severity": "info",
                "status": o.get("status"),
                "window_start": trigger.get("window_start"),
                "window_end": trigger.get("window_end"),
                "detectors": {},
                "actions": [],
                "evidence": {"version": o.get("version"), "run_id": o.get("run_id")},
                "reasons": list(o.get("reasons") or []),
            }
        )
    return rows


# -- the run -----------------------------------------------------------------------------------
def run_demo(directory: Path, *, out: TextIO = sys.stdout) -> DemoResult:
    """Run the demo into ``directory`` (created; must not hold an earlier demo's MLflow
    database) and print the story to ``out``; returns what happened (:class:`DemoResult`)."""
    started = time.perf_counter()
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "mlflow.db"
    if db.exists():
        raise StartupError(
            f"{db} already exists: run the demo into a new or empty directory "
            "(the demo registers model versions 1 and 2 of 'churn' itself)."
        )
    uri = f"sqlite:///{db}"
    story = _Story(out)
    registry = Registry(uri)
    # The retrain pipeline logs into the experiment "driftwarden/<model>"; created here so its
    # artifacts live in the demo directory, not in ./mlruns of the working directory.
    registry.client.create_experiment(
        f"driftwarden/{MODEL}", artifact_location=(directory / "artifacts").as_uri()
    )
    _bootstrap(registry, directory, story)

    settings = _settings(directory, uri)
    policies = load_policy_set(DEMO_POLICIES)
    policy = policies.for_model(MODEL)
    assert policy is not None  # the demo policy matches its own model
    topics = settings.topics
    out_dir = Path(settings.data["file"]["out_dir"])
    sink = FileSink(out_dir)
    source = InProcessSource()
    daemon, launcher = _wire(settings, policies, sink, source)
    narrator = _Narrator(story, out_dir, topics, registry)
    app = _ServingApp(registry)

    def serve(frame: pd.DataFrame) -> str:
        ver, values = app.batch(frame)
        source.feed(values)
        daemon.run()
        _settle(daemon)
        sink.flush()
        narrator.tell()
        return ver

    phases: list[tuple[str, list[pd.DataFrame]]] = [
        ("clean traffic", [churn.generate(BATCH, seed=100 + i) for i in range(3)]),
        (
            "incident: an upstream pipeline fills missing days_since_last_login with 0",
            [churn.generate(BATCH, seed=200 + i, null_as_zero=0.4) for i in range(2)],
        ),
        (
            "pipeline fixed: clean traffic again",
            [churn.generate(BATCH, seed=300 + i) for i in range(3)],
        ),
        (
            "population shift: login gaps grow (shift=0.6)",
            [churn.generate(BATCH, seed=400 + i, shift=0.6) for i in range(3)],
        ),
    ]
    try:
        for title, frames in phases:
            story.say(f"\n== {title} ({len(frames)} x {BATCH} predictions)")
            versions = [serve(frame) for frame in frames]
            story.say(f"  scored by version(s) {', '.join(dict.fromkeys(versions))}")
            if title.startswith("incident"):
                story.say(
                    "\n== an operator asks for a retrain during the incident "
                    "(a manual-retrain decision through the same outbox)"
                )
                decision = _manual_retrain(policy, app.t)
                sink.publish(
                    topics["decisions"],
                    MODEL,
                    orjson.dumps(decision.to_dict(), option=orjson.OPT_SORT_KEYS),
                )
                daemon.executor.on_decisions([decision])
                _settle(daemon)
                sink.flush()
                narrator.tell()
    finally:
        daemon.checkpoint()
        launcher.worker.shutdown()
        daemon.executor.close()
        sink.close()

    windows_path = out_dir / f"{topics['windows']}.jsonl"
    decisions_path = out_dir / f"{topics['decisions']}.jsonl"
    records = _read_jsonl(decisions_path)
    decisions = [r for r in records if r.get("record") is None]
    outcomes = [r for r in records if r.get("record") == "retrain_outcome"]
    report = build_report(
        _read_jsonl(windows_path),
        _report_rows(decisions, outcomes),
        directory / "report.html",
        title="driftwarden demo: churn",
    )
    seconds = time.perf_counter() - started
    aliases = {
        a: registry.version_by_alias(MODEL, a)
        for a in ("champion", "previous", "serving", "challenger")
    }
    story.say(
        "\n== registry now: "
        + ", ".join(f"{a} = v{v}" for a, v in aliases.items() if v is not None)
    )
    story.say(f"report: {report}")
    story.say(f"windows: {windows_path}\ndecisions: {decisions_path}")
    story.say(f"MLflow UI: mlflow ui --backend-store-uri {uri}")
    story.say(f"demo finished in {seconds:.1f} s")
    return DemoResult(
        directory=directory,
        mlflow_uri=uri,
        report_path=report,
        windows_path=windows_path,
        decisions_path=decisions_path,
        decisions=decisions,
        retrain_outcomes=outcomes,
        routes=_read_jsonl(out_dir / f"{topics['routing']}.jsonl"),
        story=story.lines,
        seconds=seconds,
    )
