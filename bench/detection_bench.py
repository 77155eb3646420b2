"""Detection benchmark: delay, misses and false alarms of the change detectors (not a test).

Seeded streams with a known change point (20 seeds by default): Gaussian mean shifts of
0.25 / 0.5 / 1 σ, a Bernoulli error rate 0.1 -> 0.2, and river's ``ConceptDriftStream`` (SEA
variant 0 -> 1, 10 % label noise, a 1000-sample sigmoid transition) seen through the errors of
a fixed logistic regression trained on 10 000 samples of the first concept (its reference
error rate from 20 000 held-out ones); the change counts
from the start of the transition (river's ``position - width / 2``). Each seed has ``--pre``
samples before the change (100 000: 2 M in-control samples per stream over 20 seeds, so that
"0 false alarms" bounds the rate) and ``--post`` after. Then NannyML's bundled synthetic
datasets (``--nannyml``, the default; one realization each, not seeds), read from the
nannyml 0.13.1 wheel (downloaded once into ``bench/.cache/``, never installed): the stream is
the reference period followed by the analysis period in timestamp order, the change is at the
middle of the analysis period.

For every detector: median detection delay (p10-p90) over the runs that detected the change,
misses (no detection within ``--post`` samples after the change) and false alarms per 100 k
pre-change samples (every alarm before the change counts, each CUSUM of a bank separately).

Detectors: river's ``ADWIN`` and ``PageHinkley`` at their defaults fed one value at a time;
driftwarden's ``cusum`` (features) / ``error_cusum`` (errors) at their defaults (a bank
``k = 0.125, 0.25, 0.5`` with ``h`` from ``arl0 = 5e6``; ``cusum`` watches both directions,
``error_cusum`` a rise) against the reference (the generating distribution for the seeded
streams, the reference period for NannyML), and ``concept_drift`` (ADWIN, debounced) on error
streams; ours get the stream as the daemon would give it: micro-batches of 500, alarms dated
to the sample. Trivial baselines: never, always, every 500 samples. Delay resolution is one
sample for every detector (river's ADWIN checks for a cut every 32 samples, its default).

Run: ``.venv/bin/python bench/detection_bench.py`` (≈ 40 s on 2 cores) or ``--quick`` (≈ 7 s).
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from river import drift
from river.datasets import synth

from driftwarden.detectors.batch import Batch, FeatureColumn
from driftwarden.detectors.concept_drift import ConceptDrift
from driftwarden.detectors.sequential import Cusum, ErrorCusum

MICRO_BATCH = 500
EVERY = 500  # the "every k samples" baseline
CACHE = Path(__file__).resolve().parent / ".cache"
NANNYML = "nannyml==0.13.1"
CDS_WIDTH = 1000  # ConceptDriftStream transition width


@dataclass
class Stream:
    """One benchmark stream: its realizations, change point and reference."""

    label: str
    kind: str  # "feature" (cusum) or "errors" (error_cusum, concept_drift)
    runs: list[np.ndarray]
    pre: int  # index of the first changed sample
    post: int  # samples after the change in which a detection counts
    mean: float  # reference mean and std the CUSUMs standardise with
    std: float


# --------------------------------------------------------------------------- seeded streams


def gaussian(seed: int, shift: float, pre: int, post: int) -> np.ndarray:
    """N(0, 1) for ``pre`` samples, then N(shift, 1)."""
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(0, 1, pre), rng.normal(shift, 1, post)]


def bernoulli(seed: int, pre: int, post: int) -> np.ndarray:
    """0/1 errors at rate 0.1 for ``pre`` samples, then at 0.2."""
    rng = np.random.default_rng(seed)
    return np.r_[rng.random(pre) < 0.1, rng.random(post) < 0.2].astype(np.float64)


def _sea(stream: object, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.empty((n, 3)), np.empty(n, dtype=bool)
    for i, (row, label) in enumerate(stream.take(n)):  # type: ignore[attr-defined]
        x[i] = (row[0], row[1], row[2])
        y[i] = label
    return x, y


@functools.cache
def sea_model() -> tuple[object, float]:
    """A logistic regression fit on 10 000 SEA(variant 0) samples, and its reference error rate.

    The error rate is measured on 20 000 other samples of the same concept, as a reference
    profile is built from held-out data (the training error is biased low).
    """
    from sklearn.linear_model import LogisticRegression

    x, y = _sea(synth.SEA(variant=0, noise=0.1, seed=10**6), 10_000)
    model = LogisticRegression().fit(x, y)
    x, y = _sea(synth.SEA(variant=0, noise=0.1, seed=10**6 + 1), 20_000)
    return model, float(np.mean(model.predict(x) != y))


def concept_drift_errors(seed: int, pre: int, post: int) -> np.ndarray:
    """The fixed model's 0/1 errors on river's ConceptDriftStream; the transition starts at pre."""
    model, _ = sea_model()
    stream = synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, noise=0.1, seed=2 * seed + 1),
        drift_stream=synth.SEA(variant=1, noise=0.1, seed=2 * seed + 2),
        position=pre + CDS_WIDTH // 2,
        width=CDS_WIDTH,
        seed=seed,
    )
    x, y = _sea(stream, pre + post)
    return (model.predict(x) != y).astype(np.float64)  # type: ignore[attr-defined]


def seeded_streams(seeds: int, pre: int, post: int) -> list[Stream]:
    """The seeded streams of the issue, each with ``seeds`` realizations."""
    out = [
        Stream(
            f"gauss +{s} sigma",
            "feature",
            [gaussian(seed, s, pre, post) for seed in range(seeds)],
            pre,
            post,
            0.0,
            1.0,
        )
        for s in (0.25, 0.5, 1.0)
    ]
    out.append(
        Stream(
            "bernoulli 0.1->0.2",
            "errors",
            [bernoulli(seed, pre, post) for seed in range(seeds)],
            pre,
            post,
            0.1,
            math.sqrt(0.09),
        )
    )
    p = sea_model()[1]
    out.append(
        Stream(
            "river ConceptDriftStream",
            "errors",
            [concept_drift_errors(seed, pre, post) for seed in range(seeds)],
            pre,
            post,
            p,
            math.sqrt(p * (1 - p)),
        )
    )
    return out


# --------------------------------------------------------------------------- NannyML datasets


def nannyml_wheel() -> Path:
    """The nannyml wheel in ``bench/.cache`` (``pip download --no-deps`` once; never installed)."""
    found = sorted(CACHE.glob("nannyml-0.13.1-*.whl"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", NANNYML, "--no-deps", "-d", str(CACHE)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        found = sorted(CACHE.glob("nannyml-0.13.1-*.whl"))
    return found[0]


def _csv(wheel: zipfile.ZipFile, name: str):
    import pandas as pd

    return pd.read_csv(io.BytesIO(wheel.read(f"nannyml/datasets/data/{name}.csv")))


def nannyml_streams(post: int) -> list[Stream]:
    """Error and feature streams of NannyML's synthetic datasets: reference, then analysis.

    Car loan (binary): NannyML's quickstart (docs/quick.rst) says ``loan_length``,
    ``salary_range``, ``car_value`` and ``repaid_loan_on_prev_car`` drift "from the second half
    of the analysis period" and performance drops there: the change is at analysis row 25 000
    of 50 000. Multiclass (credit cards) and regression (car prices): the docs found do not
    name the row; their analysis chunks shift at row 30 000 of 60 000, the middle.
    """
    with zipfile.ZipFile(nannyml_wheel()) as whl:

        def frames(ref: str, ana: str, target: str):
            r, a, t = _csv(whl, ref), _csv(whl, ana), _csv(whl, target)
            a = a.merge(t, on="id")
            return r.sort_values("timestamp"), a.sort_values("timestamp")

        out: list[Stream] = []
        r, a = frames(
            "synthetic_car_loan_reference",
            "synthetic_car_loan_analysis",
            "synthetic_car_loan_analysis_target",
        )
        change = len(r) + len(a) // 2
        err_r = (r.y_pred != r.repaid).to_numpy(float)
        err = np.r_[err_r, (a.y_pred != a.repaid).to_numpy(float)]
        p = float(err_r.mean())
        out.append(
            Stream(
                "nannyml car_loan errors", "errors", [err], change, post, p, math.sqrt(p * (1 - p))
            )
        )
        for col in ("car_value", "loan_length"):
            ref = r[col].to_numpy(float)
            x = np.r_[ref, a[col].to_numpy(float)]
            label = f"nannyml car_loan {col}"
            out.append(Stream(label, "feature", [x], change, post, ref.mean(), ref.std()))

        r, a = frames("mc_reference", "mc_analysis", "mc_analysis_gt")
        err_r = (r.y_pred != r.y_true).to_numpy(float)
        p = float(err_r.mean())
        out.append(
            Stream(
                "nannyml multiclass errors",
                "errors",
                [np.r_[err_r, (a.y_pred != a.y_true).to_numpy(float)]],
                len(r) + len(a) // 2,
                post,
                p,
                math.sqrt(p * (1 - p)),
            )
        )
        r, a = frames(
            "regression_synthetic_reference",
            "regression_synthetic_analysis",
            "regression_synthetic_analysis_targets",
        )
        ref = r.accident_count.to_numpy(float)
        out.append(
            Stream(
                "nannyml car_price accident_count",
                "feature",
                [np.r_[ref, a.accident_count.to_numpy(float)]],
                len(r) + len(a) // 2,
                post,
                ref.mean(),
                ref.std(),
            )
        )
    return out


# --------------------------------------------------------------------------- detectors


def _labeled_batch(errors: np.ndarray) -> Batch:
    """A labeled classification batch built column-wise (predicted 1; label 0 where wrong)."""
    n = errors.size
    predicted = np.empty(n, dtype=object)
    predicted[:] = [1] * n
    label = np.empty(n, dtype=object)
    label[:] = np.where(errors > 0.5, 0, 1).tolist()
    nan = np.full(n, np.nan)
    return Batch({}, {}, nan, nan, predicted, label, np.zeros(n))


def _feature_batch(x: np.ndarray) -> Batch:
    """A predictions batch holding ``x`` as the numeric feature ``x`` (built column-wise)."""
    n = x.size
    col = FeatureColumn(
        numeric=x.astype(np.float64),
        text=np.full(n, None, dtype=object),
        null=np.zeros(n, dtype=bool),
        absent=np.zeros(n, dtype=bool),
    )
    nan = np.full(n, np.nan)
    empty = np.full(n, None, dtype=object)
    return Batch({"x": col}, {}, nan, nan, empty, empty, np.zeros(n))


def run_river(factory: Callable[[], object], x: np.ndarray) -> list[int]:
    """Detection indices of a river detector fed ``x`` one value at a time."""
    det = factory()
    out = []
    for i, v in enumerate(x.tolist()):
        det.update(v)  # type: ignore[attr-defined]
        if det.drift_detected:  # type: ignore[attr-defined]
            out.append(i)
    return out


def run_ours(det, make_batch: Callable[[np.ndarray], Batch], x: np.ndarray, key: str) -> list[int]:
    """Detection indices of a driftwarden detector fed micro-batches (one window per batch)."""
    out: list[int] = []
    for start in range(0, x.size, MICRO_BATCH):
        det.update(make_batch(x[start : start + MICRO_BATCH]))
        out.extend(c["index"] for c in det.result().evidence[key])
        det.reset()
    return out


def baselines(n: int) -> Iterator[tuple[str, Callable[[np.ndarray], list[int]]]]:
    """Trivial detectors: never, always, and every ``EVERY`` samples."""
    yield "baseline: never", lambda x: []
    yield "baseline: always", lambda x: list(range(x.size))
    yield f"baseline: every {EVERY}", lambda x: list(range(EVERY - 1, x.size, EVERY))


def detectors_for(s: Stream) -> dict[str, Callable[[np.ndarray], list[int]]]:
    """The detectors benchmarked on a stream (ours at their defaults, against its reference)."""
    dets: dict[str, Callable[[np.ndarray], list[int]]] = {
        "river ADWIN": lambda x: run_river(drift.ADWIN, x),
        "river PageHinkley": lambda x: run_river(drift.PageHinkley, x),
    }
    if s.kind == "errors":
        dets["concept_drift (adwin)"] = lambda x: run_ours(
            ConceptDrift("errors", method="adwin", direction="both"), _labeled_batch, x, "changes"
        )
        dets["error_cusum (default)"] = lambda x: run_ours(
            ErrorCusum("errors", mean=s.mean, std=s.std), _labeled_batch, x, "alarms"
        )
    else:
        dets["cusum (default)"] = lambda x: run_ours(
            Cusum("x", feature="x", mean=s.mean, std=s.std), _feature_batch, x, "alarms"
        )
    dets.update(baselines(s.pre + s.post))
    return dets


# --------------------------------------------------------------------------- the table


def summarise(hits: list[list[int]], pre: int, post: int) -> tuple[str, int, float]:
    """(median delay (p10-p90), misses, false alarms per 100 k pre-change samples)."""
    delays, misses, false_alarms = [], 0, 0
    for idx in hits:
        false_alarms += sum(1 for i in idx if i < pre)
        after = [i - pre for i in idx if pre <= i < pre + post]
        if after:
            delays.append(after[0])
        else:
            misses += 1
    if delays:
        p10, p50, p90 = np.percentile(delays, [10, 50, 90])
        delay = f"{p50:7.0f} ({p10:.0f}-{p90:.0f})"
    else:
        delay = "      - (all missed)"
    return delay, misses, false_alarms / (len(hits) * pre) * 1e5


def header() -> str:
    """The table's column names."""
    return (
        f"{'stream':34} {'detector':24} {'median delay (p10-p90)':>24} {'misses':>7} "
        f"{'FA/100k':>8} {'s':>6}"
    )


def report(s: Stream) -> None:
    """Run every detector on a stream's realizations and print one row each."""
    n = len(s.runs)
    for name, run in detectors_for(s).items():
        t0 = time.perf_counter()
        hits = [run(x) for x in s.runs]
        took = time.perf_counter() - t0
        delay, misses, fa = summarise(hits, s.pre, s.post)
        print(f"{s.label:34} {name:24} {delay:>24} {misses:>4}/{n:<2} {fa:8.2f} {took:6.1f}")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one table row per stream and detector."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 seeds, 20k pre-change samples")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--pre", type=int, default=100_000)
    ap.add_argument("--post", type=int, default=5000)
    ap.add_argument("--no-nannyml", dest="nannyml", action="store_false")
    args = ap.parse_args(argv)
    seeds, pre, post = args.seeds, args.pre, args.post
    if args.quick:
        seeds, pre = 5, 20_000

    t_all = time.perf_counter()
    print(
        f"{seeds} seeds, change at {pre}, {post} samples after; micro-batches of {MICRO_BATCH}; "
        f"{seeds * pre:,} pre-change samples per stream"
    )
    print(header())
    for s in seeded_streams(seeds, pre, post):
        report(s)
    if args.nannyml:
        streams = nannyml_streams(post)
        print(
            f"\n{NANNYML} synthetic datasets, read from the wheel: one realization each (no "
            "seeds; misses are 0/1); stream = reference + analysis period in timestamp order, "
            "change at the middle of the analysis period; "
            + ", ".join(f"{s.label}: change at {s.pre} of {s.runs[0].size}" for s in streams)
        )
        print(header())
        for s in streams:
            report(s)
    print(f"total {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
