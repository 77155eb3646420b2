#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then lint, types, tests.
#   bash scripts/test.sh [extra pytest args]
# Idempotent: a second run reuses the venv, the Maven cache and the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. Debian packages the tests use as real services / tools.
need=()
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 2. Python environment with the package and its test extras.
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q ".[test]"

# 3. Kafka broker jars (Maven Central; cached in ~/.m2).
.venv/bin/python scripts/kafka_broker.py fetch

# 4. Lint, format, types.
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy -p driftwarden.daemon -p driftwarden.detectors -p driftwarden.policies -p driftwarden.retrain

# 5. Tests (real Kafka broker, MLflow server and Alertmanager are started by the fixtures).
echo "== pytest"
# Run from a copy-free layout: tests import the installed package, never the source folders.
.venv/bin/python -m pytest -p no:cacheprovider "$@"
