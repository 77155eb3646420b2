"""Finding and calling the policy's trainer.

A policy names its trainer as ``module:function`` (e.g. ``examples.churn:train``) or as a
command (``{command: [...]}``).

``module:function`` is imported with :mod:`importlib` after the search paths — the policy
file's directory and the config directory, in that order — are put at the front of
``sys.path``; so ``examples.churn:train`` is ``config/examples/churn.py``. The function's
signature is::

    train(train: pd.DataFrame, *, target: str, features: list[str], params: dict) -> model

and the model has ``predict`` and (for classification) ``predict_proba``, like a scikit-learn
estimator (it is stored with ``mlflow.sklearn``).

A command is run without a shell; ``{train}`` (a CSV of the training rows), ``{target}``,
``{features}`` (comma-separated), ``{params}`` (a JSON file) and ``{output}`` (a folder) in
its arguments are replaced. It must save the fitted model with
``mlflow.sklearn.save_model(model, <output>)`` and exit 0.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import structlog

__all__ = ["Trainer", "TrainerError", "load_trainer"]

log = structlog.get_logger(__name__)

Trainer = Callable[..., Any]
_PATH_LOCK = threading.Lock()


class TrainerError(RuntimeError):
    """The trainer could not be found, or it failed."""


def load_trainer(
    spec: str | Mapping[str, Any], search_paths: Sequence[str | os.PathLike[str]] = ()
) -> Trainer:
    """The trainer callable for a policy's ``trainer`` value (see the module docstring)."""
    if isinstance(spec, Mapping):
        command = spec.get("command")
        if (
            not isinstance(command, Sequence)
            or isinstance(command, str)
            or not command
            or not all(isinstance(a, str) for a in command)
        ):
            raise TrainerError(f"trainer command {command!r} must be a non-empty list of strings.")
        return _command_trainer(list(command), timeout_s=spec.get("timeout_s"))
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise TrainerError(f"trainer {spec!r} must be 'module:function' or {{command: [...]}}.")
    module_name, func_name = spec.split(":")
    with _PATH_LOCK:
        for p in reversed([str(Path(p).resolve()) for p in search_paths]):
            if p not in sys.path:
                sys.path.insert(0, p)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise TrainerError(
                f"trainer module {module_name!r} cannot be imported (searched "
                f"{', '.join(map(str, search_paths)) or 'sys.path'}): {exc}"
            ) from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise TrainerError(
            f"trainer {spec!r}: module {module_name!r} has no function {func_name!r}."
        )
    return func


def _command_trainer(command: list[str], timeout_s: float | None) -> Trainer:
    def train(
        train: pd.DataFrame, *, target: str, features: list[str], params: dict[str, Any]
    ) -> Any:
        import mlflow.sklearn

        with tempfile.TemporaryDirectory(prefix="driftwarden-train-") as tmp:
            data = Path(tmp) / "train.csv"
            train.to_csv(data, index=False)
            params_file = Path(tmp) / "params.json"
            params_file.write_text(json.dumps(params))
            output = Path(tmp) / "model"
            values = {
                "train": str(data),
                "target": target,
                "features": ",".join(features),
                "params": str(params_file),
                "output": str(output),
            }
            argv = [_fill(a, values) for a in command]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
            if proc.returncode != 0:
                raise TrainerError(
                    f"trainer command {argv[0]!r} exited with {proc.returncode}: "
                    f"{proc.stderr.strip()[-2000:]}"
                )
            if not output.exists():
                raise TrainerError(f"trainer command {argv[0]!r} saved no model in {{output}}.")
            return mlflow.sklearn.load_model(str(output))

    return train


def _fill(arg: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    return arg
