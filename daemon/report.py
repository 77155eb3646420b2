"""``driftwarden report``: one self-contained static HTML file with plots of a run.

Inputs are the JSON lines the daemon writes: window summaries (``driftwarden.windows`` topic,
``windows.jsonl`` of the file sink) and decisions (``driftwarden.decisions``,
``decisions.jsonl`` of ``replay``). Per model the report shows the decision timeline, each
detector's statistic over time against its threshold with the triggered windows marked, the
per-slice metric against its baseline, the label coverage, and the decisions with their
reasons.

The file opens from disk: plots are inline SVG rendered with matplotlib (no pyplot, no global
backend), CSS is inline, there is no script. Every string taken from the data is escaped.
The same input gives byte-identical output: nothing depends on the clock, the matplotlib
rc file or dict order, and SVG ids come from a fixed salt and are made unique per figure.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any, cast

import orjson

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["build_report", "load_jsonl", "render_report"]

_SEVERITY_COLORS = {"critical": "#cf222e", "warning": "#bc4c00", "info": "#0969da"}
_OTHER_COLOR = "#6e7781"
_STAT_COLOR = "#0969da"
_TRIGGER_COLOR = "#cf222e"
_TEST_METHODS = ("ks", "chi2")  # feature/prediction drift: threshold is an FDR level on p
_P_CAP = 20.0  # -log10 p is drawn up to this, so a 1e-190 does not flatten the threshold
_MAX_SLICES = 8
_MAX_DOTS = 150
_MAX_ANNOTATIONS = 30  # decisions with actions written on the timeline; beyond, the table
_FIG_WIDTH = 10.0
_MARGINS = {"left": 0.085, "right": 0.975}  # fixed, so stacked plots share their time axis
# Matplotlib style fixed here (not read from the user's matplotlibrc): deterministic output.
_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "legend.fontsize": 8.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#d8dee4",
    "grid.linewidth": 0.6,
    "svg.fonttype": "none",  # text stays text: small, selectable, searchable
    "svg.image_inline": True,
    "text.parse_math": False,  # a "$" in a rule or slice name is not mathtext
    "timezone": "UTC",
}


# -- input -----------------------------------------------------------------------------------
def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read one JSON object per line (blank lines skipped).

    Raises ``ValueError`` naming ``file:line`` for a line that is not a JSON object.
    """
    out: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc}).") from None
            if not isinstance(doc, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object per line.")
            out.append(doc)
    return out


def _time(value: Any) -> datetime | None:
    """An ISO-8601 time as an aware UTC datetime, or ``None`` when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


@dataclass(frozen=True)
class _Window:
    """One window summary, with parsed times."""

    model: str
    stream: str
    index: int
    start: datetime
    end: datetime
    doc: Mapping[str, Any]

    @property
    def results(self) -> Mapping[str, Any]:
        r = self.doc.get("results")
        return r if isinstance(r, Mapping) else {}


@dataclass(frozen=True)
class _Decision:
    """One decision, with its parsed window end."""

    end: datetime
    doc: Mapping[str, Any]

    def get(self, key: str, default: str = "") -> str:
        v = self.doc.get(key)
        return default if v is None else str(v)


def _parse_windows(windows: Iterable[Mapping[str, Any]]) -> tuple[list[_Window], int]:
    out: list[_Window] = []
    skipped = 0
    for w in windows:
        end = _time(w.get("end"))
        if not isinstance(w.get("model"), str) or end is None:
            skipped += 1
            continue
        start = _time(w.get("start")) or end
        idx = w.get("index")
        out.append(
            _Window(
                model=str(w["model"]),
                stream=str(w.get("stream") or "predictions"),
                index=int(idx) if isinstance(idx, int) else -1,
                start=start,
                end=end,
                doc=w,
            )
        )
    return out, skipped


def _parse_decisions(decisions: Iterable[Mapping[str, Any]]) -> tuple[list[_Decision], int]:
    out: list[_Decision] = []
    skipped = 0
    for d in decisions:
        end = _time(d.get("window_end"))
        if not isinstance(d.get("model"), str) or end is None:
            skipped += 1
            continue
        out.append(_Decision(end, d))
    out.sort(key=lambda d: (d.end, d.get("rule"), d.get("status")))
    return out, skipped


# -- small formatting helpers ----------------------------------------------------------------
def _e(value: Any) -> str:
    """HTML-escaped text of any value."""
    return html.escape(str(value), quote=True)


def _num(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return "–" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.3g}"
    return str(x)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _legend_label(text: str) -> str:
    # Matplotlib hides legend entries whose label starts with "_".
    return " " + text if text.startswith("_") else text


def _float(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _evidence(res: Mapping[str, Any]) -> Mapping[str, Any]:
    ev = res.get("evidence")
    return ev if isinstance(ev, Mapping) else {}


def _slice_name(s: Any) -> str:
    if isinstance(s, Mapping):
        return ", ".join(f"{k}={v}" for k, v in sorted(s.items(), key=lambda kv: str(kv[0])))
    return str(s)


def _action_text(a: Mapping[str, Any]) -> str:
    t = str(a.get("type", "?"))
    p = a.get("params") if isinstance(a.get("params"), Mapping) else {}
    assert isinstance(p, Mapping)
    if t in ("alert", "resolve") and p.get("receiver"):
        return f"{t} {p['receiver']}"
    if t == "fallback" and p.get("to"):
        return f"fallback → {p['to']}"
    if t == "retrain" and p.get("promote"):
        return f"retrain (promote: {p['promote']})"
    return t


# -- figures ---------------------------------------------------------------------------------
class _Renderer:
    """Makes figures and turns them into inline SVG with ids unique in the page."""

    def __init__(self) -> None:
        self.count = 0

    def figure(self, height: float) -> Figure:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(_FIG_WIDTH, height))
        return fig

    def svg(self, fig: Figure) -> str:
        import matplotlib

        self.count += 1
        salt = f"dw{self.count}"
        buf = io.StringIO()
        with matplotlib.rc_context({"svg.hashsalt": salt}):
            fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "driftwarden report"})
        text = buf.getvalue()
        text = text[text.index("<svg") :]
        text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
        # Several SVGs share one HTML document: prefix every id and every reference to it.
        ids = set(re.findall(r'\bid="([^"]+)"', text))
        prefix = f"{salt}-"

        def ref(m: re.Match[str]) -> str:
            name = m.group(2)
            return f"{m.group(1)}{prefix}{name}" if name in ids else m.group(0)

        text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
        text = re.sub(r"(url\(#)([^)]+)", ref, text)
        text = re.sub(r'(href="#)([^"]+)', ref, text)
        return text.strip()


@dataclass(frozen=True)
class _TimeAxis:
    """The event-time range shared by every plot of a model, and its model-version switches."""

    lo: datetime
    hi: datetime
    versions: tuple[tuple[datetime, str], ...] = ()


def _time_axis(ax: Axes, xlim: _TimeAxis) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlim(xlim.lo, xlim.hi)  # type: ignore[arg-type]
    # A new model version brings a new reference: mark it on every plot of the model.
    trans = ax.get_xaxis_transform()
    for t, version in xlim.versions:
        ax.axvline(t, color="#8250df", ls=":", lw=1.2, zorder=1)  # type: ignore[arg-type]
        ax.text(
            t,  # type: ignore[arg-type]
            0.98,
            f" version {version}",
            transform=trans,
            color="#8250df",
            fontsize=7.5,
            va="top",
            ha="left",
        )


def _layout(fig: Figure, height: float) -> None:
    # Fixed margins in inches so every plot of a model lines its time axis up with the others.
    fig.subplots_adjust(
        left=_MARGINS["left"],
        right=_MARGINS["right"],
        top=1.0 - 0.42 / height,
        bottom=0.5 / height,
    )


def _legend_above(ax: Axes, ncol: int) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            loc="lower left",
            bbox_to_anchor=(0.0, 1.0),
            ncol=ncol,
            frameon=False,
            borderaxespad=0.2,
        )


@dataclass(frozen=True)
class _Series:
    """How one detector kind is drawn: the value per window and what it is compared with."""

    ylabel: str
    values: list[float | None]
    thresholds: list[float | None]
    how: str  # caption text: how to read the plot
    bars: bool = False
    capped: bool = False


def _neglog10(p: float | None) -> float | None:
    if p is None or p < 0:
        return None
    return _P_CAP if p <= 0 else min(_P_CAP, -math.log10(p))


def _series(kind: str, results: Sequence[Mapping[str, Any]]) -> _Series:
    ev = [_evidence(r) for r in results]
    stats = [_float(r.get("statistic")) for r in results]
    thrs = [_float(r.get("threshold")) for r in results]
    if kind == "concept_drift":
        return _Series(
            "error rate in window",
            [_float(e.get("window_error_rate")) for e in ev],
            [None] * len(results),
            "The labeled error rate per window; red: the change detector saw the error rate "
            "change during the window.",
        )
    methods = {str(e.get("method")) for e in ev if e.get("method") is not None}
    if kind in ("feature_drift", "prediction_drift") and methods & set(_TEST_METHODS):
        return _Series(
            "−log10 adjusted p",
            [_neglog10(_float(r.get("p_value"))) for r in results],
            [_neglog10(t) for t in thrs],
            f"Strength of evidence of a shift (−log10 of the smallest adjusted p-value, drawn "
            f"up to {_P_CAP:g}); fires above the dashed level when the effect is also large "
            "enough.",
            capped=True,
        )
    if kind == "data_quality":
        return _Series(
            "problems found",
            stats,
            [None] * len(results),
            "Number of data-quality problems per window; any problem fires.",
            bars=True,
        )
    if kind == "slice_performance":
        metric = next((str(e["metric"]) for e in ev if e.get("metric")), "metric")
        return _Series(
            f"worst {metric} drop",
            stats,
            thrs,
            f"Largest drop of {metric} below its baseline over the tested slices; fires above "
            "the dashed line when the drop is also significant.",
        )
    if kind in ("feature_drift", "prediction_drift"):
        method = ", ".join(sorted(methods)) or "statistic"
        return _Series(
            f"max {method}",
            stats,
            thrs,
            f"Largest per-feature {method} against the reference; fires above the dashed line "
            "when the shift is also significant.",
        )
    return _Series(
        "statistic", stats, thrs, "Detector statistic per window; fires above the dashed line."
    )


def _no_value_reason(kind: str, results: Sequence[Mapping[str, Any]]) -> str:
    """Why a detector has nothing to draw, for the empty plot."""
    if kind == "slice_performance":
        statuses: Counter[str] = Counter()
        for r in results:
            for row in _evidence(r).get("slices") or []:
                if isinstance(row, Mapping):
                    statuses[str(row.get("status"))] += 1
        if statuses:
            common = ", ".join(f"{s} ({n})" for s, n in sorted(statuses.items()))
            return f"No slice was tested in any window: {common}."
    return "The detector reported no value in any window."


def _detector_figure(
    r: _Renderer,
    name: str,
    kind: str,
    points: list[tuple[_Window, Mapping[str, Any]]],
    xlim: _TimeAxis,
) -> tuple[str, str]:
    """SVG of one detector over time, and how to read it."""
    spec = _series(kind, [res for _, res in points])
    height = 2.3
    fig = r.figure(height)
    ax = fig.add_subplot()
    _layout(fig, height)
    xs = [w.end for w, _ in points]
    ys = [math.nan if v is None else v for v in spec.values]
    trig = [bool(res.get("triggered")) for _, res in points]
    first_span = True
    for (w, _), t in zip(points, trig, strict=True):
        if t:
            ax.axvspan(
                w.start,  # type: ignore[arg-type]
                w.end,  # type: ignore[arg-type]
                color=_TRIGGER_COLOR,
                alpha=0.15,
                lw=0,
                label="triggered window" if first_span else None,
            )
            first_span = False
    if spec.bars:
        widths = [max((w.end - w.start).total_seconds(), 1.0) / 86400.0 for w, _ in points]
        ax.bar(
            [w.start for w, _ in points],  # type: ignore[arg-type]
            [0 if math.isnan(y) else y for y in ys],
            width=widths,
            align="edge",
            color=[_TRIGGER_COLOR if t else _STAT_COLOR for t in trig],
            label=spec.ylabel,
        )
    else:
        dots = "o" if len(xs) <= _MAX_DOTS else None  # many windows: a line reads better
        ax.plot(xs, ys, color=_STAT_COLOR, lw=1.4, marker=dots, ms=3, label=spec.ylabel)  # type: ignore[arg-type]
        tx = [x for x, y, t in zip(xs, ys, trig, strict=True) if t and not math.isnan(y)]
        ty = [y for y, t in zip(ys, trig, strict=True) if t and not math.isnan(y)]
        if tx:
            ax.plot(tx, ty, ls="none", marker="o", ms=6, color=_TRIGGER_COLOR, zorder=5)  # type: ignore[arg-type]
    th = [math.nan if t is None else t for t in spec.thresholds]
    if any(not math.isnan(t) for t in th) and not all(math.isnan(y) for y in ys):
        ax.plot(xs, th, color="#57606a", ls="--", lw=1.2, drawstyle="steps-mid", label="threshold")  # type: ignore[arg-type]
    if spec.capped:
        ax.set_ylim(bottom=0, top=_P_CAP * 1.05)
    elif spec.bars or kind == "concept_drift":
        ax.set_ylim(bottom=0)
    if spec.bars:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if all(math.isnan(y) for y in ys):
        ax.text(
            0.5,
            0.5,
            _no_value_reason(kind, [res for _, res in points]),
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#57606a",
        )
        ax.set_yticks([])
    ax.set_ylabel(spec.ylabel)
    _time_axis(ax, xlim)
    _legend_above(ax, 3)
    svg = r.svg(fig)
    return svg, spec.how


def _slice_figure(
    r: _Renderer, points: list[tuple[_Window, Mapping[str, Any]]], xlim: _TimeAxis
) -> tuple[str, str] | None:
    """SVG of the per-slice metric over labeled windows vs its baseline, or ``None``."""
    by_slice: dict[str, dict[datetime, Mapping[str, Any]]] = defaultdict(dict)
    total_n: Counter[str] = Counter()
    metric = "metric"
    for w, res in points:
        ev = _evidence(res)
        metric = str(ev.get("metric") or metric)
        rows = ev.get("slices")
        if not isinstance(rows, list):
            continue
        for row in rows:
            if isinstance(row, Mapping):
                label = _slice_name(row.get("slice"))
                by_slice[label][w.end] = row
                n = row.get("n")
                total_n[label] += n if isinstance(n, int) else 0
    if not by_slice:
        return None
    chosen = sorted(by_slice, key=lambda s: (-total_n[s], s))[:_MAX_SLICES]
    dropped = len(by_slice) - len(chosen)
    height = 2.8
    fig = r.figure(height)
    ax = fig.add_subplot()
    _layout(fig, height)
    palette = [
        "#0969da",
        "#8250df",
        "#1a7f37",
        "#bf8700",
        "#1b7c83",
        "#a475f9",
        "#57606a",
        "#e16f24",
    ]
    any_flagged = False
    any_thin = False
    for i, label in enumerate(sorted(chosen)):
        color = palette[i % len(palette)]
        rows = by_slice[label]
        xs = sorted(rows)
        vals = [_float(rows[x].get("value")) for x in xs]
        base = [_float(rows[x].get("baseline")) for x in xs]
        ys = [math.nan if v is None else v for v in vals]
        ax.plot(xs, ys, color=color, lw=1.4)  # type: ignore[arg-type]
        if any(b is not None for b in base):
            ax.plot(
                xs,  # type: ignore[arg-type]
                [math.nan if b is None else b for b in base],
                color=color,
                lw=1.0,
                ls="--",
                drawstyle="steps-mid",
            )
        tested = [rows[x].get("status") == "tested" for x in xs]
        ax.plot(
            [x for x, t in zip(xs, tested, strict=True) if t],  # type: ignore[arg-type]
            [y for y, t in zip(ys, tested, strict=True) if t],
            ls="none",
            marker="o",
            ms=4,
            color=color,
        )
        thin = [x for x, t in zip(xs, tested, strict=True) if not t]
        if thin:
            ax.plot(
                thin,  # type: ignore[arg-type]
                [y for y, t in zip(ys, tested, strict=True) if not t],
                ls="none",
                marker="o",
                ms=4,
                mfc="white",
                color=color,
            )
            any_thin = True
        hot = [x for x in xs if rows[x].get("triggered")]
        if hot:
            ax.plot(
                hot,  # type: ignore[arg-type]
                [ys[xs.index(x)] for x in hot],
                ls="none",
                marker="o",
                ms=9,
                mfc="none",
                mew=1.8,
                color=_TRIGGER_COLOR,
            )
            any_flagged = True
    ax.set_ylabel(metric)
    _time_axis(ax, xlim)
    # One entry per slice, then what the line styles and markers mean (not one per line).
    from matplotlib.lines import Line2D

    handles: list[Any] = [
        Line2D([], [], color=palette[i % len(palette)], lw=1.6, label=_legend_label(label))
        for i, label in enumerate(sorted(chosen))
    ]
    handles.append(Line2D([], [], color="#57606a", lw=1.0, ls="--", label="baseline"))
    if any_thin:
        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="o",
                ms=4,
                mfc="white",
                color="#57606a",
                label="not tested (too few samples)",
            )
        )
    if any_flagged:
        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="o",
                ms=9,
                mfc="none",
                mew=1.8,
                color=_TRIGGER_COLOR,
                label="significant drop",
            )
        )
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncol=min(len(handles), 5),
        frameon=False,
        borderaxespad=0.2,
    )
    how = (
        f"{metric} per slice over the labeled windows (solid) against the slice's baseline from "
        "the reference profile (dashed); hollow points had too few samples to be tested, red "
        "rings mark a significant drop."
    )
    if dropped:
        how += f" {dropped} smaller slice(s) not drawn."
    return r.svg(fig), how


def _coverage_figure(r: _Renderer, windows: list[_Window], xlim: _TimeAxis) -> str | None:
    """SVG of label coverage per prediction window (deltas of the cumulative join counters)."""
    pred = [w for w in windows if w.stream == "predictions"] or windows
    # (start, end, Δmatched/Δpredictions, cumulative matched/predictions)
    rows: list[tuple[datetime, datetime, float | None, float | None]] = []
    last_p = last_m = 0.0
    for w in pred:
        j = w.doc.get("join")
        if not isinstance(j, Mapping):
            continue
        p = _float(j.get("predictions"))
        m = _float(j.get("matched"))
        if p is None or m is None:
            continue
        if rows and p == last_p and m == last_m:
            # The counters are a snapshot per processed batch: windows closed by one batch
            # share it, so they share one bar.
            start, _, c, cum = rows[-1]
            rows[-1] = (start, w.end, c, cum)
            continue
        # Counters restart at zero when a daemon started without state: a drop is a reset.
        dp = p - last_p if p >= last_p else p
        dm = m - last_m if m >= last_m else m
        last_p, last_m = p, m
        rows.append((w.start, w.end, dm / dp if dp > 0 else None, m / p if p > 0 else None))
    if not rows:
        return None
    height = 2.3
    fig = r.figure(height)
    ax = fig.add_subplot()
    _layout(fig, height)
    widths = [max((b - a).total_seconds(), 1.0) / 86400.0 for a, b, _, _ in rows]
    ax.bar(
        [a for a, _, _, _ in rows],  # type: ignore[arg-type]
        [0.0 if c is None else c for _, _, c, _ in rows],
        width=widths,
        align="edge",
        color="#8cb4e8",
        edgecolor="white",
        lw=0.5,
        label="labels matched in window / predictions in window",
    )
    ax.plot(
        [b for _, b, _, _ in rows],  # type: ignore[arg-type]
        [math.nan if c is None else c for _, _, _, c in rows],
        color="#0a3069",
        lw=1.6,
        marker="o",
        ms=3,
        label="cumulative matched / predictions",
    )
    # A late burst of labels can match many more labels than a window had predictions; such
    # bars are cut at the top and labelled, so they do not flatten the rest.
    top = 1.05
    if any(c is not None and c > top for _, _, c, _ in rows):
        top = 1.5
        for a, b, c, _ in rows:
            if c is not None and c > top:
                ax.annotate(
                    f"{c:.1f}",
                    (a + (b - a) / 2, top),
                    xytext=(0, -2),
                    textcoords="offset points",
                    ha="center",
                    va="top",
                    fontsize=7.5,
                    color="#0a3069",
                )
    ax.set_ylim(0, top)
    ax.set_ylabel("label coverage")
    _time_axis(ax, xlim)
    _legend_above(ax, 2)
    return r.svg(fig)


def _timeline_figure(r: _Renderer, decisions: list[_Decision], xlim: _TimeAxis) -> tuple[str, bool]:
    """SVG of the decisions per rule over time (status as marker, severity as colour).

    The second value says whether the actions are written next to the markers: with many
    decisions they would overlap, and the decisions table lists them anyway.
    """
    import matplotlib.dates as mdates
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rules = sorted({d.get("rule") for d in decisions})
    height = 1.3 + 0.45 * len(rules)
    fig = r.figure(height)
    ax = fig.add_subplot()
    _layout(fig, height)
    y_of = {rule: i for i, rule in enumerate(rules)}
    markers = {"firing": ("o", True), "resolved": ("s", False), "suppressed": ("X", True)}
    annotate = (
        sum(1 for d in decisions if d.get("status") != "resolved" and d.doc.get("actions"))
        <= _MAX_ANNOTATIONS
    )
    for rule in rules:
        y = y_of[rule]
        mine = [d for d in decisions if d.get("rule") == rule]
        # Shade the time a rule was active: from its first firing/suppressed to its resolution.
        active_from: datetime | None = None
        color = _OTHER_COLOR
        spans: list[tuple[datetime, datetime, str]] = []
        for d in mine:
            color = _SEVERITY_COLORS.get(d.get("severity"), _OTHER_COLOR)
            if d.get("status") in ("firing", "suppressed") and active_from is None:
                active_from = d.end
            elif d.get("status") == "resolved" and active_from is not None:
                spans.append((active_from, d.end, color))
                active_from = None
        if active_from is not None:
            spans.append((active_from, xlim.hi, color))
        for a, b, c in spans:
            left = float(mdates.date2num(a))
            width = float(mdates.date2num(b)) - left
            ax.barh(y, width, left=left, height=0.5, color=c, alpha=0.15, lw=0)
        for k, d in enumerate(mine):
            color = _SEVERITY_COLORS.get(d.get("severity"), _OTHER_COLOR)
            marker, filled = markers.get(d.get("status"), ("d", True))
            ax.plot(
                [d.end],  # type: ignore[arg-type]
                [y],
                ls="none",
                marker=marker,
                ms=8,
                color=color,
                mfc=color if filled else "white",
                mew=1.6,
                zorder=4,
            )
            acts = d.doc.get("actions")
            if annotate and d.get("status") != "resolved" and isinstance(acts, list) and acts:
                text = ", ".join(_action_text(a) for a in acts if isinstance(a, Mapping))
                if len(text) > 60:
                    text = text[:59] + "…"  # the table below has all of it
                # Near the right edge the text runs leftwards so it stays inside the figure.
                right = (d.end - xlim.lo) / (xlim.hi - xlim.lo) > 0.6
                ax.annotate(
                    text,
                    (d.end, y),
                    xytext=(-5 if right else 5, 7 if k % 2 == 0 else -13),
                    textcoords="offset points",
                    ha="right" if right else "left",
                    fontsize=7.5,
                    color="#1f2328",
                )
    # Rule names sit inside the plot, so the time axis keeps the margins of the other plots.
    trans = ax.get_yaxis_transform()
    for rule, y in y_of.items():
        ax.text(0.004, y - 0.3, rule, transform=trans, fontsize=8.5, fontweight="bold", va="bottom")
    ax.set_yticks([])
    ax.set_ylim(-0.85, len(rules) - 0.3)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    _time_axis(ax, xlim)
    order = list(_SEVERITY_COLORS)
    sevs = sorted(
        {d.get("severity") for d in decisions},
        key=lambda s: (order.index(s) if s in order else len(order), s),
    )
    handles: list[Any] = [
        Patch(color=_SEVERITY_COLORS.get(s, _OTHER_COLOR), label=_legend_label(s or "—"))
        for s in sevs
    ]
    for status, (marker, filled) in markers.items():
        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker=marker,
                ms=7,
                color="#1f2328",
                mfc="#1f2328" if filled else "white",
                label=status,
            )
        )
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncol=len(handles),
        frameon=False,
        borderaxespad=0.2,
    )
    return r.svg(fig), annotate


# -- captions from evidence ------------------------------------------------------------------
def _evidence_note(kind: str, res: Mapping[str, Any]) -> str:
    """One plain line on what a triggered result found (text, not yet escaped)."""
    ev = _evidence(res)
    parts: list[str] = []
    if kind == "data_quality":
        for pr in (ev.get("problems") or [])[:3]:
            if isinstance(pr, Mapping):
                val = f" value {pr['value']!s}" if pr.get("value") is not None else ""
                parts.append(
                    f"{pr.get('feature')}: {pr.get('check')}{val} "
                    f"(observed {_num(pr.get('observed'))}, expected {_num(pr.get('expected'))})"
                )
    elif kind == "slice_performance":
        for row in ev.get("slices") or []:
            if isinstance(row, Mapping) and row.get("triggered"):
                parts.append(
                    f"{_slice_name(row.get('slice'))}: {row.get('metric')} "
                    f"{_num(row.get('value'))} vs baseline {_num(row.get('baseline'))} "
                    f"(n={_num(row.get('n'))})"
                )
    elif kind == "concept_drift":
        for c in (ev.get("top") or [])[:3]:
            if isinstance(c, Mapping):
                parts.append(
                    f"error rate {_num(c.get('error_rate_before'))} → "
                    f"{_num(c.get('error_rate_after'))}"
                )
    else:
        for t in (ev.get("top") or [])[:5]:
            if isinstance(t, Mapping) and "feature" in t:
                stat = t.get("statistic")
                parts.append(f"{t['feature']}" + (f" ({_num(stat)})" if stat is not None else ""))
    return "; ".join(parts)


# -- HTML ------------------------------------------------------------------------------------
def _badge(severity: str) -> str:
    cls = severity if severity in _SEVERITY_COLORS else "other"
    return f'<span class="badge sev-{cls}">{_e(severity or "—")}</span>'


def _decision_table(decisions: list[_Decision]) -> str:
    if not decisions:
        return '<p class="empty">No decisions for this model.</p>'
    rows = []
    for d in decisions:
        dets = d.doc.get("detectors")
        fired = (
            ", ".join(sorted(str(k) for k, v in dets.items() if v))
            if isinstance(dets, Mapping)
            else ""
        )
        acts = d.doc.get("actions")
        actions = (
            ", ".join(_action_text(a) for a in acts if isinstance(a, Mapping))
            if isinstance(acts, list)
            else ""
        )
        reasons = d.doc.get("reasons")
        reason_html = (
            '<ul class="reasons">' + "".join(f"<li>{_e(x)}</li>" for x in reasons) + "</ul>"
            if isinstance(reasons, list) and reasons
            else ""
        )
        status = d.get("status")
        rows.append(
            "<tr>"
            f'<td class="num">{_e(d.get("window_index"))}</td>'
            f'<td class="time">{_e(_iso(d.end))}</td>'
            f'<td class="time">{_e(d.get("rule"))}</td>'
            f"<td>{_badge(d.get('severity'))}</td>"
            f'<td class="st-{_e(status)}">{_e(status)}</td>'
            f"<td>{_e(fired) or '–'}</td>"
            f"<td>{_e(actions) or '–'}</td>"
            f"<td>{reason_html}</td>"
            "</tr>"
        )
    return (
        '<table class="decisions"><thead><tr><th>window</th><th>window end</th><th>rule</th>'
        "<th>severity</th><th>status</th><th>detectors fired</th><th>actions</th>"
        "<th>reasons</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _xlim(windows: list[_Window], decisions: list[_Decision]) -> _TimeAxis:
    times = [w.start for w in windows] + [w.end for w in windows] + [d.end for d in decisions]
    lo, hi = min(times), max(times)
    pad = max((hi - lo) * 0.02, timedelta(minutes=1))
    # Version switches as seen on the prediction stream (its windows carry the version used).
    switches: list[tuple[datetime, str]] = []
    last: str | None = None
    for w in sorted(
        (w for w in windows if w.stream == "predictions"), key=lambda w: (w.start, w.index)
    ):
        v = w.doc.get("model_version")
        if v is None:
            continue
        if last is not None and str(v) != last:
            switches.append((w.start, str(v)))
        last = str(v)
    return _TimeAxis(lo - pad, hi + pad, tuple(switches))


def _model_section(
    r: _Renderer, model: str, anchor: str, windows: list[_Window], decisions: list[_Decision]
) -> str:
    xlim = _xlim(windows, decisions)
    streams = Counter(w.stream for w in windows)
    versions = sorted(
        {str(w.doc.get("model_version")) for w in windows if w.doc.get("model_version") is not None}
    )
    parts = [f'<section class="model" id="{_e(anchor)}">', f"<h2>Model {_e(model)}</h2>"]
    sub = [
        f"{streams.get('predictions', 0)} prediction windows",
        f"{streams.get('labeled', 0)} labeled windows",
        f"{len(decisions)} decisions",
    ]
    if windows:
        sub.append(f"{_iso(min(w.start for w in windows))} → {_iso(max(w.end for w in windows))}")
    if versions:
        sub.append("model version " + ", ".join(versions))
    parts.append(f'<p class="sub">{_e(" · ".join(sub))}</p>')

    parts.append("<h3>Decisions over time</h3>")
    if decisions:
        svg, annotated = _timeline_figure(r, decisions, xlim)
        actions = (
            "text the actions taken"
            if annotated
            else "the actions taken are in the table below (too many to write here)"
        )
        parts.append(
            f'<figure class="timeline">{svg}<figcaption>'
            "One row per rule at its window's end: filled circle firing, square resolved, cross "
            "suppressed (notifications held back; see the reasons below); colour is the "
            f"severity, shading the time the rule was active, {actions}."
            "</figcaption></figure>"
        )
    else:
        parts.append('<p class="empty">No decisions: no rule fired.</p>')

    # Detector results in window order, per detector (each lives on one stream).
    per_det: dict[str, list[tuple[_Window, Mapping[str, Any]]]] = defaultdict(list)
    for w in sorted(windows, key=lambda w: (w.end, w.stream, w.index)):
        for name, res in w.results.items():
            if isinstance(res, Mapping):
                per_det[str(name)].append((w, res))
    parts.append("<h3>Detectors</h3>")
    if not per_det:
        parts.append('<p class="empty">No window summaries for this model.</p>')
    slice_figs: list[str] = []
    for name in sorted(per_det):
        points = per_det[name]
        kind = str(points[-1][1].get("kind") or "?")
        svg, how = _detector_figure(r, name, kind, points, xlim)
        fired = [(w, res) for w, res in points if res.get("triggered")]
        summary = f"Triggered in {len(fired)} of {len(points)} windows."
        if fired:
            w, res = fired[-1]
            note = _evidence_note(kind, res)
            summary += f" Last at {_iso(w.end)}" + (f": {note}." if note else ".")
        parts.append(
            f'<figure class="detector" data-detector="{_e(name)}" data-kind="{_e(kind)}">'
            f"<h4>{_e(name)} <small>({_e(kind)})</small></h4>{svg}"
            f"<figcaption>{_e(how)} {_e(summary)}</figcaption></figure>"
        )
        if kind == "slice_performance":
            sl = _slice_figure(r, points, xlim)
            if sl is not None:
                slice_figs.append(
                    f'<figure class="slices" data-detector="{_e(name)}">'
                    f"<h4>{_e(name)}: per-slice metric vs baseline</h4>{sl[0]}"
                    f"<figcaption>{_e(sl[1])}</figcaption></figure>"
                )
    if slice_figs:
        parts.append("<h3>Slice performance</h3>")
        parts.extend(slice_figs)

    parts.append("<h3>Label coverage</h3>")
    cov = _coverage_figure(r, windows, xlim)
    if cov is None:
        parts.append('<p class="empty">No join counters in the window summaries.</p>')
    else:
        parts.append(
            f'<figure class="coverage">{cov}<figcaption>Share of predictions with a label, from '
            "the join's cumulative counters: bars are the labels matched during each prediction "
            "window over the predictions in it (labels arrive late: early windows read low, and a "
            "bar above 1 is a burst of labels for earlier predictions); the line is the running "
            "total.</figcaption></figure>"
        )
    parts.append("<h3>Decisions</h3>")
    parts.append(_decision_table(decisions))
    parts.append("</section>")
    return "\n".join(parts)


def _header(
    title: str, windows: list[_Window], decisions: list[_Decision], models: list[str], skipped: int
) -> str:
    firing = sum(1 for d in decisions if d.get("status") == "firing")
    cards = [
        (len(models), "models"),
        (sum(1 for w in windows if w.stream == "predictions"), "prediction windows"),
        (sum(1 for w in windows if w.stream == "labeled"), "labeled windows"),
        (len(decisions), "decisions"),
        (firing, "firing"),
    ]
    out = [f"<header><h1>{_e(title)}</h1>"]
    times = [w.end for w in windows] + [d.end for d in decisions]
    if times:
        lo = min([w.start for w in windows] + [d.end for d in decisions])
        out.append(f'<p class="sub">Event time {_e(_iso(lo))} → {_e(_iso(max(times)))}</p>')
    out.append(
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="num">{n}</div><div class="lbl">{_e(lbl)}</div></div>'
            for n, lbl in cards
        )
        + "</div>"
    )
    if skipped:
        out.append(
            f'<p class="sub">{skipped} input record(s) without a model or a valid time were '
            "ignored.</p>"
        )
    if decisions:
        statuses = ["firing", "suppressed", "resolved"]
        extra = sorted({d.get("status") for d in decisions} - set(statuses))
        statuses += extra
        by: Counter[tuple[str, str, str]] = Counter(
            (d.get("model"), d.get("rule"), d.get("status")) for d in decisions
        )
        keys = sorted({(m, ru) for m, ru, _ in by})
        head = "".join(f'<th class="num">{_e(s)}</th>' for s in statuses)
        body = "".join(
            f"<tr><td>{_e(m)}</td><td>{_e(ru)}</td>"
            + "".join(f'<td class="num">{by.get((m, ru, s), 0)}</td>' for s in statuses)
            + "</tr>"
            for m, ru in keys
        )
        out.append(
            '<table class="summary"><thead><tr><th>model</th><th>rule</th>'
            f"{head}</tr></thead><tbody>{body}</tbody></table>"
        )
    if len(models) > 1:
        out.append(
            "<nav>"
            + "".join(f'<a href="#model-{i}">{_e(m)}</a>' for i, m in enumerate(models))
            + "</nav>"
        )
    out.append("</header>")
    return "\n".join(out)


def render_report(
    windows: Iterable[Mapping[str, Any]],
    decisions: Iterable[Mapping[str, Any]],
    *,
    title: str = "driftwarden report",
) -> str:
    """The report as one HTML string (see the module docstring)."""
    import matplotlib

    wins, skipped_w = _parse_windows(windows)
    decs, skipped_d = _parse_decisions(decisions)
    models = sorted({w.model for w in wins} | {str(d.doc["model"]) for d in decs})
    r = _Renderer()
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        with matplotlib.rc_context(rc=cast(Any, _STYLE)):
            sections = [
                _model_section(
                    r,
                    m,
                    f"model-{i}",
                    [w for w in wins if w.model == m],
                    [d for d in decs if d.doc["model"] == m],
                )
                for i, m in enumerate(models)
            ]
    body = [_header(title, wins, decs, models, skipped_w + skipped_d)]
    if not models:
        body.append('<p class="empty">The input has no window summaries and no decisions.</p>')
    body.extend(sections)
    template = (
        resources.files("driftwarden.daemon")
        .joinpath("data/report_template.html")
        .read_text(encoding="utf-8")
    )
    return Template(template).substitute(title=_e(title), body="\n".join(body))


def build_report(
    windows: Iterable[Mapping[str, Any]],
    decisions: Iterable[Mapping[str, Any]],
    out_path: str | Path,
    *,
    title: str = "driftwarden report",
) -> Path:
    """Write the report for window summaries and decisions to ``out_path``; returns the path."""
    text = render_report(windows, decisions, title=title)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    return path
