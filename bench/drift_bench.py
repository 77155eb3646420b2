"""Benchmark: one window of 25 features x 100 000 rows through feature_drift.

Not a test (speed belongs here, not in ``tests/``). The data are seeded: 20 numeric features
(N(0, 1)) and 5 categorical ones; the window shifts the mean of three numerics by 0.25, 0.5 and
0.5 sigma and changes the category mix of one categorical. The reference profile is built from
a clean reference table of the same size; the timed part is the window evaluation
(``update`` over the window's micro-batches, including each :class:`Batch` column access, +
``result``), as the daemon runs it. Not timed: building the Batches (the daemon's ingest does
that) and the detector's constructor, which precomputes the reference side once per profile
(bin edges, quantile grid and its CDF, the category index) as the daemon does once per model
version; its time is printed apart so the split stays visible.

    .venv/bin/python bench/drift_bench.py                  # every method, one 100k batch
    .venv/bin/python bench/drift_bench.py --batch-size 500 # as 200 micro-batches
    .venv/bin/python bench/drift_bench.py --save-data /tmp/drift-bench   # parquet for others

``--anchors`` runs Evidently (DataDriftPreset) and Alibi Detect (TabularDrift) on the same
data and prints one comparison table. They need numpy < 2 / pandas < 3, so they live in their
own venv, ``bench/.venv-anchors`` (created on first use from ``bench/anchors_requirements.txt``
with ``python3 -m venv`` + pip, reused while that file is unchanged); the data go to them as an
``.npz`` in a temporary folder and ``bench/_anchors_runner.py`` times them there::

    .venv/bin/python bench/drift_bench.py --anchors            # installs once (~75 s), then ~35 s
    .venv/bin/python bench/drift_bench.py --anchors --repeat 1 --anchor-tools alibi
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftwarden.detectors.feature_drift import DRIFT_METHODS, FeatureDrift, columns_batch
from driftwarden.detectors.profile import ReferenceProfile, build_profile

N_NUMERIC = 20
N_CATEGORICAL = 5
SHIFTS = {"num_0": 0.25, "num_1": 0.5, "num_2": 0.5}
MIX_CHANGED = "cat_0"
CATS = np.array(["a", "b", "c", "d", "e"], dtype=object)
MIX = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
NEW_MIX = np.array([0.3, 0.25, 0.2, 0.15, 0.1])

HERE = Path(__file__).resolve().parent
ANCHORS_VENV = HERE / ".venv-anchors"
ANCHORS_REQUIREMENTS = HERE / "anchors_requirements.txt"
ANCHORS_RUNNER = HERE / "_anchors_runner.py"
_STAMP = ".driftwarden-requirements.sha256"


def make_table(rng: np.random.Generator, n: int, drifted: bool) -> pd.DataFrame:
    """A seeded table; ``drifted`` applies the benchmark's shifts."""
    cols: dict[str, np.ndarray] = {}
    for i in range(N_NUMERIC):
        name = f"num_{i}"
        cols[name] = rng.normal(SHIFTS.get(name, 0.0) if drifted else 0.0, 1.0, n)
    for i in range(N_CATEGORICAL):
        name = f"cat_{i}"
        mix = NEW_MIX if drifted and name == MIX_CHANGED else MIX
        cols[name] = rng.choice(CATS, n, p=mix)
    return pd.DataFrame(cols)


def run(
    method: str, profile: ReferenceProfile, window: pd.DataFrame, batch_size: int
) -> tuple[float, set[str], float, float]:
    """Evaluate one window; returns (seconds, flagged features, statistic, setup seconds).

    ``setup seconds`` is the untimed per-profile precompute (the detector's constructor).
    """
    columns = {c: window[c].to_numpy() for c in window.columns}
    n = len(window)
    batches = [
        columns_batch({c: v[i : i + batch_size] for c, v in columns.items()})
        for i in range(0, n, batch_size)
    ]
    t_setup = time.perf_counter()
    det = FeatureDrift("drift", profile, method=method)
    setup = time.perf_counter() - t_setup
    t0 = time.perf_counter()
    for b in batches:
        det.update(b)
    r = det.result()
    seconds = time.perf_counter() - t0
    flagged = {t["feature"] for t in r.evidence["top"]}
    return seconds, flagged, float(r.statistic or 0.0), setup


def best_run(
    method: str, profile: ReferenceProfile, window: pd.DataFrame, batch_size: int, repeat: int
) -> tuple[float, set[str], float, float]:
    """:func:`run` ``repeat`` times; the fastest time (the least disturbed on a shared box)."""
    runs = [run(method, profile, window, batch_size) for _ in range(max(1, repeat))]
    RUN_SECONDS[method] = [r[0] for r in runs]
    return min(runs, key=lambda r: r[0])


#: Every run's seconds per method (``best_run`` keeps them for the per-repeat ratios).
RUN_SECONDS: dict[str, list[float]] = {}


class AnchorsError(RuntimeError):
    """The anchors venv could not be made or the anchor runner failed."""


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_anchors_venv(
    venv: Path = ANCHORS_VENV,
    requirements: Path = ANCHORS_REQUIREMENTS,
    *,
    base_python: str = "python3",
    timeout: float = 1800.0,
) -> Path:
    """Create (once) and fill the anchors venv; returns its interpreter.

    The venv is reused while the sha256 of ``requirements`` matches the stamp written after the
    last successful install; otherwise pip installs the file again (a no-op for what is there).
    """
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    python = _venv_python(venv)
    stamp = venv / _STAMP
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    if not python.exists():
        exe = shutil.which(base_python) or base_python
        print(f"creating {venv} with {exe} -m venv", file=sys.stderr)
        try:
            subprocess.run([exe, "-m", "venv", str(venv)], check=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise AnchorsError(f"could not create the anchors venv {venv}: {e}.") from None
    log_path = venv / "install.log"
    print(f"installing {requirements.name} into {venv} (log: {log_path})", file=sys.stderr)
    cmd = [str(python), "-m", "pip", "install", "--no-input", "-r", str(requirements)]
    try:
        with log_path.open("w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AnchorsError(
            f"pip install -r {requirements} did not finish within {timeout:.0f} s; see {log_path}."
        ) from None
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise AnchorsError(
            f"pip install -r {requirements} failed (exit {proc.returncode}); the end of "
            f"{log_path}:\n{tail}"
        )
    stamp.write_text(digest + "\n")
    return python


def save_npz(path: Path, reference: pd.DataFrame, window: pd.DataFrame) -> None:
    """Both tables as one pickle-free ``.npz`` (float64 numerics, unicode categoricals)."""
    num = [c for c in reference.columns if reference[c].dtype.kind == "f"]
    cat = [c for c in reference.columns if c not in num]
    np.savez(
        path,
        num_names=np.array(num, dtype=str),
        cat_names=np.array(cat, dtype=str),
        ref_num=reference[num].to_numpy(dtype=np.float64),
        ref_cat=reference[cat].to_numpy(dtype=str),
        cur_num=window[num].to_numpy(dtype=np.float64),
        cur_cat=window[cat].to_numpy(dtype=str),
    )


def run_anchors(
    python: Path, data: Path, *, tools: list[str], repeat: int, timeout: float
) -> dict[str, Any]:
    """Run ``_anchors_runner.py`` in the anchors venv and return its JSON."""
    env = dict(os.environ)
    # Nothing from the project venv may leak into the anchors' interpreter.
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(python), str(ANCHORS_RUNNER), str(data), "--repeat", str(repeat), "--tools", *tools]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise AnchorsError(f"the anchor runner did not finish within {timeout:.0f} s.") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AnchorsError(
            f"the anchor runner failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def anchors_table(
    ours: dict[str, tuple[float, set[str]]],
    baseline: str,
    anchors: dict[str, Any],
    truth: set[str],
) -> list[str]:
    """The comparison table's lines: tool, seconds, ratio to ours, TP, FP, flagged features."""
    base_s = ours[baseline][0]
    rows: list[tuple[str, float | None, set[str] | None, str]] = [
        (f"driftwarden {m}", s, f, "") for m, (s, f) in ours.items()
    ]
    for t in anchors.get("tools", []):
        name = f"{t['tool']} {t.get('version', '')}".strip()
        if "error" in t:
            rows.append((name, None, None, t["error"]))
            continue
        rows.append((name, min(t["seconds"]), set(t["flagged"]), ""))
        if "flagged_bonferroni" in t:
            rows.append(
                (f"{name} (bonferroni)", min(t["seconds"]), set(t["flagged_bonferroni"]), "")
            )
    lines = [
        f"{'tool':32s} {'seconds':>8s} {'ratio':>7s} {'TP':>4s} {'FP':>3s}  flagged",
        "-" * 100,
    ]
    for name, s, flagged, err in rows:
        if s is None or flagged is None:
            lines.append(f"{name:32s} {'-':>8s} {'-':>7s} {'-':>4s} {'-':>3s}  ERROR {err}")
            continue
        tp, fp = len(flagged & truth), len(flagged - truth)
        shown = sorted(flagged & truth) + [f"{f}(FP)" for f in sorted(flagged - truth)]
        lines.append(
            f"{name:32s} {s:8.3f} {s / base_s:6.1f}x {tp:2d}/{len(truth)} {fp:3d}  {' '.join(shown)}"
        )
    return lines


def anchors_notes(anchors: dict[str, Any]) -> list[str]:
    """What each anchor's time covers, its other timings and its methods."""
    notes = [f"anchors venv: {json.dumps(anchors.get('versions', {}))}"]
    for t in anchors.get("tools", []):
        if "error" in t:
            continue
        runs = ", ".join(f"{x:.2f}" for x in t["seconds"])
        note = f"{t['tool']}: timed {t['timed']}; runs {runs} s; {'; '.join(t['methods'])}"
        if "html_seconds" in t:
            note += (
                f"; HTML page (not in seconds) {t['html_seconds']:.2f} s, {t['html_bytes']} bytes"
            )
        if "predict_seconds" in t:
            note += (
                f"; best fit {min(t['fit_seconds']):.3f} s + predict "
                f"{min(t['predict_seconds']):.3f} s; batch verdict is_drift={t['batch_is_drift']}"
            )
        notes.append(note)
    return notes


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark: one line per method, then (``--anchors``) the comparison table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the whole window at once")
    ap.add_argument("--methods", nargs="*", default=list(DRIFT_METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool; the fastest counts")
    ap.add_argument("--save-data", type=Path, help="write reference/window as parquet here")
    ap.add_argument("--anchors", action="store_true", help="also run Evidently and Alibi Detect")
    ap.add_argument("--anchor-tools", nargs="*", default=["evidently", "alibi"])
    ap.add_argument("--baseline", default="ks", help="our method the ratios divide by (default ks)")
    ap.add_argument("--anchors-python", default="python3", help="interpreter for `-m venv`")
    ap.add_argument("--install-timeout", type=float, default=1800.0, help="seconds for pip")
    ap.add_argument("--anchors-timeout", type=float, default=1200.0, help="seconds for the runs")
    args = ap.parse_args(argv)
    if args.anchors and args.baseline not in args.methods:
        ap.error(f"--baseline {args.baseline} must be one of --methods {args.methods}")

    python: Path | None = None
    if args.anchors:
        # Install first: a failed install should not cost the benchmark's run time.
        try:
            python = ensure_anchors_venv(
                base_python=args.anchors_python, timeout=args.install_timeout
            )
        except AnchorsError as e:
            print(str(e), file=sys.stderr)
            return 3

    rng = np.random.default_rng(args.seed)
    reference = make_table(rng, args.rows, drifted=False)
    window = make_table(rng, args.rows, drifted=True)
    if args.save_data:
        args.save_data.mkdir(parents=True, exist_ok=True)
        reference.to_parquet(args.save_data / "reference.parquet")
        window.to_parquet(args.save_data / "window.parquet")

    t0 = time.perf_counter()
    profile = build_profile(reference, "bench", created_at="-")
    print(
        f"profile of {args.rows} x {reference.shape[1]} built in {time.perf_counter() - t0:.2f} s"
    )

    truth = set(SHIFTS) | {MIX_CHANGED}
    batch_size = args.batch_size or args.rows
    print(
        f"window: {args.rows} rows in batches of {batch_size}; drifted: {sorted(truth)}; "
        f"best of {args.repeat}"
    )
    print(
        "timed: update() over the window's Batches (column access + binning) + result(); "
        "untimed: building the Batches (ingest) and the per-profile precompute in the "
        "detector's constructor (once per model version in the daemon; shown as setup)"
    )
    ours: dict[str, tuple[float, set[str]]] = {}
    for method in args.methods:
        seconds, flagged, stat, setup = best_run(method, profile, window, batch_size, args.repeat)
        ours[method] = (seconds, flagged)
        tp = len(flagged & truth)
        fp = len(flagged - truth)
        missed = sorted(truth - flagged)
        print(
            f"{method:12s} {seconds:7.3f} s   runs "
            f"{', '.join(f'{x:.3f}' for x in RUN_SECONDS[method])}   TP {tp}/{len(truth)}  FP {fp}   "
            f"max effect {stat:.3f}   missed {missed}   setup {setup * 1e3:.1f} ms"
        )
    if python is None:
        return 0

    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        data = Path(tmp) / "tables.npz"
        save_npz(data, reference, window)
        print(f"running {', '.join(args.anchor_tools)} in {ANCHORS_VENV.name} ...", flush=True)
        try:
            anchors = run_anchors(
                python,
                data,
                tools=args.anchor_tools,
                repeat=args.repeat,
                timeout=args.anchors_timeout,
            )
        except AnchorsError as e:
            print(str(e), file=sys.stderr)
            return 3
    print()
    print(
        f"{args.rows} rows x {reference.shape[1]} features, reference of the same size; "
        f"ratio = tool seconds / driftwarden {args.baseline}; best of {args.repeat}; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    for line in anchors_table(ours, args.baseline, anchors, truth):
        print(line)
    for line in anchors_notes(anchors):
        print(line)
    ours_runs = RUN_SECONDS.get(args.baseline, [])
    for t in anchors.get("tools", []):
        if "error" in t or not ours_runs:
            continue
        pairs = list(zip(t["seconds"], ours_runs, strict=False))
        ratios = ", ".join(f"{a / o:.1f}x" for a, o in pairs)
        print(f"{t['tool']} run i / driftwarden {args.baseline} run i: {ratios}")
    failed = any("error" in t for t in anchors.get("tools", []))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
