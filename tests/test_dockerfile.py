"""The Dockerfile cannot be built here (no Docker engine); check what a build needs is copied."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_copies_every_package_dir_and_runs_as_non_root() -> None:
    """Every package-dir of pyproject.toml is COPY'd before `pip install .`; USER is not root."""
    docker = (ROOT / "Dockerfile").read_text()
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    install = docker.index("RUN pip install .")
    for src in dirs.values():
        top = src.split("/")[0] if "/" not in src else src
        assert f"COPY {top} ./{top}" in docker[:install], f"Dockerfile does not copy {src}"
    assert "\nUSER driftwarden\n" in docker and "HEALTHCHECK" in docker
    assert 'CMD ["run"]' in docker
