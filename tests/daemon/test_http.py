"""/healthz, /readyz and /metrics as a load balancer and Prometheus see them."""

from __future__ import annotations

import urllib.error
import urllib.request

from driftwarden.daemon.http import HealthServer
from driftwarden.daemon.metrics import Metrics


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_health_readiness_and_metrics() -> None:
    """healthz is always ok; readyz follows the daemon; metrics carry the daemon's counters."""
    metrics = Metrics()
    state = {"ready": False}
    server = HealthServer(
        "127.0.0.1",
        0,
        metrics.registry,
        lambda: (state["ready"], "ready" if state["ready"] else "not ready"),
    )
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz")[0] == 503
        state["ready"] = True
        assert get(base + "/readyz") == (200, "ready\n")
        metrics.events.labels("prediction", "valid").inc(3)
        metrics.invalid.labels("invalid").inc()
        code, body = get(base + "/metrics")
        assert code == 200
        assert 'driftwarden_events_total{result="valid",role="prediction"} 3.0' in body
        assert "driftwarden_invalid_events_total" in body
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()
