"""Runs Evidently and Alibi Detect on drift_bench's data; executed inside bench/.venv-anchors.

Not part of driftwarden and not importable from it: ``bench/drift_bench.py --anchors`` starts
this file with the anchors venv's interpreter (numpy < 2, pandas < 3), because neither tool
installs next to the project's numpy 2. It reads the reference and current tables that
drift_bench saved as ``.npz`` (no pickles: numeric columns as float64, categorical ones as
fixed-width unicode), times each tool ``--repeat`` times and prints one JSON document on
stdout's last line::

    {"versions": {...}, "tools": [{"tool": ..., "seconds": [...], "flagged": [...], ...}]}

Timed parts:

- ``evidently``: ``Dataset.from_pandas`` for both tables + ``Report([DataDriftPreset()]).run``.
  ``run`` computes every column's test *and* builds the chart widgets (plotly figure data);
  turning the snapshot into an HTML page is timed apart (``html_seconds``), once.
- ``alibi``: ``TabularDrift(x_ref, ...)`` (``fit_seconds``) + ``predict(x)`` (``predict_seconds``).
  Flags: per feature ``p < p_val`` (what ``drift_type="feature"`` returns; the Bonferroni
  setting is not applied there) and, from the same p-values, ``p < p_val / n_features`` (the
  Bonferroni threshold its batch verdict uses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

# No network from the anchors: transformers is imported by alibi_detect, telemetry by evidently.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ITERATIVE_DO_NOT_TRACK", "do-not-track")
os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def load(path: Path) -> dict[str, Any]:
    """The tables drift_bench saved: names and the reference/current arrays."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def frame(num: np.ndarray, cat: np.ndarray, num_names: list[str], cat_names: list[str]):
    """A pandas table (float64 numerics, object strings for the categoricals)."""
    cols: dict[str, Any] = {n: num[:, i] for i, n in enumerate(num_names)}
    cols.update({n: cat[:, i].astype(object) for i, n in enumerate(cat_names)})
    return pd.DataFrame(cols)


def run_evidently(data: dict[str, Any], repeat: int, html: bool) -> dict[str, Any]:
    """Time Evidently's DataDriftPreset on reference vs current; flagged = failed column tests."""
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    num_names = [str(x) for x in data["num_names"]]
    cat_names = [str(x) for x in data["cat_names"]]
    ref = frame(data["ref_num"], data["ref_cat"], num_names, cat_names)
    cur = frame(data["cur_num"], data["cur_cat"], num_names, cat_names)
    definition = DataDefinition(numerical_columns=num_names, categorical_columns=cat_names)

    seconds: list[float] = []
    snapshot = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        cur_ds = Dataset.from_pandas(cur, data_definition=definition)
        ref_ds = Dataset.from_pandas(ref, data_definition=definition)
        snapshot = Report([DataDriftPreset()], include_tests=True).run(cur_ds, ref_ds)
        seconds.append(time.perf_counter() - t0)
    assert snapshot is not None
    html_seconds = None
    if html:
        t0 = time.perf_counter()
        page = snapshot.get_html_str(as_iframe=False)
        html_seconds = time.perf_counter() - t0
        html_bytes = len(page)

    flagged: list[str] = []
    methods: dict[str, str] = {}
    for test in snapshot.dict()["tests"]:
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        methods[params["column"]] = f"{params.get('method')} (threshold {params.get('threshold')})"
        if test["status"] == "FAIL":
            flagged.append(params["column"])
    out: dict[str, Any] = {
        "tool": "evidently",
        "version": evidently.__version__,
        "seconds": seconds,
        "flagged": sorted(flagged),
        "methods": sorted(set(methods.values())),
        "timed": "Dataset.from_pandas x2 + Report.run (tests + chart widgets, no HTML)",
    }
    if html_seconds is not None:
        out["html_seconds"] = html_seconds
        out["html_bytes"] = html_bytes
    return out


def run_alibi(data: dict[str, Any], repeat: int, p_val: float) -> dict[str, Any]:
    """Time Alibi Detect's TabularDrift (KS for numerics, chi-square for the categoricals)."""
    import alibi_detect
    from alibi_detect.cd import TabularDrift

    num_names = [str(x) for x in data["num_names"]]
    cat_names = [str(x) for x in data["cat_names"]]
    names = num_names + cat_names
    # Integer codes from the reference's categories; a category only in the current table gets
    # a code of its own (alibi counts the union of both tables' values).
    x_ref = np.empty((data["ref_num"].shape[0], len(names)), dtype=np.float64)
    x_cur = np.empty((data["cur_num"].shape[0], len(names)), dtype=np.float64)
    x_ref[:, : len(num_names)] = data["ref_num"]
    x_cur[:, : len(num_names)] = data["cur_num"]
    categories: dict[int, int] = {}
    for i in range(len(cat_names)):
        col = len(num_names) + i
        levels = np.unique(np.concatenate([data["ref_cat"][:, i], data["cur_cat"][:, i]]))
        x_ref[:, col] = np.searchsorted(levels, data["ref_cat"][:, i])
        x_cur[:, col] = np.searchsorted(levels, data["cur_cat"][:, i])
        categories[col] = int(levels.size)

    fit_s: list[float] = []
    pred_s: list[float] = []
    result: dict[str, Any] = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det = TabularDrift(
                x_ref, p_val=p_val, categories_per_feature=categories, correction="bonferroni"
            )
        t1 = time.perf_counter()
        result = det.predict(x_cur, drift_type="batch", return_p_val=True)
        t2 = time.perf_counter()
        fit_s.append(t1 - t0)
        pred_s.append(t2 - t1)
    p = np.asarray(result["data"]["p_val"], dtype=np.float64)
    per_feature = [names[i] for i in np.flatnonzero(p < p_val)]
    corrected = [names[i] for i in np.flatnonzero(p < p_val / len(names))]
    return {
        "tool": "alibi",
        "version": alibi_detect.__version__,
        "seconds": [f + q for f, q in zip(fit_s, pred_s, strict=True)],
        "fit_seconds": fit_s,
        "predict_seconds": pred_s,
        "flagged": sorted(per_feature),
        "flagged_bonferroni": sorted(corrected),
        "batch_is_drift": int(result["data"]["is_drift"]),
        "methods": [f"KS (numeric) / chi-square (categorical), p_val {p_val}, bonferroni"],
        "timed": "TabularDrift(x_ref) + predict(x)",
    }


def main(argv: list[str] | None = None) -> int:
    """Run the requested tools and print their JSON on the last stdout line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="the .npz written by drift_bench.py --anchors")
    ap.add_argument("--tools", nargs="*", default=["evidently", "alibi"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--p-val", type=float, default=0.05)
    ap.add_argument("--no-html", action="store_true", help="skip timing Evidently's HTML page")
    args = ap.parse_args(argv)

    data = load(args.data)
    tools: list[dict[str, Any]] = []
    for tool in args.tools:
        try:
            if tool == "evidently":
                tools.append(run_evidently(data, args.repeat, html=not args.no_html))
            elif tool == "alibi":
                tools.append(run_alibi(data, args.repeat, args.p_val))
            else:
                tools.append({"tool": tool, "error": f"unknown anchor tool {tool!r}"})
        except Exception as e:  # one tool failing must not hide the other's numbers
            tools.append({"tool": tool, "error": f"{type(e).__name__}: {e}"})
    versions = {"numpy": np.__version__, "pandas": pd.__version__, "python": sys.version.split()[0]}
    print(json.dumps({"versions": versions, "tools": tools}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
