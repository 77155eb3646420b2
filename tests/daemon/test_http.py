"""/healthz, /readyz and /metrics as a load balancer and Prometheus see them."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from driftwarden.daemon.http import HealthServer
from driftwarden.daemon.metrics import Metrics


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_health_readiness_and_metrics() -> None:
    """healthz follows the main loop's liveness; readyz follows the daemon; metrics carry the
    daemon's counters."""
    metrics = Metrics()
    state = {"ready": False, "live": True}
    server = HealthServer(
        "127.0.0.1",
        0,
        metrics.registry,
        lambda: (state["ready"], "ready" if state["ready"] else "not ready"),
        lambda: (state["live"], "ok" if state["live"] else "main loop stalled for 301 s"),
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
        state["live"] = False
        assert get(base + "/healthz") == (503, "main loop stalled for 301 s\n")
    finally:
        server.stop()


def test_a_stalled_main_loop_is_not_live(tmp_path: Path) -> None:
    """The daemon is live while its loop comes round; one that has not for longer than the
    limit (kafka.max_poll_interval_ms in `driftwarden run`) is not — before it runs it is not
    judged (start-up restores can take long)."""
    import time

    from tests.daemon.embedded import embedded_daemon

    daemon = embedded_daemon(tmp_path)
    daemon.loop_at -= 1000
    assert daemon.health(300.0) == (True, "ok")  # not running yet
    daemon.ready = True
    ok, why = daemon.health(300.0)
    assert not ok and why.startswith("main loop stalled for 100") and "limit 300 s" in why
    daemon.ready = False
    daemon.run(max_events=1_000)
    assert time.monotonic() - daemon.loop_at < 60
    daemon.ready = True
    assert daemon.health(300.0) == (True, "ok")
