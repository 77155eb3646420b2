"""The runnable examples in the retrain modules' and the churn example's docstrings."""

from __future__ import annotations

import doctest
import importlib
import sys
from pathlib import Path

import pytest

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "config")


@pytest.mark.parametrize("name", ["driftwarden.retrain.labeled_store", "examples.churn"])
def test_module_doctests(name: str) -> None:
    """Every docstring example of the module runs and prints what it says."""
    if CONFIG_DIR not in sys.path:
        sys.path.insert(0, CONFIG_DIR)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
