"""Shared pytest configuration: the real-service fixtures live in ``tests/fixtures``."""

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.mlflow_server",
    "tests.fixtures.alertmanager",
]
