"""Finding a model's reference profile: a local file, or the MLflow run of its model version.

The policy's ``reference`` says where: ``file:<path>`` (one profile for every version) or
``models:/<name>@<alias>`` / ``models:/<name>/<version>``. For a registry reference, the
profile of the ``model_version`` seen in the events is used (a new version brings its own
reference); the alias is the fallback when events carry no version the registry knows.
Profiles are cached: a profile is immutable once logged. A registry lookup that failed is not
tried again for a while (30 s, doubling to 10 min while it keeps failing): the loader runs on
the daemon's main loop, and a registry that is down would otherwise cost every batch of that
model the client's retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from driftwarden.detectors.profile import ReferenceProfile
from driftwarden.policies.model import PolicySet

from .monitor import ProfileMissing

__all__ = ["ProfileLoader"]

RETRY_FIRST_S = 30.0
RETRY_MAX_S = 600.0

log = structlog.get_logger(__name__)


class ProfileLoader:
    """Callable ``(model, model_version) -> ReferenceProfile`` used by the monitors."""

    def __init__(
        self,
        policies: PolicySet,
        *,
        tracking_uri: str | None = None,
        override: ReferenceProfile | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policies = policies
        self.tracking_uri = tracking_uri
        self.override = override
        self._cache: dict[tuple[str, str | None], ReferenceProfile] = {}
        # registry key -> (not before, delay, the failure's sentence)
        self._failed: dict[tuple[str, str | None], tuple[float, float, str]] = {}
        self._clock = clock
        self._registry: Any = None

    def __call__(self, model: str, version: str | None) -> ReferenceProfile:
        if self.override is not None:
            return self.override
        policy = self.policies.for_model(model)
        if policy is None:
            raise ProfileMissing(f"no policy matches model {model!r}, so it has no reference.")
        ref = policy.reference_for(model)
        key = (ref, version if ref.startswith("models:/") else None)
        if key in self._cache:
            return self._cache[key]
        failed = self._failed.get(key)
        now = self._clock()
        if failed is not None and now < failed[0]:
            raise ProfileMissing(f"{failed[2]} (tried again in {failed[0] - now:.0f} s)")
        try:
            profile = self._load(ref, model, version, policy.source)
        except ProfileMissing as exc:
            if ref.startswith("models:/"):
                delay = RETRY_FIRST_S if failed is None else min(2 * failed[1], RETRY_MAX_S)
                self._failed[key] = (now + delay, delay, str(exc))
            raise
        self._failed.pop(key, None)
        self._cache[key] = profile
        return profile

    def _load(self, ref: str, model: str, version: str | None, source: str) -> ReferenceProfile:
        if ref.startswith("file:"):
            path = ref[5:]
            try:
                return ReferenceProfile.load(path)
            except FileNotFoundError:
                raise ProfileMissing(
                    f"{source}: reference profile file {path} does not exist "
                    f"(build it with `driftwarden profile ... --out {path}`)."
                ) from None
            except ValueError as exc:
                raise ProfileMissing(
                    f"{source}: reference profile {path} is unreadable: {exc}"
                ) from None
        if ref.startswith("models:/"):
            return self._from_registry(ref, model, version, source)
        raise ProfileMissing(f"{source}: reference {ref!r} is neither file: nor models:/.")

    def _from_registry(
        self, ref: str, model: str, version: str | None, source: str
    ) -> ReferenceProfile:
        if self.tracking_uri is None:
            raise ProfileMissing(
                f"{source}: reference {ref} needs an MLflow tracking server; set mlflow.tracking_uri."
            )
        from driftwarden.retrain.registry import Registry

        if self._registry is None:
            self._registry = Registry(self.tracking_uri)
        name, _, rest = ref[len("models:/") :].partition("@")
        if not rest and "/" in name:
            name, pinned = name.split("/", 1)
            version = pinned
        errors = []
        candidates = [version] if version else []
        if rest:
            try:
                aliased = self._registry.version_by_alias(name, rest)
            except Exception as exc:  # registry down or alias missing
                aliased = None
                errors.append(str(exc))
            if aliased and aliased not in candidates:
                candidates.append(aliased)
        for v in candidates:
            try:
                profile: ReferenceProfile = self._registry.load_profile(name, v)
                return profile
            except Exception as exc:
                errors.append(f"version {v}: {exc}")
        raise ProfileMissing(
            f"{source}: no reference profile for model {model!r} at {ref} "
            f"(looked at versions {candidates or 'none'}): {'; '.join(errors) or 'not found'}."
        )
