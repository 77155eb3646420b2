"""Shared pytest configuration: the real-service fixtures live in ``tests/fixtures``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.mlflow_server",
    "tests.fixtures.alertmanager",
]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """A test that runs the CLI configures logging; the next test starts from the defaults."""
    yield
    structlog.reset_defaults()
