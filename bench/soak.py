"""Soak (not a test): a daemon killed with ``kill -9`` N times during one long run.

The seeded input of ``tests/daemon/test_faults.py`` (three models on three partitions, ~60 %
labelled, a few malformed records), larger by default (100 000 predictions per model), is published
once. An uninterrupted in-process daemon reads it to give the expected window summaries and state.
Then a daemon subprocess (``driftwarden.daemon.cli run``) reads the same input on its own topics
and is killed with SIGKILL at random moments (``--kills``, default 20) and restarted at once,
until the group has committed the whole input. ``--broker-outages K`` also stops the broker K
times for a few seconds at random moments (needs the broker this script starts); a daemon that
dies of the outage is restarted and counted. Each model's input has a pipeline incident (a
stretch of zero-filled ``days_since_last_login``), so rules fire and resolve; every rule also
alerts a webhook this script runs. At the end the final window summaries and per-model state
must equal the uninterrupted run's, and the webhook must have received every notification the
decisions call for exactly once (by ``Idempotency-Key``). The figures are printed, and with ``--json PATH``
written as JSON (``bench/reliability.py`` reads them).

    .venv/bin/python bench/soak.py                      # 20 kills, ≈ 3-4 min on 2 cores
    .venv/bin/python bench/soak.py --kills 5 --per-model 20000
    .venv/bin/python bench/soak.py --kills 0 --broker-outages 3
    .venv/bin/python bench/soak.py --state kafka        # checkpoints in the state topic

Only 127.0.0.1: the script starts its own broker from the Maven jars, or takes a ``--bootstrap``
on 127.0.0.1 / localhost. Every wait is bounded by ``--max-seconds``. Exit status 0 when the
results are identical, 1 when they differ, 2 when the run could not finish in time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the tests' helpers live in the repo root
    sys.path.insert(0, str(REPO))

from driftwarden.daemon.app import build_daemon  # noqa: E402
from driftwarden.daemon.checkpoint import LocalCheckpointStore  # noqa: E402
from driftwarden.daemon.logs import configure as configure_logs  # noqa: E402
from driftwarden.daemon.settings import load_settings  # noqa: E402
from tests.daemon.test_faults import (  # noqa: E402
    POLICY,
    Stream,
    _crash_summary,
    _input,
    _kafka_state,
    _state,
)
from tests.daemon.test_kafka_ingest import _comparable, _consume_all, _windows  # noqa: E402
from tests.fixtures.kafka import load_broker_module  # noqa: E402

LOCAL_HOSTS = ("127.0.0.1", "localhost")
STALL_S = 20.0
DELIVERY_WAIT_S = 60.0

# The fault tests' policy, with every rule also alerting a webhook this script runs and counts.
SOAK_POLICY = POLICY.replace(
    "actions: [{alert: log}]", "actions: [{alert: log}, {alert: hook}]"
).replace(
    "  log: {type: log}", '  log: {type: log}\n  hook: {type: webhook, url: "${SOAK_HOOK_URL}"}'
)


class Hook:
    """A webhook receiver on 127.0.0.1 that records each delivery's Idempotency-Key and alerts."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.deliveries: list[tuple[str, str, str]] = []  # (key, model/alertname, status)
        lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)))
                with lock:
                    for a in body["alerts"]:
                        labels = a["labels"]
                        hook.deliveries.append(
                            (
                                str(self.headers.get("Idempotency-Key")),
                                f"{labels.get('model')}/{labels.get('alertname')}",
                                a["status"],
                            )
                        )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hook"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _expected_notifications(stream: Stream) -> list[str]:
    """The webhook's idempotency keys the run's decisions call for, each to arrive once."""
    keys: set[str] = set()
    for rec in _consume_all(stream.bootstrap, stream.topics["decisions"]):
        for action in orjson.loads(rec.value).get("actions", []):
            if action.get("params", {}).get("receiver") == "hook":
                keys.add(str(action["key"]))
    return sorted(keys)


_LIVES = [0]


def _run_cli(config: Path) -> Any:
    """``driftwarden run`` with its stderr in a file next to the config.

    Not a pipe: nobody reads a pipe while the daemon runs, and once its 64 KiB fill up (the
    Kafka client logs every failed reconnect during a broker outage) every thread that logs
    blocks — the producer's network thread too, so flushes, checkpoints and commits stall.
    That was the "55 s commit stall after quick outages" of earlier soaks: the harness's, not
    the daemon's.
    """
    _LIVES[0] += 1
    log = config.with_name(f"daemon-{_LIVES[0]}.stderr")
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftwarden.daemon.cli", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def _stderr(proc: Any) -> str:
    return Path(proc.log_path).read_text(errors="replace")


def _stop_daemon(proc: Any, crashes: list[str]) -> None:
    """SIGTERM the daemon (its final checkpoint commits); a non-zero exit counts as a crash."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    if proc.returncode != 0:
        crashes.append(f"final SIGTERM exit {proc.returncode}: {_stderr(proc)[-300:]}")


def _say(text: str) -> None:
    """A progress line on stderr (the figures go to stdout)."""
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _baseline(stream: Stream) -> Any:
    """The uninterrupted run's comparable result (in-process daemon, local checkpoints)."""
    settings = load_settings(stream.config("clean"), env={})
    daemon = build_daemon(settings)
    daemon.run(idle_timeout_s=5, timeout_s=600)
    daemon.sink.close()
    daemon.source.close()
    state = _state(LocalCheckpointStore(stream.base / "state-clean"))
    return _comparable(_windows(stream.as_dict(), stream.bootstrap), state)


def _differences(got: Any, want: Any) -> list[str]:
    """Plain sentences naming what differs between two ``_comparable`` results (empty: same)."""
    out: list[str] = []
    if got[2] != want[2]:
        out.append(f"invalid records: {got[2]} != {want[2]}")
    for model in sorted(set(got[1]) | set(want[1])):
        g, w = got[1].get(model), want[1].get(model)
        if g != w:
            parts = ["events", "labels", "join counters", "prediction windows", "labeled windows"]
            bad = [n for n, a, b in zip(parts, g or (), w or (), strict=False) if a != b]
            out.append(f"model {model}: {', '.join(bad) or 'missing'} differ")
    gk, wk = {k for k, _ in got[0]}, {k for k, _ in want[0]}
    if gk != wk:
        out.append(f"windows: {len(gk - wk)} extra, {len(wk - gk)} missing")
    elif got[0] != want[0]:
        n = sum(1 for a, b in zip(got[0], want[0], strict=True) if a != b)
        out.append(f"windows: {n} summaries differ")
    return out


def _window_records(stream: Stream) -> int:
    from tests.daemon.test_kafka_ingest import _consume_all

    return len(_consume_all(stream.bootstrap, stream.topics["windows"]))


def soak(args: argparse.Namespace, bootstrap: str, broker: Any, workdir: Path) -> dict[str, Any]:
    """Run the soak on ``bootstrap``; return the figures (see the module docstring)."""
    t_start = time.monotonic()
    deadline = t_start + args.max_seconds
    rng = random.Random(args.seed)
    n_records = len(_input(args.per_model, True))

    # The policy names ${SOAK_HOOK_URL}: the baseline (its final tick delivers too) gets a
    # webhook of its own, the faulted run the one that is counted.
    baseline_hook, hook = Hook(), Hook()
    os.environ["SOAK_HOOK_URL"] = baseline_hook.url
    opts = {"n_per_model": args.per_model, "incidents": True, "policy": SOAK_POLICY}
    clean = Stream(bootstrap, workdir, "soak-clean", **opts)
    clean.produce(slice(None))
    t0 = time.monotonic()
    want = _baseline(clean)
    baseline_s = time.monotonic() - t0
    _say(f"baseline done in {baseline_s:.1f} s ({n_records} records)")

    # The in-process baseline runs no action ticks: its decisions say what must be delivered.
    want_hook = _expected_notifications(clean)
    baseline_hook.close()
    os.environ["SOAK_HOOK_URL"] = hook.url
    stream = Stream(bootstrap, workdir, "soak", **opts)
    stream.produce(slice(None))
    ends = stream.end_offsets()
    config = stream.config("soak", backend=args.state)
    group = str(yaml.safe_load(config.read_text())["kafka"]["group_id"])

    kills: list[dict[str, Any]] = []
    outages: list[dict[str, Any]] = []
    crashes: list[str] = []
    starts = 1
    t0 = time.monotonic()
    proc = _run_cli(config)
    outage_at = sorted(
        rng.sample(range(max(args.kills, 1) + args.broker_outages), args.broker_outages)
    )
    step = 0
    finished = False
    stalled_commits = 0
    last_total, last_change = -1, time.monotonic()
    try:
        while time.monotonic() < deadline:
            committed = stream.committed(group) if broker is None or broker.is_running() else {}
            if committed == ends:
                finished = True
                break
            if proc.poll() is not None:  # died on its own (not by our signal): restart, count it
                proc.wait()
                crashes.append(f"exit {proc.returncode}: " + _crash_summary(_stderr(proc)))
                _say(f"daemon died on its own: {crashes[-1]}")
                proc = _run_cli(config)
                starts += 1
                continue
            if len(kills) + len(outages) >= args.kills + args.broker_outages:
                # All faults injected: let the daemon finish. A daemon restarted onto a checkpoint
                # that is ahead of the group's commit has nothing to process and never commits
                # (a finding, see the report): after STALL_S without change, stop it with SIGTERM,
                # whose final checkpoint commits, and count that.
                total = sum(committed.values())
                if total != last_total:
                    last_total, last_change = total, time.monotonic()
                elif time.monotonic() - last_change > STALL_S:
                    stalled_commits += 1
                    _say(f"commits stalled at {total}/{n_records} for {STALL_S:.0f} s: SIGTERM")
                    _stop_daemon(proc, crashes)
                    finished = stream.committed(group) == ends
                    break
                time.sleep(0.5)
                continue
            if len(kills) % 2 == 1 and len(kills) < args.kills:
                # Every other kill comes once this life has committed new work (mid-processing);
                # the others at a random moment, often while it starts, joins or restores.
                mark = sum(committed.values())
                t_wait = time.monotonic()
                while proc.poll() is None and time.monotonic() - t_wait < 60:
                    if sum(stream.committed(group).values()) > mark:
                        break
                    time.sleep(0.2)
                time.sleep(rng.uniform(0.0, args.min_gap))
            else:
                time.sleep(rng.uniform(args.min_gap, args.max_gap))
            before = sum(stream.committed(group).values())
            if before == sum(ends.values()):
                continue  # the input is done: no fault left to inject into this run
            if outage_at and step == outage_at[0] and broker is not None:
                outage_at.pop(0)
                t1 = time.monotonic()
                broker.stop()
                time.sleep(rng.uniform(2.0, 6.0))
                broker.start(timeout=180)
                _say(
                    f"broker outage {len(outages) + 1}: committed {before}, daemon alive "
                    f"{proc.poll() is None}"
                )
                ended = time.monotonic()
                outage = {
                    "committed_before": before,
                    "seconds": round(ended - t1, 1),
                    "daemon_survived": proc.poll() is None,
                    "resume_s": None,
                }
                outages.append(outage)
                # How long the daemon stalls after the broker is back: wait (bounded) for its
                # next commit beyond the mark, unless it died (the loop restarts it).
                while proc.poll() is None and time.monotonic() - ended < 120:
                    now_committed = stream.committed(group)
                    if sum(now_committed.values()) > before or now_committed == ends:
                        outage["resume_s"] = round(time.monotonic() - ended, 1)
                        break
                    time.sleep(0.5)
            elif len(kills) < args.kills:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills.append({"committed_before": before})
                _say(f"kill -9 {len(kills)}: committed {before}/{n_records}")
                proc = _run_cli(config)
                starts += 1
            step += 1
        _say(f"finished={finished}; committed {sum(stream.committed(group).values())}")
        if finished and proc.poll() is None:
            # Actions are delivered asynchronously: give the last ones time, then stop.
            t_hook = time.monotonic()
            while len(hook.deliveries) < len(want_hook) and time.monotonic() - t_hook < (
                DELIVERY_WAIT_S
            ):
                time.sleep(0.5)
            time.sleep(3.0)  # a duplicate would come now, if at all
            _stop_daemon(proc, crashes)
    finally:
        if broker is not None and not broker.is_running():
            broker.start(timeout=180)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hook.close()
    faulted_s = time.monotonic() - t0
    keys = Counter(k for k, _, _ in hook.deliveries)
    got_hook = sorted(k for k, _, _ in hook.deliveries)  # a key twice is a difference

    figures: dict[str, Any] = {
        "records": n_records,
        "per_model": args.per_model,
        "state_backend": args.state,
        "kills_requested": args.kills,
        "kills": len(kills),
        # How far the group had committed when each kill came (percent of the input).
        "committed_pct_at_kills": [round(100 * k["committed_before"] / n_records) for k in kills],
        "broker_outages": len(outages),
        "daemon_survived_outages": sum(1 for o in outages if o["daemon_survived"]),
        # Seconds from the broker's restart to the daemon's next commit (None: it died).
        "resume_s_after_outages": [o.get("resume_s") for o in outages],
        # The webhook: notifications the run's decisions call for (each distinct firing and
        # resolved decision once), what arrived, and keys that arrived more than once.
        "webhook_expected": len(want_hook),
        "webhook_delivered": len(hook.deliveries),
        "webhook_duplicate_keys": sum(1 for n in keys.values() if n > 1),
        "webhook_as_expected": got_hook == want_hook,
        "webhook_statuses": dict(Counter(status for _, _, status in hook.deliveries)),
        "daemon_crashes": len(crashes),
        "crash_reasons": sorted(set(crashes)),
        "daemon_starts": starts,
        "stopped_on_stalled_commits": stalled_commits,
        "finished": finished,
        "baseline_s": round(baseline_s, 1),
        "faulted_run_s": round(faulted_s, 1),
        "total_s": round(time.monotonic() - t_start, 1),
    }
    if not finished:
        figures["identical"] = False
        figures["differences"] = [f"the run did not commit the whole input in {args.max_seconds} s"]
        return figures
    state = (
        _kafka_state(stream)
        if args.state == "kafka"
        else _state(LocalCheckpointStore(stream.base / "state-soak"))
    )
    try:
        got = _comparable(_windows(stream.as_dict(), bootstrap), state)
        diffs = _differences(got, want)
    except AssertionError as err:  # a window published twice with different content
        diffs = [str(err).splitlines()[0]]
        got = None
    published = _window_records(stream)
    figures["windows"] = len(want[0])
    figures["window_records_published"] = published
    figures["windows_republished_after_kills"] = published - len(want[0])
    if got_hook != want_hook:
        diffs.append(
            f"webhook: got {len(got_hook)} notifications, expected {len(want_hook)} "
            f"(missing {sorted(set(want_hook) - set(got_hook))[:5]}, unexpected "
            f"{sorted(set(got_hook) - set(want_hook))[:5]}, duplicate keys "
            f"{[k for k, n in keys.items() if n > 1][:5]})"
        )
    figures["identical"] = not diffs
    figures["differences"] = diffs
    return figures


def main(argv: list[str] | None = None) -> int:
    """Parse the options, start (or check) the broker, run the soak, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="kill -9 count (default 20)")
    ap.add_argument("--broker-outages", type=int, default=0, help="broker stop/start count")
    ap.add_argument("--per-model", type=int, default=100_000, help="predictions per model")
    ap.add_argument("--state", choices=("local", "kafka"), default="local")
    ap.add_argument("--min-gap", type=float, default=1.0, help="least seconds between faults")
    ap.add_argument("--max-gap", type=float, default=4.0, help="most seconds between faults")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=900.0, help="bound on the whole run")
    ap.add_argument("--bootstrap", help="a running broker on 127.0.0.1 (else one is started)")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = ap.parse_args(argv)
    configure_logs("error", json_logs=False)  # the in-process baseline daemon: figures only
    if args.kills < 0 or args.broker_outages < 0 or not 0 < args.min_gap <= args.max_gap:
        ap.error("--kills and --broker-outages must be >= 0 and 0 < --min-gap <= --max-gap")

    with tempfile.TemporaryDirectory(prefix="dw-soak-") as tmp:
        workdir = Path(tmp)
        broker = None
        if args.bootstrap:
            host = args.bootstrap.rpartition(":")[0]
            if host not in LOCAL_HOSTS or "," in args.bootstrap:
                ap.error(f"--bootstrap {args.bootstrap} is not one broker on 127.0.0.1")
            if args.broker_outages:
                ap.error("--broker-outages needs the broker this script starts (no --bootstrap)")
            bootstrap = args.bootstrap
        else:
            kb = load_broker_module()
            broker = kb.Broker(workdir / "kafka")
            bootstrap = broker.start(timeout=180)
        try:
            figures = soak(args, bootstrap, broker, workdir)
        finally:
            if broker is not None:
                with contextlib.suppress(Exception):
                    broker.stop()
    for key, value in figures.items():
        print(f"{key:32} {value}")
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    if not figures["finished"]:
        return 2
    return 0 if figures["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
