"""The one place structlog is configured.

Modules call ``structlog.get_logger(__name__)`` at import time; nothing is printed through
anything else. ``configure()`` is called once by the CLI; output is one JSON object per line on
stderr (or key=value text for a terminal when ``json_logs`` is false).
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure"]


def configure(level: str = "info", json_logs: bool = True) -> None:
    """Configure structlog (and the stdlib root logger kafka-python and mlflow log through)."""
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"log level {level!r} is not one of debug, info, warning, error.")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries log through stdlib logging: keep them quiet unless they warn.
    logging.basicConfig(stream=sys.stderr, level=max(lvl, logging.WARNING), format="%(message)s")
    for noisy in ("kafka", "mlflow", "alembic", "urllib3", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
