"""The one module that talks to the MLflow model registry.

Everything driftwarden does to the registry goes through :class:`Registry`: reading aliases,
moving them with an audit trail (``challenger``, ``champion``, ``previous`` and the ``serving``
alias fallback routing moves), registering candidate versions and loading the reference
profile stored on a version's run. Aliases, not the deprecated stages, carry the lifecycle.
Aliases are always read with ``get_model_version_by_alias``: ``search_model_versions``
returns ``aliases=[]`` (mlflow#9783).

Every alias move tags the version that receives it with
``driftwarden.alias.<alias>.set_by`` / ``.reason`` / ``.at`` (and ``.decision_key`` when a
decision triggered it) and returns an :class:`AliasMove`, a JSON-ready record the caller
writes to the decision log.

Connection failures surface as :class:`Unavailable` (retry later); how hard the MLflow client
itself retries a request is set by MLflow's own ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` /
``MLFLOW_HTTP_REQUEST_TIMEOUT`` environment variables (the defaults retry for minutes).

Round trips are what a retrain attempt waits on, so the registry avoids the avoidable ones:
version and alias reads/writes go through MLflow's model-registry client (the public
``MlflowClient`` methods first fetch the registered model again to refuse prompts, doubling
each call; driftwarden's models are never prompts), loaded models are kept per
``(model, version)`` (a version's artifacts never change), and registered models and
experiments known to exist are not fetched again.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

if TYPE_CHECKING:
    from driftwarden.detectors.profile import ReferenceProfile

__all__ = [
    "PROFILE_ARTIFACT",
    "AliasMove",
    "Registry",
    "UNREAD",
    "RegistryError",
    "Unavailable",
    "Unread",
]

log = structlog.get_logger(__name__)

PROFILE_ARTIFACT = "driftwarden/profile.json"
_TAG_MAX = 5000  # MLflow's limit on a model version tag value
_SET_BY = ".set_by"  # the alias tag written last: the move is done
_MODEL_CACHE_SIZE = 4  # loaded models kept per process (champion, previous, recent candidates)
_T = TypeVar("_T")


class Unread:
    """The type of :data:`UNREAD`: a value the caller has not read (so the callee reads it)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNREAD"


UNREAD = Unread()


class RegistryError(RuntimeError):
    """A registry operation cannot be done as asked (a missing alias, version or model)."""


class Unavailable(RegistryError):
    """The MLflow server could not be reached; the operation may be retried later."""


@dataclass(frozen=True)
class AliasMove:
    """One alias move, as written to the decision log.

    ``version`` is ``None`` when the alias was removed; ``previous_version`` is where it
    pointed before (``None`` if it did not exist). ``target_model`` differs from ``model``
    only for a serving route to a named fallback model (no alias of ``model`` moves then;
    the route is recorded as registered-model tags).
    """

    model: str
    alias: str
    version: str | None
    previous_version: str | None
    actor: str
    reason: str
    at: str
    decision_key: str | None = None
    target_model: str | None = None

    @property
    def uri(self) -> str | None:
        """``models:/<model>/<version>`` of the target, what serving should load."""
        if self.version is None:
            return None
        return f"models:/{self.target_model or self.model}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["uri"] = self.uri
        return d


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_connection_error(exc: BaseException) -> bool:
    """Whether an MLflow client error means the server was not reachable."""
    import requests

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (requests.ConnectionError, requests.Timeout, ConnectionError)):
            return True
        cur = cur.__cause__ or cur.__context__
    text = str(exc)
    if "API request to" in text and (
        "Max retries exceeded" in text
        or "Connection refused" in text
        or "timeout" in text.lower()
        or "too many 50" in text.lower()
    ):
        return True
    code = getattr(exc, "get_http_status_code", lambda: 0)()
    return code in (502, 503, 504)


@contextmanager
def _guard(what: str) -> Iterator[None]:
    """Turn connection failures into :class:`Unavailable` naming the operation."""
    try:
        yield
    except MlflowException as exc:
        if _is_connection_error(exc):
            raise Unavailable(f"the MLflow server did not answer while {what}: {exc}") from exc
        raise
    except OSError as exc:  # artifact downloads over HTTP surface plain connection errors
        if _is_connection_error(exc):
            raise Unavailable(f"the MLflow server did not answer while {what}: {exc}") from exc
        raise


def _missing(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and (
        "not found" in str(exc) or exc.error_code == "RESOURCE_DOES_NOT_EXIST"
    )


class Registry:
    """The MLflow registry as driftwarden uses it (see the module docstring).

    ``tracking_uri`` is explicit (never the process-wide default) so a daemon and its tests
    can talk to a chosen server; the registry URI is the same.
    """

    def __init__(self, tracking_uri: str, *, registry_uri: str | None = None) -> None:
        # MLflow prints "View run ... at: <url>" to stdout when a run ends, after one more
        # round trip to look the run up: noise between the daemon's JSON log lines, and a
        # request on the way to every registration. Off unless the operator set it.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)
        self._profiles: dict[tuple[str, str], ReferenceProfile] = {}
        self._models: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._known_models: set[str] = set()
        self._experiments: dict[str, str] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def _reg(self) -> Any:
        """MLflow's model-registry client: one round trip per call (no prompt check)."""
        get = getattr(self.client, "_get_registry_client", None)
        return get() if get is not None else self.client

    # ------------------------------------------------------------------ reading

    def version_by_alias(self, model: str, alias: str) -> str | None:
        """The version ``alias`` points at, or ``None`` if the alias or model does not exist."""
        with _guard(f"reading alias {alias!r} of model {model!r}"):
            try:
                return str(self._reg.get_model_version_by_alias(model, alias).version)
            except MlflowException as exc:
                if _missing(exc):
                    return None
                raise

    def model_version(self, model: str, version: str) -> ModelVersion:
        """The registry's record of one version (``RegistryError`` if it does not exist)."""
        with _guard(f"reading version {version} of model {model!r}"):
            try:
                mv: ModelVersion = self._reg.get_model_version(model, str(version))
                return mv
            except MlflowException as exc:
                if _missing(exc):
                    raise RegistryError(
                        f"model {model!r} has no version {version!r} in the registry."
                    ) from exc
                raise

    def find_version_by_tag(self, model: str, key: str, value: str) -> str | None:
        """The newest version of ``model`` whose tag ``key`` equals ``value``, or ``None``."""
        if "'" in value or "`" in key:
            raise ValueError(f"tag {key!r}={value!r} cannot be used in a registry search.")
        query = f"name='{_quote(model)}' and tags.`{key}` = '{value}'"
        with _guard(f"searching versions of model {model!r}"):
            found = self.client.search_model_versions(query)
        versions = sorted((int(v.version) for v in found), reverse=True)
        return str(versions[0]) if versions else None

    def load_profile(self, model: str, version: str) -> ReferenceProfile:
        """The reference profile stored on the version's run (cached per model and version)."""
        from driftwarden.detectors.profile import ReferenceProfile

        key = (model, str(version))
        with self._lock:
            cached = self._profiles.get(key)
        if cached is not None:
            return cached
        mv = self.model_version(model, str(version))
        if not mv.run_id:
            raise RegistryError(
                f"version {version} of model {model!r} has no run, so it has no reference profile."
            )
        with (
            _guard(f"downloading the profile of version {version} of model {model!r}"),
            tempfile.TemporaryDirectory() as tmp,
        ):
            try:
                local = self.client.download_artifacts(mv.run_id, PROFILE_ARTIFACT, tmp)
            except MlflowException as exc:
                if _is_connection_error(exc):
                    raise
                raise RegistryError(
                    f"version {version} of model {model!r} (run {mv.run_id}) has no artifact "
                    f"{PROFILE_ARTIFACT!r}."
                ) from exc
            profile = ReferenceProfile.load(Path(local))
        with self._lock:
            self._profiles[key] = profile
        return profile

    def load_model(self, model: str, version: str) -> Any:
        """The version's model, loaded with ``mlflow.sklearn`` (has predict/predict_proba).

        Kept per ``(model, version)`` for the process (the last few used): the daemon
        evaluates the same champion on every retrain, and a version's artifacts never change.
        """
        import mlflow.artifacts
        import mlflow.sklearn

        key = (model, str(version))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with _guard(f"locating version {version} of model {model!r}"):
            source = self._reg.get_model_version_download_uri(model, str(version))
        with (
            _guard(f"downloading version {version} of model {model!r}"),
            tempfile.TemporaryDirectory() as tmp,
        ):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=tmp, tracking_uri=self.tracking_uri
            )
            loaded = mlflow.sklearn.load_model(local)
        self.remember_model(model, version, loaded)
        return loaded

    def remember_model(self, model: str, version: str, obj: Any) -> None:
        """Keep ``obj`` as the loaded form of ``version`` (the pipeline passes the candidate it
        just registered, so promoting it does not cost a download on the next retrain)."""
        with self._lock:
            self._models[(model, str(version))] = obj
            self._models.move_to_end((model, str(version)))
            while len(self._models) > _MODEL_CACHE_SIZE:
                self._models.popitem(last=False)

    def experiment_id(self, name: str, *, refresh: bool = False) -> str:
        """The id of experiment ``name``, created if missing, restored if deleted (MLflow keeps
        a deleted experiment's name until ``mlflow gc``, and refuses runs in it); remembered for
        the process."""
        with self._lock:
            known = None if refresh else self._experiments.get(name)
        if known is not None:
            return known
        exp = self.call(
            f"reading experiment {name!r}", lambda: self.client.get_experiment_by_name(name)
        )
        if exp is None:
            try:
                exp_id = str(
                    self.call(
                        f"creating experiment {name!r}", lambda: self.client.create_experiment(name)
                    )
                )
            except Unavailable:
                raise
            except Exception:  # created concurrently by another worker
                again = self.client.get_experiment_by_name(name)
                if again is None:
                    raise
                exp_id = str(again.experiment_id)
        else:
            exp_id = str(exp.experiment_id)
            if exp.lifecycle_stage == "deleted":
                self.call(
                    f"restoring deleted experiment {name!r}",
                    lambda: self.client.restore_experiment(exp_id),
                )
                log.warning(
                    "registry.experiment_restored",
                    experiment=name,
                    experiment_id=exp_id,
                    why="it was deleted; retrain runs are logged there (delete it for good "
                    "with `mlflow gc` to start a new one)",
                )
        with self._lock:
            self._experiments[name] = exp_id
        return exp_id

    # ------------------------------------------------------------------ writing

    def ensure_model(self, model: str, *, refresh: bool = False) -> None:
        """Create the registered model if it does not exist yet (checked once per process)."""
        if model in self._known_models and not refresh:
            return
        with _guard(f"creating registered model {model!r}"):
            try:
                self.client.get_registered_model(model)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                try:
                    self.client.create_registered_model(
                        model, description="Watched by driftwarden."
                    )
                except MlflowException as exc2:
                    if exc2.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
        self._known_models.add(model)

    def register(self, model: str, *, source: str, run_id: str, tags: Mapping[str, str]) -> str:
        """Create a model version from a run's artifact ``source``; returns the version."""
        self.ensure_model(model)
        clipped = {k: str(v)[:_TAG_MAX] for k, v in tags.items()}
        with _guard(f"registering a version of model {model!r}"):
            try:
                mv = self.client.create_model_version(
                    model, source=source, run_id=run_id, tags=clipped
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST" or model not in self._known_models:
                    raise
                # Deleted behind our back since it was last seen: create it again, once.
                self._known_models.discard(model)
                self.ensure_model(model, refresh=True)
                mv = self.client.create_model_version(
                    model, source=source, run_id=run_id, tags=clipped
                )
        log.info("registry.registered", model=model, version=mv.version, run_id=run_id)
        return str(mv.version)

    def set_alias(
        self,
        model: str,
        alias: str,
        version: str,
        *,
        actor: str,
        reason: str,
        decision_key: str | None = None,
        check_version: bool = True,
        before: str | None | Unread = UNREAD,
        at: str | None = None,
        pretagged: bool = False,
    ) -> AliasMove:
        """Point ``alias`` at ``version`` and tag the version with who, why and when.

        ``check_version=False`` skips the existence check (a clear error for a missing
        version) when the caller has just read or created that version. ``before``: where
        ``alias`` points now, when the caller has just read it (the move records it).
        ``pretagged``: the version was created with this move's :meth:`alias_tags` (same
        ``at``) but ``.set_by``, so only that one is written — it always comes after the alias
        moved: it is what says the move is done.
        """
        if pretagged and at is None:
            raise ValueError("pretagged alias moves need the 'at' their tags were written with.")
        if check_version:
            self.model_version(model, str(version))
        if isinstance(before, Unread):
            before = self.version_by_alias(model, alias)
        tags = self.alias_tags(alias, actor=actor, reason=reason, decision_key=decision_key, at=at)
        at = tags[f"driftwarden.alias.{alias}.at"]
        if pretagged:
            tags = {k: v for k, v in tags.items() if k.endswith(_SET_BY)}
        with _guard(f"moving alias {alias!r} of model {model!r} to version {version}"):
            self._reg.set_registered_model_alias(model, alias, str(version))
            # MLflow has no batch call for version tags: the few independent writes go out
            # together.
            self.concurrently(
                [
                    partial(self._reg.set_model_version_tag, model, str(version), k, v[:_TAG_MAX])
                    for k, v in tags.items()
                ]
            )
        move = AliasMove(model, alias, str(version), before, actor, reason, at, decision_key)
        log.info("registry.alias_moved", **move.to_dict())
        return move

    @staticmethod
    def alias_tags(
        alias: str,
        *,
        actor: str,
        reason: str,
        decision_key: str | None = None,
        at: str | None = None,
    ) -> dict[str, str]:
        """The version tags an alias move writes (``at``: now unless given)."""
        prefix = f"driftwarden.alias.{alias}"
        tags = {
            f"{prefix}{_SET_BY}": actor,
            f"{prefix}.reason": reason,
            f"{prefix}.at": _now() if at is None else at,
        }
        if decision_key is not None:
            tags[f"{prefix}.decision_key"] = decision_key
        return tags

    def delete_alias(
        self, model: str, alias: str, *, actor: str, reason: str, decision_key: str | None = None
    ) -> AliasMove | None:
        """Remove ``alias`` (tagging the version it left); ``None`` if it did not exist."""
        before = self.version_by_alias(model, alias)
        if before is None:
            return None
        at = _now()
        with _guard(f"removing alias {alias!r} of model {model!r}"):
            self._reg.delete_registered_model_alias(model, alias)
            prefix = f"driftwarden.alias.{alias}"
            for key, value in (
                (f"{prefix}.removed_by", actor),
                (f"{prefix}.removed_reason", reason),
                (f"{prefix}.removed_at", at),
            ):
                self._reg.set_model_version_tag(model, before, key, value[:_TAG_MAX])
        move = AliasMove(model, alias, None, before, actor, reason, at, decision_key)
        log.info("registry.alias_removed", **move.to_dict())
        return move

    def approve(
        self, model: str, version: str, actor: str, reason: str, *, decision_key: str | None = None
    ) -> list[AliasMove]:
        """Make ``version`` the champion; the old champion becomes ``previous``.

        A ``challenger`` alias on the approved version is removed (it is no challenger any
        more). Approving the current champion again changes nothing and returns ``[]`` —
        unless an earlier approval was cut short after the alias moved (MLflow unreachable):
        then what it left undone is done, the move's tags and the challenger's removal, and
        returned.
        """
        version = str(version)
        mv = self.model_version(model, version)
        current = self.version_by_alias(model, "champion")
        moves: list[AliasMove] = []
        if current is not None and current != version:
            moves.append(
                self.set_alias(
                    model,
                    "previous",
                    current,
                    actor=actor,
                    reason=f"replaced as champion by version {version}: {reason}",
                    decision_key=decision_key,
                    check_version=False,
                )
            )
        # The move's .set_by tag is written last: a champion without it on this version moved
        # here in an approval that was cut short before its who/why/when were written.
        if current != version or f"driftwarden.alias.champion{_SET_BY}" not in (mv.tags or {}):
            moves.append(
                self.set_alias(
                    model,
                    "champion",
                    version,
                    actor=actor,
                    reason=reason,
                    decision_key=decision_key,
                    check_version=False,
                    before=current,
                )
            )
        return moves + self._drop_challenger(model, version, actor, reason)

    def _drop_challenger(
        self, model: str, version: str, actor: str, reason: str
    ) -> list[AliasMove]:
        """Remove ``challenger`` if it points at ``version``, now the champion."""
        if self.version_by_alias(model, "challenger") != version:
            return []
        removed = self.delete_alias(
            model, "challenger", actor=actor, reason=f"promoted to champion: {reason}"
        )
        return [] if removed is None else [removed]

    def rollback(
        self, model: str, actor: str, reason: str, *, decision_key: str | None = None
    ) -> list[AliasMove]:
        """Point ``champion`` back at ``previous``.

        ``previous`` is then removed rather than pointed at the rolled-back version: fallback
        routing sends traffic to ``previous``, and that must never be a version just judged
        bad. The rolled-back version keeps its tags (the audit trail).
        """
        prev = self.version_by_alias(model, "previous")
        if prev is None:
            raise RegistryError(f"model {model!r} has no 'previous' version to roll back to.")
        bad = self.version_by_alias(model, "champion")
        moves = [
            self.set_alias(
                model,
                "champion",
                prev,
                actor=actor,
                reason=f"rollback from version {bad}: {reason}",
                decision_key=decision_key,
            )
        ]
        removed = self.delete_alias(
            model,
            "previous",
            actor=actor,
            reason=f"now champion again after a rollback: {reason}",
            decision_key=decision_key,
        )
        if removed is not None:
            moves.append(removed)
        if bad is not None:
            with _guard(f"tagging version {bad} of model {model!r}"):
                self.client.set_model_version_tag(
                    model,
                    bad,
                    "driftwarden.rolled_back",
                    f"{_now()} by {actor}: {reason}"[:_TAG_MAX],
                )
        return moves

    def resolve_target(self, model: str, target: str) -> tuple[str, str]:
        """``(model, version)`` for a serving target.

        ``target`` is an alias of ``model`` (``previous``, ``champion``, …), a version number,
        or ``model:<name>`` / ``<name>@<alias>`` naming another model (its ``champion`` unless
        an alias is given).
        """
        if target.isdigit():
            self.model_version(model, target)
            return model, target
        other: str | None = None
        alias = "champion"
        if target.startswith("model:"):
            other = target[len("model:") :]
        elif "@" in target:
            other, alias = target.split("@", 1)
        if other is not None and other != model:
            version = self.version_by_alias(other, alias)
            if version is None:
                raise RegistryError(
                    f"fallback model {other!r} has no {alias!r} alias to route model {model!r} to."
                )
            return other, version
        alias = alias if other else target
        version = self.version_by_alias(model, alias)
        if version is None:
            raise RegistryError(f"model {model!r} has no {alias!r} alias to route serving to.")
        return model, version

    def set_serving(
        self,
        model: str,
        version_or_target: str,
        actor: str,
        reason: str,
        *,
        decision_key: str | None = None,
    ) -> AliasMove:
        """Route serving of ``model`` (fallback and recovery); never touches ``champion``.

        Within the model the ``serving`` alias moves. For a named fallback model the alias
        cannot point into another model, so the route is recorded as the registered-model
        tags ``driftwarden.serving.model``/``.version`` and returned with ``target_model`` set;
        routing back to ``model`` itself clears them.
        """
        target_model, version = self.resolve_target(model, str(version_or_target))
        if target_model == model:
            move = self.set_alias(
                model, "serving", version, actor=actor, reason=reason, decision_key=decision_key
            )
            with _guard(f"recording the serving route of model {model!r}"):
                for key in ("driftwarden.serving.model", "driftwarden.serving.version"):
                    try:
                        self.client.delete_registered_model_tag(model, key)
                    except MlflowException as exc:
                        if _is_connection_error(exc):
                            raise
            return move
        at = _now()
        with _guard(f"recording the serving route of model {model!r}"):
            for key, value in (
                ("driftwarden.serving.model", target_model),
                ("driftwarden.serving.version", version),
                ("driftwarden.serving.set_by", actor),
                ("driftwarden.serving.reason", reason[:_TAG_MAX]),
                ("driftwarden.serving.at", at),
            ):
                self.client.set_registered_model_tag(model, key, value)
        move = AliasMove(
            model,
            "serving",
            version,
            self.version_by_alias(model, "serving"),
            actor,
            reason,
            at,
            decision_key,
            target_model=target_model,
        )
        log.info("registry.serving_routed", **move.to_dict())
        return move

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mlflow-io")
            return self._pool

    def background(self, call: Callable[[], _T]) -> Future[_T]:
        """Start an MLflow call whose answer nobody waits for yet; ``result()`` it later."""
        return self._executor().submit(call)

    def concurrently(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run independent MLflow calls at the same time (they wait on the server, not the
        CPU); their results in order. Every call finishes before the first error is raised."""
        if len(calls) <= 1:
            return [c() for c in calls]
        pool = self._executor()
        futures = [pool.submit(c) for c in calls]
        errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err
        return [f.result() for f in futures]

    def call(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` (an MLflow client call) with connection errors as :class:`Unavailable`."""
        with _guard(what):
            return fn()


def _quote(text: str) -> str:
    if "'" in text:
        raise ValueError(f"model name {text!r} cannot be used in a registry search.")
    return text
