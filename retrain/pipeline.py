"""The gated retraining pipeline: trigger → registered challenger, or a clear "no".

:func:`run_retrain` does one attempt:

1. **snapshot** = reference data + the recent labeled rows of the model, with a content hash
   (sha256 of a canonical JSON serialisation: columns sorted by name, rows in order);
2. **data gate**: the ``data_quality`` detector, against the champion's reference profile,
   on the recent part of the snapshot — if it fires nothing is trained
   (``blocked_by_data_gate``, the detector's evidence in ``reasons``);
3. **split**: the most recent labeled rows (``holdout_fraction`` of them) are the holdout;
   the rest, shuffled with a fixed seed, is the training set;
4. **train** with the policy's trainer (:mod:`driftwarden.retrain.trainers`);
5. **evaluate** candidate and champion on the same holdout, overall and per slice, and check
   the **model gates** (:mod:`driftwarden.retrain.gates`; missing evidence fails closed);
6. **one MLflow run per attempt**: params, metrics, lineage tags, the snapshot as a dataset
   input (and a parquet artifact, so ``data.reference: champion`` can reuse it), the
   validation report (JSON + HTML) and the candidate's reference profile;
7. **register only if every gate passed**, alias ``challenger``; ``promote: auto`` approves it
   (``champion`` moves, the old one becomes ``previous``).

Idempotent by the action key: a version tagged ``driftwarden.action_key=<key>`` is returned
without training again, so an attempt cut short by an unreachable MLflow (which raises
:class:`~driftwarden.retrain.registry.Unavailable`) and retried later ends with exactly one
version. :class:`RetrainWorker` runs requests off the daemon's main thread, one at a time per
model.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import html
import json
import operator
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, partial
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
import structlog

from .columnar import recent_columns
from .gates import ModelOutputs, check_gates, evaluate, model_outputs, validate_gates
from .labeled_store import (
    LabeledStore,
    flatten_columns,
    flatten_rows,
    frame_of_columns,
    parse_lines,
)
from .registry import PROFILE_ARTIFACT, UNREAD, Registry, RegistryError, Unavailable
from .trainers import load_trainer

__all__ = [
    "REPORT_ARTIFACT",
    "SNAPSHOT_ARTIFACT",
    "RetrainOutcome",
    "RetrainRequest",
    "RetrainWorker",
    "hand_back_memory",
    "load_reference_data",
    "Status",
    "run_retrain",
    "snapshot_hash",
]

log = structlog.get_logger(__name__)

REPORT_ARTIFACT = "driftwarden/validation_report.json"
REPORT_HTML_ARTIFACT = "driftwarden/validation_report.html"
SNAPSHOT_ARTIFACT = "driftwarden/snapshot.parquet"
MODEL_ARTIFACT = "model"
ACTION_KEY_TAG = "driftwarden.action_key"
#: on a run an earlier attempt left unfinished: the run of the attempt that ended it as FAILED
ENDED_BY_TAG = "driftwarden.ended_by"
Status = Literal["registered", "blocked_by_data_gate", "gates_failed", "failed"]
_SCHEMA_SAMPLE_ROWS = 1000
# MLflow's log_batch limits: 100 params, 1000 entities per request.
_BATCH_PARAMS = 100
_BATCH_ENTITIES = 1000
_META_COLUMNS = ("score", "predicted", "value", "timestamp", "prediction_id", "model_version")
_KEPT_META = ("timestamp", "prediction_id")


@dataclass(frozen=True)
class RetrainRequest:
    """What to retrain and how (built by the daemon from the decision and the policy).

    ``trigger`` is the triggering decision as plain data (``Decision.to_dict()``),
    ``action_key`` its idempotency key. ``trainer``, ``gates``, ``promote`` and ``data``
    are the policy's ``retrain`` action (``data: {reference: path | "champion", recent: N}``).
    ``target`` is the label column of the reference data (labeled rows' ``label`` is renamed
    to it); ``features`` the model's inputs; ``segments`` extra slice columns to report on
    (the gate's slice columns are always evaluated). ``data_quality`` are the data-gate
    detector's parameters (the policy's data_quality detector config); ``search_paths``
    where ``module:function`` trainers are imported from.
    """

    model: str
    trigger: Mapping[str, Any]
    action_key: str
    trainer: str | Mapping[str, Any]
    gates: Mapping[str, Any]
    target: str
    features: Sequence[str]
    promote: Literal["manual", "auto"] = "manual"
    data: Mapping[str, Any] = field(default_factory=dict)
    segments: Sequence[str] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    data_quality: Mapping[str, Any] = field(default_factory=dict)
    search_paths: Sequence[str] = ()
    holdout_fraction: float = 0.3
    seed: int = 0
    positive_label: Any = 1

    @classmethod
    def from_decision(
        cls,
        decision: Mapping[str, Any],
        action: Mapping[str, Any],
        *,
        target: str,
        features: Sequence[str],
        segments: Sequence[str] = (),
        data_quality: Mapping[str, Any] | None = None,
        search_paths: Sequence[str] = (),
    ) -> RetrainRequest:
        """Build a request from a decision's ``to_dict()`` and one of its ``retrain`` actions
        (``{"type": "retrain", "params": {trainer, gates, promote, data?, params?}, "key"}``)."""
        if action.get("type") != "retrain":
            raise ValueError(
                f"action {action.get('key')!r} is a {action.get('type')!r} action, not retrain."
            )
        p = action.get("params") or {}
        promote = p.get("promote", "manual")
        if promote not in ("manual", "auto"):
            raise ValueError(
                f"retrain action {action.get('key')!r}: promote {promote!r} is not manual or auto."
            )
        return cls(
            model=str(decision["model"]),
            trigger=dict(decision),
            action_key=str(action["key"]),
            trainer=p["trainer"],
            gates=dict(p.get("gates") or {}),
            promote=promote,
            data=dict(p.get("data") or {}),
            params=dict(p.get("params") or {}),
            target=target,
            features=list(features),
            segments=list(segments),
            data_quality=dict(data_quality or {}),
            search_paths=list(search_paths),
        )


@dataclass(frozen=True)
class RetrainOutcome:
    """The result of one attempt; ``report`` is the validation report (JSON-ready)."""

    status: Status
    version: str | None = None
    run_id: str | None = None
    reasons: list[str] = field(default_factory=list)
    report: Mapping[str, Any] = field(default_factory=dict)
    alias_moves: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the decision log)."""
        return {
            "status": self.status,
            "version": self.version,
            "run_id": self.run_id,
            "reasons": list(self.reasons),
            "report": dict(self.report),
            "alias_moves": list(self.alias_moves),
        }


def snapshot_hash(frame: pd.DataFrame) -> str:
    """sha256 of a canonical serialisation: columns sorted by name, rows in order."""
    cols = sorted(map(str, frame.columns))
    doc = {"columns": cols, "data": [_hash_values(frame[c]) for c in cols]}
    blob = orjson.dumps(
        doc, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=str
    )
    return hashlib.sha256(blob).hexdigest()


# numpy columns orjson writes exactly as the same values as Python objects (float NaN and
# ±inf as null, like ``None``): they go to it as arrays, without a Python object per value.
_NATIVE_DTYPES = (np.dtype("float64"), np.dtype("int64"), np.dtype("bool"))


def _hash_values(column: pd.Series) -> list[Any] | np.ndarray:
    """The column's values as Python objects, float NaN as ``None`` (what the hash sees).

    Vectorised: ``pandas.isna`` finds the candidates in C and only they are checked for being
    float NaN (``None``, ``NaT`` and ``pd.NA`` keep their own serialisation, as before).
    float64, int64 and bool columns are returned as arrays, which serialise to the same bytes.
    """
    dtype = getattr(column, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype in _NATIVE_DTYPES:
        return np.ascontiguousarray(column.to_numpy())
    values = column.astype(object).to_numpy()
    candidates = np.flatnonzero(pd.isna(values))
    if candidates.size:
        # None is kept as it is: only the other missing values are looked at (by type, below)
        candidates = candidates[np.not_equal(values[candidates], np.array(None))]
    if candidates.size:
        # Missing and of a float type (float NaN, np.float64 NaN): issubclass runs once per
        # distinct type, and each value's type is looked up in C, not tested in Python.
        found = values[candidates]
        is_float = {kind: issubclass(kind, float) for kind in set(map(type, found))}
        floats = np.fromiter(
            map(is_float.__getitem__, map(type, found)), dtype=bool, count=found.size
        )
        if floats.any():
            values = values.copy()
            values[candidates[floats]] = None
    return values.tolist()


@cache
def _driftwarden_version() -> str:
    """The installed distribution's version (read once: its metadata is parsed each time)."""
    try:
        return metadata.version("driftwarden")
    except metadata.PackageNotFoundError:
        return "unknown"


def _slice_columns(request: RetrainRequest) -> list[str]:
    return list(dict.fromkeys([*request.segments, *(request.gates.get("slices") or {})]))


def load_reference_data(request: RetrainRequest) -> pd.DataFrame | None:
    """The table named by ``data.reference`` (CSV or parquet; a relative path is looked up in
    ``search_paths`` in order), or ``None`` when there is none or it is ``"champion"`` (the
    pipeline then reads the champion's stored snapshot)."""
    from driftwarden.detectors.profile import read_table

    ref = request.data.get("reference")
    if ref is None or ref == "champion":
        return None
    path = Path(str(ref))
    if not path.is_absolute():
        for base in request.search_paths:
            if (Path(base) / path).exists():
                path = Path(base) / path
                break
    if not path.exists():
        raise FileNotFoundError(
            f"reference data {ref!r} of model {request.model!r} was not found "
            f"(searched {', '.join(map(str, request.search_paths)) or 'the working directory'})."
        )
    return read_table(path)


def _recent_snapshot(request: RetrainRequest, store: LabeledStore) -> tuple[pd.DataFrame, Any]:
    """The recent labeled rows as the snapshot's table and the data gate's batch.

    Read column by column when :func:`~driftwarden.retrain.columnar.recent_columns` can build
    them exactly (the usual case: 0.08 s instead of 0.26 s for 50 000 rows), else from the
    parsed rows, whose dicts are parsed with the collector paused and dropped before it runs
    again (see :func:`_gc_paused`).
    """
    data = store.raw(request.model)
    recent = request.data.get("recent")
    fast = recent_columns(data, None if recent is None else int(recent))
    if fast is not None and (request.target == "label" or request.target not in fast[0]):
        columns, batch = fast
        return _recent_frame_of(request, columns), batch
    with _gc_paused():
        rows = _recent_rows(request, parse_lines(data))
        frame = _recent_frame(request, rows)
        gate_batch = _gate_batch(rows)
        del rows
    return frame, gate_batch


def _recent_rows(
    request: RetrainRequest, stored: list[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The labeled rows the snapshot takes, oldest first."""
    rows = [r for r in stored if r.get("label") is not None]
    recent = request.data.get("recent")
    if recent is not None:
        rows = rows[-int(recent) :] if int(recent) > 0 else []
    stamps: list[Any] = [r.get("timestamp") for r in rows]
    if None in stamps or any(map(operator.gt, stamps, stamps[1:])):
        rows.sort(key=lambda r: (r.get("timestamp") is None, r.get("timestamp") or 0.0))
    # else: already in time order (rows are appended as they are joined); the stable sort
    # would keep every row where it is.
    return rows


def _recent_frame(request: RetrainRequest, rows: list[Mapping[str, Any]]) -> pd.DataFrame:
    """The recent rows as a table: ``label`` named ``target``, no prediction/version columns.

    Renamed and selected as lists, before the frame is built (the frame form copies the
    table twice, and converts columns only to drop them); the frame form when the target's
    name is taken already.
    """
    columns = flatten_columns(rows)
    if columns is not None and (request.target == "label" or request.target not in columns):
        return frame_of_columns(_recent_columns(request, columns))
    frame = flatten_rows(rows)
    frame = frame.rename(columns={"label": request.target})
    keep = [c for c in frame.columns if c not in _META_COLUMNS or c in _KEPT_META]
    return frame[keep]


def _recent_columns(request: RetrainRequest, columns: dict[str, Any]) -> dict[str, Any]:
    """The flat columns the recent table keeps: ``label`` named ``target``, no
    prediction/version columns."""
    renamed = {(request.target if k == "label" else k): v for k, v in columns.items()}
    return {k: v for k, v in renamed.items() if k not in _META_COLUMNS or k in _KEPT_META}


def _recent_frame_of(request: RetrainRequest, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """:func:`_recent_frame` from :func:`~driftwarden.retrain.columnar.recent_columns`'
    arrays (their dtypes are already the ones pandas infers)."""
    return pd.DataFrame(_recent_columns(request, columns))


def _gate_batch(rows: list[Mapping[str, Any]]) -> Any:
    """The recent rows as the data gate's :class:`~driftwarden.detectors.batch.Batch`
    (``None`` when there are none)."""
    from driftwarden.detectors.batch import Batch

    return Batch.from_records(rows) if rows else None


def _data_gate(
    request: RetrainRequest, batch: Any, profile: Any
) -> tuple[bool, list[str], dict[str, Any]]:
    """Run the data_quality detector on the recent rows' batch; (passed, reasons, evidence)."""
    from driftwarden.detectors import detector_class

    if profile is None:
        return (
            False,
            ["no reference profile to judge the data against (data gate fails closed)"],
            {},
        )
    if batch is None:
        return True, [], {"n": 0, "note": "no recent labeled rows"}
    detector = detector_class("data_quality")("retrain_data_gate", profile, **request.data_quality)
    detector.update(batch)
    result = detector.result()
    evidence = result.to_dict()
    if not result.triggered:
        return True, [], evidence
    top = list((result.evidence or {}).get("top") or [])
    reasons = [f"data quality check fired on the recent labeled rows ({result.n} rows)"]
    reasons += [json.dumps(t, default=str, sort_keys=True) for t in top]
    return False, reasons, evidence


def hand_back_memory() -> None:
    """Return the memory a retrain attempt freed to the operating system.

    An attempt's snapshot holds ~175 MB for 50 000 rows of 25 features; once freed, the
    allocators keep the pages (pyarrow's mimalloc pool and glibc's heap), so a daemon's RSS
    stayed ~80 MB up after its first retrain (measured). Both are asked to hand back what they
    hold unused (~1 ms); where either is missing (another allocator, musl) nothing happens.
    """
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except (ImportError, AttributeError):  # pragma: no cover - an old pyarrow
        pass
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a snapshot's rows live.

    The rows are parsed from the store's files: 50 000 rows are 200 000 new dicts. Under
    Python's default thresholds they set off collections that promote them and then scan the
    whole heap, though reference counting frees them all a moment later, acyclic as they
    are (0.13-0.17 s instead of 0.07 s to parse 50 000 rows, measured). Paused until they
    are dropped, nothing is scanned. Process-wide, so nested and concurrent pauses count:
    the collector runs again when the last one ends (if it was on before the first).
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


def _champion(
    request: RetrainRequest, registry: Registry, version: str | None
) -> tuple[str | None, Any, Any]:
    """(champion ``version``, its model, its profile); Nones when there is no champion."""
    if version is None:
        return None, None, None
    model = registry.load_model(request.model, version)
    try:
        profile = registry.load_profile(request.model, version)
    except RegistryError:
        profile = None
    return version, model, profile


def _existing(
    request: RetrainRequest, registry: Registry, version: str | None
) -> RetrainOutcome | None:
    """The outcome of an earlier attempt that registered this action's ``version`` already."""
    if version is None:
        return None
    mv = registry.model_version(request.model, version)
    moves = _finish_aliases(request, registry, version, dict(mv.tags or {}))
    log.info("retrain.already_registered", model=request.model, version=version)
    return RetrainOutcome(
        "registered",
        version,
        mv.run_id,
        [f"version {version} was already registered for action {request.action_key}"],
        {},
        moves,
    )


_ACTOR = "driftwarden.retrain"


def _alias_reason(request: RetrainRequest) -> str:
    return f"passed every gate (action {request.action_key})"


def _finish_aliases(
    request: RetrainRequest,
    registry: Registry,
    version: str,
    tags: Mapping[str, str],
    *,
    just_registered: bool = False,
    challenger: tuple[str | None, str] | None = None,
) -> list[dict[str, Any]]:
    """Move ``challenger`` (and ``champion`` on auto) unless an earlier attempt already did.

    ``just_registered``: this attempt created ``version`` a moment ago, so its existence is
    not checked again. ``challenger``: ``(where the alias points now, at)`` when the caller
    has just read it and created the version with the move's tags but ``.set_by`` (see
    :meth:`Registry.set_alias`, ``pretagged``).
    """
    moves: list[dict[str, Any]] = []
    why = _alias_reason(request)
    if "driftwarden.alias.challenger.set_by" not in tags:
        moves.append(
            registry.set_alias(
                request.model,
                "challenger",
                version,
                actor=_ACTOR,
                reason=why,
                decision_key=request.action_key,
                check_version=not just_registered,
                before=UNREAD if challenger is None else challenger[0],
                at=None if challenger is None else challenger[1],
                pretagged=challenger is not None,
            ).to_dict()
        )
    if request.promote == "auto":
        # Also when an earlier attempt moved the champion: approve() then completes what it
        # may have left undone (the challenger's removal) and changes nothing otherwise.
        moves += [
            m.to_dict()
            for m in registry.approve(
                request.model,
                version,
                _ACTOR,
                f"promote: auto; {why}",
                decision_key=request.action_key,
            )
        ]
    return moves


def run_retrain(
    request: RetrainRequest,
    *,
    registry: Registry,
    store: LabeledStore,
    reference_data: pd.DataFrame | None,
    code_version: str,
) -> RetrainOutcome:
    """One retrain attempt (see the module docstring).

    Raises :class:`~driftwarden.retrain.registry.Unavailable` when MLflow cannot be reached:
    the caller retries the same request later. Other failures after the run was created are
    recorded on the run and returned as ``failed``.
    """
    validate_gates(request.gates)
    # The idempotency search and the champion's alias are independent reads: asked together,
    # and answered while the recent rows are read from the store (local work, wasted only
    # when an earlier attempt registered this action already).
    reads = [
        registry.background(
            partial(registry.find_version_by_tag, request.model, ACTION_KEY_TAG, request.action_key)
        ),
        registry.background(partial(registry.version_by_alias, request.model, "champion")),
    ]
    started = time.perf_counter()
    try:
        # 1. snapshot: the stored rows become the recent table and the data gate's batch
        # (numpy columns).
        recent, gate_batch = _recent_snapshot(request, store)
    finally:
        futures_wait(reads)
    done_before, champion_at = (f.result() for f in reads)
    existing = _existing(request, registry, done_before)
    if existing is not None:
        return existing
    bound = log.bind(model=request.model, action_key=request.action_key)

    reference = reference_data if reference_data is not None else pd.DataFrame()
    if request.data.get("reference") == "champion" and reference_data is None:
        reference = _champion_snapshot(request, registry)
    if "prediction_id" in reference.columns and not recent.empty:
        # The champion's snapshot holds the labeled rows it was trained on; rows still in the
        # store are taken once, from the store.
        reference = reference[~reference["prediction_id"].isin(recent["prediction_id"])]
    snapshot = pd.concat(
        [reference.assign(_part="reference"), recent.assign(_part="recent")], ignore_index=True
    )
    data_hash = snapshot_hash(snapshot)

    # 2. data gate
    champion_version, champion_model, champion_profile = _champion(request, registry, champion_at)
    tags = {
        "driftwarden.kind": "retrain",
        "driftwarden.model": request.model,
        ACTION_KEY_TAG: request.action_key,
        "driftwarden.data_hash": data_hash,
        "driftwarden.trigger.decision_key": str(
            request.trigger.get("key") or request.trigger.get("decision_key") or request.action_key
        ),
        "driftwarden.trigger.rule": str(request.trigger.get("rule", "")),
        "driftwarden.parent_version": champion_version or "",
        "driftwarden.code_version": code_version,
        "driftwarden.version": _driftwarden_version(),
        "mlflow.source.git.commit": code_version,
    }
    # Created in the background (see _Run) while the data gate runs.
    run = _Run(registry, request, tags)
    try:
        profile = champion_profile
        if profile is None and not reference.empty:
            profile = _build_profile(request, reference, None, None)
        gate_ok, gate_reasons, gate_evidence = _data_gate(request, gate_batch, profile)
        prepare_s = time.perf_counter() - started
        run.log_snapshot(snapshot, data_hash)
    except BaseException:
        run.abandon()
        raise

    report: dict[str, Any] = {
        "model": request.model,
        "action_key": request.action_key,
        "trigger": dict(request.trigger),
        "data_hash": data_hash,
        "rows": {"reference": int(reference.shape[0]), "recent": int(recent.shape[0])},
        "parent_version": champion_version,
        "data_gate": {"passed": gate_ok, "reasons": gate_reasons, "result": gate_evidence},
    }
    run.log_params(
        {
            "trainer": request.trainer
            if isinstance(request.trainer, str)
            else json.dumps(dict(request.trainer), sort_keys=True),
            "gates": json.dumps(request.gates, sort_keys=True, default=str),
            "promote": request.promote,
            "data": json.dumps(request.data, sort_keys=True, default=str),
            "target": request.target,
            "features": ",".join(request.features),
            "holdout_fraction": request.holdout_fraction,
            "seed": request.seed,
            **{f"trainer.{k}": v for k, v in request.params.items()},
        }
    )
    if not gate_ok:
        report["status"] = "blocked_by_data_gate"
        run.finish(report, status="FINISHED")
        bound.warning("retrain.blocked_by_data_gate", reasons=gate_reasons)
        return RetrainOutcome("blocked_by_data_gate", None, run.run_id, gate_reasons, report)

    try:
        # 3. split: the newest labeled rows are the holdout
        n_hold = int(round(len(recent) * request.holdout_fraction))
        holdout = recent.iloc[len(recent) - n_hold :] if n_hold else recent.iloc[:0]
        train = _train_table(request, reference, recent.iloc[: len(recent) - n_hold])

        # 4. train
        trainer = load_trainer(request.trainer, request.search_paths)
        t0 = time.perf_counter()
        candidate = trainer(
            train,
            target=request.target,
            features=list(request.features),
            params=dict(request.params),
        )
        train_s = time.perf_counter() - t0

        # 5. evaluate + gates
        slices = _slice_columns(request)
        kw = {
            "target": request.target,
            "features": request.features,
            "slices": slices,
            "positive": request.positive_label,
        }
        # The candidate's outputs on its profile table, computed once: its evaluation and
        # its reference profile below both use them.
        profile_table = holdout if n_hold else train
        # The champion predicts on a second thread meanwhile: the models release the GIL
        # while they predict, each thread with one OpenMP thread of its own. (Training stays
        # on this thread: beside a trainer that keeps both cores busy, other work only slows
        # it down, and a trainer on a new thread gets a second OpenMP team, which on a busy
        # machine makes every parallel region sleep and wake: 10x slower, measured.)
        with ThreadPoolExecutor(1, thread_name_prefix="retrain-champion") as pool:
            champ_outputs = (
                pool.submit(model_outputs, champion_model, holdout, request.features)
                if champion_model is not None and n_hold
                else None
            )
            cand_outputs = model_outputs(candidate, profile_table, request.features)
            cand_metrics = (
                evaluate(candidate, holdout, **kw, outputs=cand_outputs)
                if n_hold
                else {"overall": {}, "slices": {}}
            )
            champ_metrics = (
                evaluate(champion_model, holdout, **kw, outputs=champ_outputs.result())
                if champ_outputs is not None
                else None
            )
        results = check_gates(request.gates, cand_metrics, champ_metrics, holdout_n=n_hold)
        evaluate_s = time.perf_counter() - t0 - train_s
    except Unavailable:
        raise
    except Exception as exc:  # a broken trainer must not take the daemon down
        reason = f"retrain of model {request.model!r} failed: {type(exc).__name__}: {exc}"
        report["status"] = "failed"
        report["error"] = reason
        run.finish(report, status="FAILED")
        bound.error("retrain.failed", error=reason)
        return RetrainOutcome("failed", None, run.run_id, [reason], report)

    passed = all(r.passed for r in results)
    failed = [r.reason for r in results if not r.passed]
    report.update(
        {
            "status": "registered" if passed else "gates_failed",
            "rows": {**report["rows"], "train": int(train.shape[0]), "holdout": n_hold},
            "train_seconds": round(train_s, 3),
            # Where an attempt's time goes (MLflow logging is the rest of the total).
            "seconds": {
                "prepare": round(prepare_s, 3),
                "train": round(train_s, 3),
                "evaluate": round(evaluate_s, 3),
            },
            "candidate": cand_metrics,
            "champion": champ_metrics,
            "gates": [r.to_dict() for r in results],
            "failed_gates": failed,
        }
    )
    run.log_metrics(cand_metrics, "candidate")
    if champ_metrics is not None:
        run.log_metrics(champ_metrics, "champion")
    run.log_metrics({"overall": {"train_seconds": train_s, "gates_passed": float(passed)}}, "")
    # Params and metrics, then snapshot and model, are sent while the profile is built.
    run.send_batch()
    # The candidate's reference profile: its own predictions on the holdout, so a version
    # brings its own baseline metrics per slice.
    run.log_model(candidate)
    run.send_artifacts()
    cand_profile = _build_profile(request, profile_table, candidate, None, cand_outputs)
    run.log_text(cand_profile.to_json(), PROFILE_ARTIFACT)
    if not passed:
        run.finish(report, status="FINISHED")
        bound.info("retrain.gates_failed", failed=failed, run_id=run.run_id)
        return RetrainOutcome("gates_failed", None, run.run_id, failed, report)

    # 7. register, then aliases. Registering needs the uploaded model, not the closed run: the
    # run is closed while the version is created and the alias it will move is read. The
    # version is created with the challenger move's tags but ``.set_by``, which is written
    # once the alias has moved (one request then, instead of one per tag; a retry after a
    # failure in between moves the alias and writes every tag again).
    run.upload(report)
    challenger_tags = registry.alias_tags(
        "challenger",
        actor=_ACTOR,
        reason=_alias_reason(request),
        decision_key=request.action_key,
    )
    challenger_at = challenger_tags["driftwarden.alias.challenger.at"]
    del challenger_tags["driftwarden.alias.challenger.set_by"]
    _, version, challenger_before = registry.concurrently(
        [
            partial(run.close, "FINISHED"),
            partial(
                registry.register,
                request.model,
                source=f"{run.artifact_uri}/{MODEL_ARTIFACT}",
                run_id=run.run_id,
                tags={**tags, "driftwarden.status": "passed_gates", **challenger_tags},
            ),
            partial(registry.version_by_alias, request.model, "challenger"),
        ]
    )
    # The next retrain's champion may be this version: no need to download it again.
    registry.remember_model(request.model, version, candidate)
    moves = _finish_aliases(
        request,
        registry,
        version,
        {},
        just_registered=True,
        challenger=(challenger_before, challenger_at),
    )
    bound.info(
        "retrain.registered",
        version=version,
        run_id=run.run_id,
        seconds=round(time.perf_counter() - started, 3),
    )
    return RetrainOutcome("registered", version, run.run_id, [], report, moves)


def _train_table(
    request: RetrainRequest, reference: pd.DataFrame, recent: pd.DataFrame
) -> pd.DataFrame:
    """The training rows: reference and recent shuffled (``seed``), without the time and id
    columns and rows without a target.

    The table ``concat(...).sample(frac=1.0, random_state=seed).reset_index(drop=True)``,
    the two columns dropped, filtered on the target, used to give (the same rows in the same
    order, index included), taken in one step instead of four copies.
    """
    # The two columns go before the tables are joined: a column only one of them has would
    # be filled with NaN for the other's rows first (object columns, slowly), then dropped.
    parts = [
        t.drop(columns=[c for c in ("timestamp", "prediction_id") if c in t.columns])
        for t in (reference, recent)
    ]
    both = pd.concat(parts, ignore_index=True)
    # what DataFrame.sample(frac=1.0, random_state=seed) draws
    order = np.random.RandomState(request.seed).choice(len(both), size=len(both), replace=False)
    labeled = both[request.target].notna().to_numpy()[order]
    train = both.take(order[labeled])
    train.index = pd.RangeIndex(len(both))[labeled]
    return train


def _build_profile(
    request: RetrainRequest,
    frame: pd.DataFrame,
    model: Any,
    version: str | None,
    outputs: ModelOutputs | None = None,
) -> Any:
    from driftwarden.detectors.profile import build_profile

    frame = frame.drop(columns=["timestamp", "_part"], errors="ignore").reset_index(drop=True)
    slices = [c for c in _slice_columns(request) if c in frame.columns]
    features = [c for c in request.features if c in frame.columns]
    if model is None:
        return build_profile(
            frame,
            request.model,
            target=request.target if request.target in frame else None,
            segments=slices,
            model_version=version,
            feature_columns=features,
        )
    if outputs is None:
        outputs = model_outputs(model, frame, features)
    frame = frame.assign(
        _prediction=outputs.predicted,
        _score=outputs.proba[:, -1] if outputs.proba is not None else np.nan,
    )
    return build_profile(
        frame,
        request.model,
        target=request.target,
        prediction="_prediction",
        score="_score" if hasattr(model, "predict_proba") else None,
        segments=slices,
        model_version=version,
        feature_columns=features,
    )


def _champion_snapshot(request: RetrainRequest, registry: Registry) -> pd.DataFrame:
    """``data.reference: champion``: the training snapshot stored on the champion's run."""
    version = registry.version_by_alias(request.model, "champion")
    if version is None:
        raise RegistryError(
            f"model {request.model!r} has no champion, so 'data.reference: champion' has no data."
        )
    mv = registry.model_version(request.model, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = registry.call(
            f"downloading the snapshot of version {version} of model {request.model!r}",
            lambda: registry.client.download_artifacts(str(mv.run_id), SNAPSHOT_ARTIFACT, tmp),
        )
        frame = pd.read_parquet(local)
    return frame.drop(columns=["_part"], errors="ignore")


class _Run:
    """One MLflow run for one attempt, through the registry's client (explicit URI).

    Round trips are the attempt's fixed cost, so the run buffers: params and metrics go out
    in one ``log_batch`` and every artifact (snapshot, model, profile, report) is staged in a
    local folder and uploaded by one ``log_artifacts`` call, all in :meth:`upload`, which
    must therefore come before the model is registered (it does: registration needs the
    uploaded model). :meth:`close` ends the run (:meth:`finish` is both); a registered
    attempt closes it while the version is being created.
    """

    def __init__(
        self, registry: Registry, request: RetrainRequest, tags: Mapping[str, str]
    ) -> None:
        self.registry = registry
        client = registry.client
        name = f"driftwarden/{request.model}"

        def create_in(exp_id: str) -> Any:
            return registry.call(
                "creating the retrain run",
                lambda: client.create_run(
                    exp_id, tags=dict(tags), run_name=f"retrain {request.action_key}"
                ),
            )

        def create() -> Any:
            exp_id = registry.experiment_id(name)
            try:
                return create_in(exp_id)
            except Unavailable:
                raise
            except Exception:  # the remembered experiment was deleted: look it up again, once
                return create_in(registry.experiment_id(name, refresh=True))

        # The run is created in the background: nothing on the attempt's own thread needs its
        # id before the upload (the requests that do are sent in the background too and wait
        # for it there), so the round trip overlaps the data gate and the training table.
        # Its errors (Unavailable included) surface where the id is first needed.
        self._created: Future[Any] = registry.background(create)
        self._staging = tempfile.TemporaryDirectory(prefix="driftwarden-run-")
        self.staging = Path(self._staging.name)
        self._params: list[Any] = []
        self._metrics: list[Any] = []
        # Earlier attempts of this action that were cut short (MLflow unreachable after their
        # run was created, the daemon killed) left their runs RUNNING: ended in the background.
        self._pending: list[Future[Any]] = [
            registry.background(partial(self._end_earlier_attempts, request.action_key))
        ]
        self._staged: list[Future[Any]] = []
        self._sent: list[Future[Any]] = []
        self._repo: Any = None
        self._repo_lock = threading.Lock()

    @property
    def run_id(self) -> str:
        """The run's id (waits for the run to be created; raises what creating it raised)."""
        return str(self._created.result().info.run_id)

    @property
    def artifact_uri(self) -> str:
        """The run's artifact root (waits for the run to be created, as :attr:`run_id`)."""
        return str(self._created.result().info.artifact_uri)

    def _end_earlier_attempts(self, action_key: str) -> None:
        """Mark runs of earlier attempts of ``action_key`` still RUNNING as FAILED, tagged
        ``driftwarden.ended_by`` with this run's id (best effort: a failure is logged)."""
        if "'" in action_key:
            return
        try:
            created = self._created.result()
            client = self.registry.client
            stale = [
                r.info.run_id
                for r in self.registry.call(
                    "looking for unfinished runs of earlier attempts",
                    lambda: client.search_runs(
                        [created.info.experiment_id],
                        filter_string=f"tags.`{ACTION_KEY_TAG}` = '{action_key}' "
                        "and attributes.status = 'RUNNING'",
                        max_results=100,
                    ),
                )
                if r.info.run_id != created.info.run_id
            ]
            for run_id in stale:
                self.registry.call(
                    "ending an earlier attempt's run",
                    partial(client.set_tag, run_id, ENDED_BY_TAG, created.info.run_id),
                )
                self.registry.call(
                    "ending an earlier attempt's run",
                    partial(client.set_terminated, run_id, status="FAILED"),
                )
                log.info(
                    "retrain.earlier_run_ended",
                    run_id=run_id,
                    ended_by=created.info.run_id,
                    action_key=action_key,
                )
        except Exception as exc:  # noqa: BLE001 (cleanup; the attempt itself decides)
            log.warning("retrain.earlier_runs_not_ended", error=f"{type(exc).__name__}: {exc}")

    def _artifacts(self) -> Any:
        """The run's artifact store, from the artifact URI the run was created with
        (``client.log_artifacts`` looks the run up again first: one more round trip)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with self._repo_lock:
            if self._repo is None:
                self._repo = get_artifact_repository(
                    self.artifact_uri, tracking_uri=self.registry.tracking_uri
                )
            return self._repo

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self._params += [Param(str(k), str(v)[:6000]) for k, v in params.items()]

    def log_metrics(self, metrics: Mapping[str, Any], prefix: str) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        flat: dict[str, float] = {}
        for k, v in (metrics.get("overall") or {}).items():
            if isinstance(v, (int, float)) and v is not None:
                flat[f"{prefix}.{k}" if prefix else k] = float(v)
        for col, per in (metrics.get("slices") or {}).items():
            for val, m in per.items():
                for k, v in m.items():
                    if isinstance(v, (int, float)):
                        flat[f"{prefix}.slice.{col}.{_metric_safe(val)}.{k}"] = float(v)
        self._metrics += [Metric(k, v, ts, 0) for k, v in flat.items()]

    def log_snapshot(self, snapshot: pd.DataFrame, digest: str) -> None:
        path = self.staging / SNAPSHOT_ARTIFACT
        path.parent.mkdir(parents=True, exist_ok=True)
        # Converting the table to Arrow holds the GIL (one Python object per string): it is done
        # here, once. Encoding and compressing the parquet file runs mostly outside the GIL:
        # it is written in the background while the attempt trains and evaluates, and awaited
        # before upload. (Converted in the background, it held the attempt's own thread back
        # by as much, measured: 30 ms of a 0.38 s attempt.)
        table = _arrow_table(snapshot)
        self._staged.append(self.registry.background(partial(_write_parquet, table, path)))
        schema = _dataset_schema(table, snapshot)
        shape = (int(snapshot.shape[0]), int(snapshot.size))

        def send() -> None:
            from mlflow.entities import Dataset, DatasetInput, InputTag
            from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

            # where the file is once uploaded (under the run's artifact root, known once the
            # run exists: this waits for it)
            source_type, source = _dataset_source(
                f"{self.artifact_uri}/{SNAPSHOT_ARTIFACT}", self.registry.tracking_uri
            )
            entity = Dataset(
                name=f"snapshot-{digest[:12]}",
                digest=digest[:36],
                source_type=source_type,
                source=source,
                schema=schema,
                profile=json.dumps({"num_rows": shape[0], "num_elements": shape[1]}),
            )
            # The client form of mlflow.log_input (no process-wide active run or tracking URI).
            inp = DatasetInput(
                dataset=entity,
                tags=[
                    InputTag(key=MLFLOW_DATASET_CONTEXT, value="training"),
                    InputTag(key="driftwarden.data_hash", value=digest),
                ],
            )
            self.registry.call(
                "logging the snapshot input",
                lambda: self.registry.client.log_inputs(self.run_id, datasets=[inp]),
            )

        # Nothing waits for this request: it is sent in the background and awaited in finish.
        self._pending.append(self.registry.background(send))

    def log_text(self, text: str, artifact_file: str) -> None:
        path = self.staging / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def log_model(self, model: Any) -> None:
        import mlflow.sklearn

        # Explicit requirements: mlflow otherwise infers them by importing the model in a
        # subprocess, which costs seconds per candidate.
        mlflow.sklearn.save_model(
            model,
            str(self.staging / MODEL_ARTIFACT),
            serialization_format="cloudpickle",
            pip_requirements=list(_pip_requirements()),
        )

    def send_batch(self) -> None:
        """Send the params and metrics logged so far in the background (awaited in
        :meth:`upload`): the request overlaps the work still to do before the upload."""
        params, metrics = self._params, self._metrics
        self._params, self._metrics = [], []
        self._pending.append(self.registry.background(partial(self._send_batch, params, metrics)))

    def send_artifacts(self) -> None:
        """Upload the artifacts staged so far in the background; what is staged afterwards goes
        to a fresh folder that :meth:`upload` sends once this one is done (the same artifact
        paths: the folders are merged at the run's root)."""
        staged, self._staged = self._staged, []
        for f in staged:
            f.result()
        folder = self._staging
        self._staging = tempfile.TemporaryDirectory(prefix="driftwarden-run-")
        self.staging = Path(self._staging.name)

        def upload() -> None:
            try:
                self.registry.call(
                    "uploading the run's artifacts",
                    lambda: self._artifacts().log_artifacts(folder.name),
                )
            finally:
                folder.cleanup()

        self._sent.append(self.registry.background(upload))

    def _flush_batch(self) -> None:
        """Params and metrics in as few ``log_batch`` calls as MLflow's limits allow."""
        params, metrics = self._params, self._metrics
        self._params, self._metrics = [], []
        self._send_batch(params, metrics)

    def _send_batch(self, params: list[Any], metrics: list[Any]) -> None:
        client = self.registry.client
        while params or metrics:
            p, params = params[:_BATCH_PARAMS], params[_BATCH_PARAMS:]
            room = _BATCH_ENTITIES - len(p)
            m, metrics = metrics[:room], metrics[room:]
            self.registry.call(
                "logging params and metrics", partial(client.log_batch, self.run_id, m, p)
            )

    def finish(self, report: Mapping[str, Any], *, status: str) -> None:
        """Upload everything (:meth:`upload`), then close the run with ``status``."""
        self.upload(report)
        self.close(status)

    def upload(self, report: Mapping[str, Any]) -> None:
        """Stage the report, send params/metrics and every artifact, await the pending calls."""
        text = json.dumps(report, indent=2, sort_keys=True, default=str)
        self.log_text(text, REPORT_ARTIFACT)
        self.log_text(_report_html(report), REPORT_HTML_ARTIFACT)
        try:
            staged, self._staged = self._staged, []
            sent, self._sent = self._sent, []
            for f in [*staged, *sent]:
                f.result()
            # Params/metrics and the artifact upload are independent requests: sent together.
            self.registry.concurrently(
                [
                    self._flush_batch,
                    lambda: self.registry.call(
                        "uploading the run's artifacts",
                        lambda: self._artifacts().log_artifacts(str(self.staging)),
                    ),
                ]
            )
        finally:
            self._staging.cleanup()
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def abandon(self) -> None:
        """Mark the run ``FAILED`` on the way out of an error that ends the attempt before
        :meth:`finish` (best effort: the error being raised is the one that matters)."""
        futures_wait([*self._staged, *self._pending])
        try:
            self.close("FAILED")
        except Exception as exc:  # noqa: BLE001 (creating the run may have failed as well)
            log.warning("retrain.run_not_closed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._staging.cleanup()

    def close(self, status: str) -> None:
        """Mark the run terminated with ``status`` (after :meth:`upload`)."""
        self.registry.call(
            "closing the retrain run",
            lambda: self.registry.client.set_terminated(self.run_id, status=status),
        )


def _arrow_table(snapshot: pd.DataFrame) -> Any:
    """The snapshot as an Arrow table, column by column; a column Arrow cannot type as it is
    (values of mixed types in one object column) is written as strings, as pandas' ``string``
    dtype writes it.

    Without pandas metadata: ``pa.Table.from_pandas`` scans every object column again to
    describe it (``infer_dtype``), 2-5x the conversion itself; ``pd.read_parquet`` reads the
    file back to the same columns (Arrow strings as object, a fresh RangeIndex).
    """
    import pyarrow as pa

    arrays = []
    for name in snapshot.columns:
        column = snapshot[name]
        try:
            arrays.append(pa.array(column, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            arrays.append(pa.array(column.astype("string"), from_pandas=True))
    return pa.Table.from_arrays(arrays, names=[str(c) for c in snapshot.columns])


def _dataset_schema(table: Any, snapshot: pd.DataFrame) -> str:
    """The snapshot's schema as MLflow's pandas dataset records it (``{"mlflow_colspec": [...]}``),
    from the Arrow table already built for the parquet file: the types Arrow gave each column
    over every row, ``required`` when a column holds no null (NaN included, as MLflow counts
    it). MLflow's own inference looks at every value of an object column (on a sample of
    1 000 rows, on the attempt's own thread) and gives up on the whole schema for a column of
    mixed values, which the file holds as strings and so does this schema; it still types, on a
    sample, the columns Arrow cannot map here (all null, dictionary)."""
    import pyarrow as pa
    import pyarrow.types as pat
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.types import ColSpec, DataType, Schema

    # As MLflow maps numpy dtypes (types/utils.py _infer_numpy_dtype); timestamps and dates are
    # datetime whatever their unit or zone.
    exact = {
        pa.bool_(): DataType.boolean,
        **dict.fromkeys(
            [pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16()], DataType.integer
        ),
        **dict.fromkeys([pa.int64(), pa.uint32()], DataType.long),
        **dict.fromkeys([pa.float16(), pa.float32()], DataType.float),
        pa.float64(): DataType.double,
        **dict.fromkeys([pa.string(), pa.large_string()], DataType.string),
        **dict.fromkeys([pa.binary(), pa.large_binary()], DataType.binary),
    }

    def mlflow_type(t: Any) -> DataType | None:
        if pat.is_timestamp(t) or pat.is_date(t):
            return DataType.datetime
        return exact.get(t)

    specs: dict[str, Any] = {}  # ColSpec, None until typed
    for name, column in zip(table.column_names, table.columns, strict=True):
        dtype = mlflow_type(column.type)
        specs[name] = None if dtype is None else ColSpec(dtype, name, column.null_count == 0)
    rest = [name for name, spec in specs.items() if spec is None]
    if rest:
        with warnings.catch_warnings():
            # mlflow warns that integer columns cannot hold NaN: no matter for a lineage record.
            warnings.simplefilter("ignore", UserWarning)
            inferred = from_pandas(snapshot[rest].head(_SCHEMA_SAMPLE_ROWS), source="-").schema
        for spec in inferred.inputs if inferred is not None else []:
            specs[str(spec.name)] = spec
    return json.dumps(
        {"mlflow_colspec": Schema([s for s in specs.values() if s is not None]).to_dict()}
    )


def _write_parquet(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)


def _dataset_source(uri: str, tracking_uri: str) -> tuple[str, str]:
    """(source type, source JSON) of the snapshot's dataset input, for the artifact at ``uri``.

    MLflow resolves local paths and object stores (``s3://``, ``gs://``, ...) itself. A
    tracking server that proxies artifacts (``mlflow server``'s default) gives runs
    ``mlflow-artifacts:`` URIs, which MLflow's dataset sources do not know: the input then
    names the URL the server serves the file from. Anything else is recorded as it is.
    """
    from urllib.parse import urlparse

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        # what MLflow's local source records (resolved here: MLflow's resolver warns that two
        # of its sources take local paths)
        return "local", json.dumps({"uri": uri})
    if scheme == "mlflow-artifacts" and tracking_uri.startswith(("http://", "https://")):
        from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

        return "http", json.dumps({"url": MlflowArtifactsRepository.resolve_uri(uri, tracking_uri)})
    try:
        source = resolve_dataset_source(uri)
        return str(source._get_source_type()), str(source.to_json())
    except MlflowException:
        pass
    return "artifact", json.dumps({"uri": uri})


@cache
def _pip_requirements() -> tuple[str, ...]:
    """Pinned requirements of a saved candidate (looked up once per process)."""
    reqs = []
    for dist in ("mlflow", "scikit-learn", "cloudpickle", "numpy", "pandas", "scipy"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return tuple(reqs)


def _metric_safe(value: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in str(value)) or "_"


def _report_html(report: Mapping[str, Any]) -> str:
    """A small, dependency-free HTML page of the validation report."""
    e = html.escape
    rows = "".join(
        f"<tr class={'pass' if g['passed'] else 'fail'}><td>{e(g['gate'])}</td>"
        f"<td>{e(str(g.get('metric') or ''))}</td><td>{e(json.dumps(g.get('slice')))}</td>"
        f"<td>{'PASS' if g['passed'] else 'FAIL'}</td><td>{e(g['reason'])}</td></tr>"
        for g in report.get("gates", [])
    )
    gate = report.get("data_gate", {})
    return (
        "<!doctype html><meta charset=utf-8><title>driftwarden validation report</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border-bottom:1px solid #ddd}"
        ".fail{background:#fdd}.pass{background:#dfd}</style>"
        f"<h1>{e(str(report.get('model')))}: {e(str(report.get('status')))}</h1>"
        f"<p>action {e(str(report.get('action_key')))} · data hash "
        f"<code>{e(str(report.get('data_hash')))}</code> · parent version "
        f"{e(str(report.get('parent_version')))}</p>"
        f"<h2>Data gate: {'passed' if gate.get('passed') else 'FAILED'}</h2>"
        f"<ul>{''.join(f'<li>{e(r)}</li>' for r in gate.get('reasons', []))}</ul>"
        f"<h2>Model gates</h2><table><tr><th>gate</th><th>metric</th><th>slice</th>"
        f"<th>verdict</th><th>why</th></tr>{rows}</table>"
        f"<h2>Report</h2><pre>{e(json.dumps(report, indent=2, sort_keys=True, default=str))}</pre>"
    )


class RetrainWorker:
    """Runs retrain requests off the main thread, one at a time per model.

    ``submit`` returns a :class:`~concurrent.futures.Future` of the
    :class:`RetrainOutcome`; submitting an action key that is still pending returns the
    pending future. The future raises :class:`~driftwarden.retrain.registry.Unavailable`
    when MLflow could not be reached (after ``retries`` further attempts ``retry_delay_s``
    apart): the caller's outbox retries later, and the action key keeps it to one version.
    ``reference_loader`` turns a request into its reference table (default:
    :func:`load_reference_data`, the ``data.reference`` file).
    """

    def __init__(
        self,
        *,
        registry: Registry,
        store: LabeledStore,
        code_version: str,
        reference_loader: Callable[[RetrainRequest], pd.DataFrame | None] = load_reference_data,
        max_workers: int = 1,
        retries: int = 0,
        retry_delay_s: float = 5.0,
    ) -> None:
        self.registry = registry
        self.store = store
        self.code_version = code_version
        self.reference_loader = reference_loader
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="retrain")
        self._locks: dict[str, threading.Lock] = {}
        self._pending: dict[str, Future[RetrainOutcome]] = {}
        self._guard = threading.Lock()

    def submit(self, request: RetrainRequest) -> Future[RetrainOutcome]:
        """Queue a request; see the class docstring."""
        with self._guard:
            pending = self._pending.get(request.action_key)
            if pending is not None and not pending.done():
                return pending
            lock = self._locks.setdefault(request.model, threading.Lock())
            future = self._pool.submit(self._run, request, lock)
            self._pending[request.action_key] = future
            key = request.action_key
            future.add_done_callback(lambda f: self._forget(key, f))
            return future

    def _forget(self, key: str, future: Future[RetrainOutcome]) -> None:
        with self._guard:
            if self._pending.get(key) is future:
                del self._pending[key]

    def _run(self, request: RetrainRequest, lock: threading.Lock) -> RetrainOutcome:
        with lock:
            attempt = 0
            while True:
                try:
                    reference = self.reference_loader(request)
                    try:
                        return run_retrain(
                            request,
                            registry=self.registry,
                            store=self.store,
                            reference_data=reference,
                            code_version=self.code_version,
                        )
                    finally:
                        hand_back_memory()
                except Unavailable as exc:
                    if attempt >= self.retries:
                        raise
                    attempt += 1
                    log.warning(
                        "retrain.mlflow_unavailable",
                        model=request.model,
                        attempt=attempt,
                        error=str(exc),
                    )
                    time.sleep(self.retry_delay_s)

    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting requests; with ``wait`` finish the running ones first."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
