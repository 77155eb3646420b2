"""The JSON Schema of a policy file (``schema.json``, shipped as package data) for editors."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["policy_schema"]


@cache
def policy_schema() -> dict[str, Any]:
    """The policy file's JSON Schema (draft 2020-12). Detector parameters are not in it: each
    detector type's ``params_schema`` covers them, and the loader applies both."""
    text = resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data
