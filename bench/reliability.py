"""Run the fault scenarios and write RELIABILITY.md from what they measured (not a test).

1. The real-broker fault tests (``tests/daemon/test_faults.py``) through pytest with
   ``--junitxml``: outcome, duration and the figures each test attaches as junit properties.
2. ``bench/soak.py``: a daemon killed with ``kill -9`` ``--kills`` times (default 20) during one
   long run; and, with ``--outages K`` (default 6), a second soak where the broker is stopped K
   times under the running daemon.

Every figure in the written file comes from these runs; the prose around them only says what
was injected and what was checked.

    .venv/bin/python bench/reliability.py                   # ≈ 6-8 min on 2 cores
    .venv/bin/python bench/reliability.py --kills 5 --outages 0 --out /tmp/R.md

Only 127.0.0.1 (the tests and the soak start their own broker unless ``KAFKA_BOOTSTRAP_SERVERS``
is set for the tests). Each step is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# What each fault test injects and checks (its figures come from the run).
TESTS = {
    "test_broker_restart_mid_stream_loses_and_repeats_nothing": (
        "Broker stopped (SIGTERM, clean shutdown) and restarted on the same port and data while "
        "one daemon subprocess reads; the second half of the input is published only after "
        "the restart.",
        "Final window summaries (every field but the processing-time join snapshot) and per-model "
        "state (event and label counts, join counters, open windows) equal an uninterrupted run "
        "of the same input; invalid-record count equal. A daemon that dies of the outage is "
        "restarted and reported (`daemon_crashed_on_broker_loss`).",
    ),
    "test_replica_killed_its_partitions_move_with_their_state": (
        "Three daemon replicas in one consumer group, `state.backend: kafka`, topics with 3 "
        "partitions, 3 models keyed onto 3 different partitions (checked on the records). Once "
        "the group is stable with one partition per replica and every partition has a commit, "
        "one replica is killed with SIGKILL; then the second half of the input is published.",
        "The killed replica's partition moves to a survivor, which restores its checkpoint from "
        "the state topic; the merged per-partition checkpoints of the state topic and the "
        "published windows equal an uninterrupted single-daemon run; the group commits the "
        "whole input.",
    ),
    "test_receivers_and_registry_down_monitoring_goes_on_and_every_action_lands_once": (
        "Alertmanager (behind a relay), a webhook receiver (answering 503) and the MLflow "
        "server (behind a TCP forwarder) all unreachable while a `driftwarden run` subprocess "
        "reads 16 000 predictions with a two-window pipeline incident (alert both receivers + "
        "fallback to `previous`, resolved and routed back after 2 clean windows); the daemon is "
        "killed with SIGKILL with every action pending and restarted; then everything comes "
        "back.",
        "While down: the whole input committed, all 7 closed windows and both decisions "
        "(firing, resolved) published. After recovery: per receiver exactly one firing and one "
        "resolved notification per alert (DriftwardenBrokenInput, ModelFallbackActive), in that "
        "order, every webhook Idempotency-Key delivered once; `serving` moved to v1 and back to "
        "v2 once each (one routing record each way); nothing more while the daemon runs on.",
    ),
}


def _run(cmd: list[str], timeout: float) -> tuple[int, float, str]:
    """Run a command from the repo root; return (exit status, seconds, stderr tail)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return -1, time.monotonic() - t0, f"timed out after {timeout:.0f} s"
    return proc.returncode, time.monotonic() - t0, (proc.stdout + proc.stderr)[-1500:]


def _junit(path: Path) -> list[dict[str, Any]]:
    """The test cases of a junit XML file: name, outcome, seconds, properties, failure text."""
    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                message = (node.get("message") or node.text or "").strip().splitlines()[0][:300]
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        out.append(
            {
                "name": case.get("name", ""),
                "outcome": outcome,
                "seconds": float(case.get("time", 0)),
                "properties": props,
                "message": message,
            }
        )
    return out


def _soak(args: argparse.Namespace, extra: list[str], tmp: Path, tag: str) -> dict[str, Any]:
    """Run bench/soak.py with ``extra`` options; its figures, plus exit status and seconds."""
    out = tmp / f"soak-{tag}.json"
    cmd = [PY, str(REPO / "bench" / "soak.py"), "--json", str(out), *extra]
    status, seconds, tail = _run(cmd, args.timeout)
    figures: dict[str, Any] = orjson.loads(out.read_bytes()) if out.exists() else {}
    figures.update({"exit": status, "wall_s": round(seconds, 1), "command": " ".join(cmd[1:])})
    if status != 0:
        figures["tail"] = tail
    return figures


def _cell(value: Any) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 400 else text[:400] + "…"


def render(tests: list[dict[str, Any]], soaks: list[tuple[str, str, dict[str, Any]]]) -> str:
    """RELIABILITY.md as text, from the measured results."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# Reliability: faults injected against a real Kafka broker",
        "",
        "Generated by `bench/reliability.py` — do not edit by hand; run it again instead.",
        "",
        f"- Generated: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit `{commit}`",
        f"- Machine: {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, kafka-python {version('kafka-python')}",
        "- Broker: single-node KRaft broker from the Maven jars on 127.0.0.1 "
        "(`scripts/kafka_broker.py`), restarted on the same port and data.",
        "",
        "## Fault tests (pytest, `tests/daemon/test_faults.py`, `tests/daemon/test_outages.py`)",
        "",
    ]
    if not tests:
        lines += ["No test results: pytest did not write its junit XML.", ""]
    for case in tests:
        injected, checked = TESTS.get(case["name"], ("(not described)", "(not described)"))
        lines += [
            f"### {case['name']} — {case['outcome']} in {case['seconds']:.1f} s",
            "",
            f"- **Injected:** {injected}",
            f"- **Checked:** {checked}",
        ]
        if case["message"]:
            lines.append(f"- **Failure:** {_cell(case['message'])}")
        lines += ["", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in case["properties"].items()]
        lines.append("")
    lines += ["## Soaks (`bench/soak.py`)", ""]
    for title, injected, fig in soaks:
        verdict = (
            "identical to the uninterrupted run"
            if fig.get("exit") == 0
            else "DIFFERENT or unfinished (see below)"
        )
        lines += [
            f"### {title} — {verdict}",
            "",
            f"- **Injected:** {injected}",
            "- **Checked:** final window summaries and per-model state equal an uninterrupted "
            "in-process run of the same input (windows republished after a kill must repeat "
            "exactly); the whole input committed; a webhook receiver (every rule alerts it; "
            "each model's input has a pipeline incident) got every notification the decisions "
            "call for exactly once, by Idempotency-Key (`webhook_*` figures).",
            f"- **Command:** `{fig.get('command', '')}`",
            "",
            "| figure | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {_cell(v)} |" for k, v in fig.items() if k not in ("command",)]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, write the report; exit 1 when any scenario failed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="kill -9 count of the soak")
    ap.add_argument("--per-model", type=int, default=100_000, help="soak predictions per model")
    ap.add_argument("--outages", type=int, default=6, help="broker outages of the second soak")
    ap.add_argument("--timeout", type=float, default=900.0, help="bound on each step (s)")
    ap.add_argument("--out", type=Path, default=REPO / "RELIABILITY.md")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dw-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        xml = tmp / "faults.xml"
        cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
        cmd += [
            "tests/daemon/test_faults.py",
            "-k",
            "broker_restart or replica or receivers_and_registry",
        ]
        cmd += ["tests/daemon/test_outages.py"]
        cmd += [f"--junitxml={xml}"]
        status, seconds, tail = _run(cmd, args.timeout)
        print(f"fault tests: exit {status} in {seconds:.0f} s", file=sys.stderr)
        tests = _junit(xml) if xml.exists() else []
        if status != 0 and not tests:
            print(tail, file=sys.stderr)

        soaks = []
        base = ["--per-model", str(args.per_model)]
        fig = _soak(args, [*base, "--kills", str(args.kills)], tmp, "kills")
        print(f"kill soak: exit {fig['exit']} in {fig['wall_s']} s", file=sys.stderr)
        soaks.append(
            (
                f"{args.kills} × kill -9 of one daemon (local checkpoints)",
                f"The daemon subprocess is killed with SIGKILL and restarted at once, "
                f"{args.kills} times (every other kill once the new life has committed work, the "
                f"others 1-4 s after a start, often during start-up or the group join), while it "
                f"reads "
                f"{args.per_model} predictions per model for 3 models.",
                fig,
            )
        )
        if args.outages:
            fig = _soak(
                args,
                [*base, "--kills", "0", "--broker-outages", str(args.outages)],
                tmp,
                "outages",
            )
            print(f"outage soak: exit {fig['exit']} in {fig['wall_s']} s", file=sys.stderr)
            soaks.append(
                (
                    f"up to {args.outages} broker outages under one daemon",
                    "The broker is stopped for 2-6 s and started again at random moments while "
                    "the daemon reads (only while input is left: a run can end with fewer); "
                    "a daemon that dies of it is restarted and counted.",
                    fig,
                )
            )
    args.out.write_text(render(tests, soaks) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    ok = status == 0 and bool(tests) and all(t["outcome"] == "passed" for t in tests)
    return 0 if ok and all(f.get("exit") == 0 for _, _, f in soaks) else 1


if __name__ == "__main__":
    sys.exit(main())
