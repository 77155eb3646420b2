"""Tests of ``driftwarden.daemon.report``: the static HTML report with inline SVG plots.

The main input is real: a seeded 6000-prediction replay through the daemon (the seed's
incident from prediction 3500 on) with a policy whose rules give a firing, a suppressed and a
resolved decision. The report is also opened as a user would: rendered by headless Chromium.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from driftwarden.daemon.app import build_daemon, load_policy_set
from driftwarden.daemon.report import build_report, load_jsonl, render_report
from driftwarden.daemon.settings import load_settings
from driftwarden.daemon.sinks import MemorySink
from driftwarden.detectors.profile import build_profile
from tests.daemon import eventgen

POLICY = """
apiVersion: driftwarden/v1
kind: Policy
model: churn
reference: file:../churn.json
window: {events: 500, labeled: {events: 300}}
detectors:
  - {name: quality, type: data_quality}
  - {name: drift, type: feature_drift, method: js, threshold: 0.1}
  - {name: tiers, type: slice_performance, metric: recall, by: customer_tier, max_drop: 0.1,
     min_samples: 30}
  - {name: errors, type: concept_drift}
rules:
  - name: broken-input
    when: quality
    severity: critical
    actions: [{alert: oncall}, {fallback: {to: previous}}]
  - name: drifted
    when: drift
    severity: warning
    actions: [{alert: oncall}]
  - name: input-ok
    when: not quality
    severity: info
    actions: [{alert: oncall}]
receivers:
  oncall: {type: log}
"""


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Window summaries and decisions of a seeded replay, also written as JSON lines."""
    root = tmp_path_factory.mktemp("report")
    profile = build_profile(
        eventgen.reference_table(5000),
        "churn",
        target="churned",
        prediction="predicted",
        score="score",
        segments=["customer_tier", "region"],
        model_version="1",
    )
    profile.save(root / "churn.json")
    (root / "policies").mkdir()
    (root / "policies" / "churn.yaml").write_text(POLICY)
    events = root / "events.jsonl"
    with open(events, "wb") as fh:
        for ev in eventgen.events(6000, incident_from=3500):
            fh.write(ev.value + b"\n")
    settings = load_settings(None, env={})
    sink = MemorySink()
    daemon = build_daemon(
        settings,
        policies=load_policy_set(root / "policies"),
        sink=sink,
        events_path=str(events),
        with_state=False,
    )
    daemon.run()
    daemon.source.close()
    windows = sink.values(settings.topics["windows"])
    decisions = sink.values(settings.topics["decisions"])
    for name, docs in (("windows", windows), ("decisions", decisions)):
        with open(root / f"{name}.jsonl", "wb") as fh:
            for d in docs:
                fh.write(orjson.dumps(d, option=orjson.OPT_SORT_KEYS) + b"\n")
    return {"root": root, "windows": windows, "decisions": decisions}


@pytest.fixture(scope="module")
def report(run_output: dict[str, Any]) -> Path:
    """The report of the replay, built from the JSON-lines files as the CLI does."""
    root = run_output["root"]
    return build_report(
        load_jsonl(root / "windows.jsonl"),
        load_jsonl(root / "decisions.jsonl"),
        root / "out" / "report.html",
        title="churn replay <test> & co",
    )


class _Elements(HTMLParser):
    """Collects start tags with their attributes, and nesting of svg inside figures."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.figure: dict[str, str | None] | None = None
        self.svg_in: list[dict[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "figure":
            self.figure = a
        elif tag == "svg" and self.figure is not None:
            self.svg_in.append(self.figure)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.figure = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(text: str) -> _Elements:
    p = _Elements()
    p.feed(text)
    p.close()
    return p


def test_replay_input_has_what_the_report_must_show(run_output: dict[str, Any]) -> None:
    """The generated run has both window streams and firing, suppressed and resolved rows."""
    streams = {w["stream"] for w in run_output["windows"]}
    statuses = {d["status"] for d in run_output["decisions"]}
    assert streams == {"predictions", "labeled"}
    assert statuses == {"firing", "suppressed", "resolved"}


def test_every_detector_has_a_plot(run_output: dict[str, Any], report: Path) -> None:
    """Each detector of the window summaries gets a figure holding an inline SVG."""
    detectors = {n for w in run_output["windows"] for n in w["results"]}
    parsed = _parse(report.read_text(encoding="utf-8"))
    plotted = {f.get("data-detector") for f in parsed.svg_in if f.get("class") == "detector"}
    assert detectors == {"quality", "drift", "tiers", "errors"}
    assert plotted == detectors
    kinds = {f.get("class") for f in parsed.svg_in}
    assert {"timeline", "detector", "slices", "coverage"} <= kinds


def test_triggered_windows_are_counted_in_captions(
    run_output: dict[str, Any], report: Path
) -> None:
    """The caption of each detector says in how many of its windows it triggered."""
    text = " ".join(_parse(report.read_text(encoding="utf-8")).text)
    for name in ("quality", "drift"):
        rows = [w["results"][name] for w in run_output["windows"] if name in w["results"]]
        fired = sum(1 for r in rows if r["triggered"])
        assert fired > 0
        assert f"Triggered in {fired} of {len(rows)} windows." in text


def test_every_decision_has_a_row(run_output: dict[str, Any], report: Path) -> None:
    """The decisions table has one row per decision, with its rule, status and reasons."""
    text = report.read_text(encoding="utf-8")
    table = text[text.index('<table class="decisions">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)[1:]  # without the header row
    decisions = run_output["decisions"]
    assert len(rows) == len(decisions)
    for d in decisions:
        assert any(d["rule"] in r and f">{d['status']}<" in r for r in rows), d["rule"]
        for reason in d["reasons"]:
            assert _escaped(reason) in table


def _escaped(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_report_is_self_contained(report: Path) -> None:
    """No script, no external stylesheet, image or font: the file opens from disk."""
    text = report.read_text(encoding="utf-8")
    parsed = _parse(text)
    tags = {t for t, _ in parsed.tags}
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    for _, attrs in parsed.tags:
        for key in ("src", "href", "xlink:href"):
            value = attrs.get(key)
            assert value is None or value.startswith("#"), (key, value)
    assert "@import" not in text and "url(http" not in text


def test_svg_ids_are_unique_in_the_page(report: Path) -> None:
    """Many SVGs share one document: every id is unique and every reference resolves."""
    text = report.read_text(encoding="utf-8")
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))
    refs = re.findall(r"url\(#([^)]+)\)", text) + re.findall(r'href="#([^"]+)"', text)
    assert refs and set(refs) <= set(ids)


def test_same_input_gives_identical_bytes_across_processes(
    run_output: dict[str, Any], report: Path
) -> None:
    """A second build in a fresh interpreter (other hash seed) writes byte-identical HTML."""
    root = run_output["root"]
    out = root / "again.html"
    code = textwrap.dedent(
        f"""
        from driftwarden.daemon.report import build_report, load_jsonl
        build_report(load_jsonl({str(root / "windows.jsonl")!r}),
                     load_jsonl({str(root / "decisions.jsonl")!r}),
                     {str(out)!r}, title="churn replay <test> & co")
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    assert out.read_bytes() == report.read_bytes()


HOSTILE = '<script>alert("x")</script> & $x^2$'


def _hostile_input() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Window summaries and decisions whose strings would break unescaped HTML or mathtext."""
    windows = []
    for i in range(4):
        windows.append(
            {
                "model": HOSTILE,
                "stream": "labeled",
                "index": i,
                "start": f"2026-01-01T00:{i:02d}:00Z",
                "end": f"2026-01-01T00:{i:02d}:59Z",
                "count": 100,
                "model_version": "<v1>",
                "results": {
                    HOSTILE: {
                        "name": HOSTILE,
                        "kind": "slice_performance",
                        "triggered": i == 3,
                        "statistic": 0.02 * i,
                        "threshold": 0.05,
                        "p_value": 0.5,
                        "n": 100,
                        "evidence": {
                            "metric": "recall",
                            "slices": [
                                {
                                    "slice": {"tier": HOSTILE},
                                    "n": 100,
                                    "value": 0.8 - 0.05 * i,
                                    "baseline": 0.8,
                                    "drop": 0.05 * i,
                                    "status": "tested",
                                    "triggered": i == 3,
                                    "metric": "recall",
                                }
                            ],
                        },
                    }
                },
                "join": {"predictions": 100 * (i + 1), "matched": 40 * (i + 1)},
                "late": 0,
            }
        )
    decisions = [
        {
            "model": HOSTILE,
            "rule": HOSTILE,
            "severity": "<b>odd</b>",
            "status": "firing",
            "window_start": "2026-01-01T00:03:00Z",
            "window_end": "2026-01-01T00:03:59Z",
            "window_index": 3,
            "detectors": {HOSTILE: True},
            "actions": [{"type": "alert", "params": {"receiver": HOSTILE}, "key": "k"}],
            "evidence": {},
            "reasons": [HOSTILE],
            "fingerprint": "f",
            "key": "k",
        }
    ]
    return windows, decisions


def test_text_from_the_data_is_escaped() -> None:
    """Names, reasons and the title from the data never become markup (nor mathtext)."""
    windows, decisions = _hostile_input()
    text = render_report(windows, decisions, title=HOSTILE)
    assert "<script>" not in text and "<b>odd</b>" not in text
    assert "&lt;script&gt;" in text
    parsed = _parse(text)
    joined = "".join(parsed.text)
    assert HOSTILE in joined  # shown literally, in HTML text and in the SVG text
    assert joined.count("$x^2$") >= 3


def test_empty_input_renders_a_page_that_says_so() -> None:
    """No windows and no decisions still give a valid page telling the user so."""
    text = render_report([], [], title="nothing")
    assert "The input has no window summaries and no decisions." in text
    assert "<svg" not in text


def test_records_without_model_or_time_are_ignored_and_counted() -> None:
    """A record without a model or a parseable time is skipped and the header says so."""
    windows, decisions = _hostile_input()
    text = render_report([*windows, {"model": "x", "end": "not a time"}], [*decisions, {}])
    assert "2 input record(s) without a model or a valid time were ignored." in text


def test_load_jsonl_reads_objects_and_names_a_bad_line(tmp_path: Path) -> None:
    """Blank lines are skipped; a bad line raises a sentence naming file and line."""
    good = tmp_path / "w.jsonl"
    good.write_bytes(b'{"a": 1}\n\n{"b": 2}\n')
    assert load_jsonl(good) == [{"a": 1}, {"b": 2}]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected a JSON object"):
        load_jsonl(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON"):
        load_jsonl(broken)


def test_chromium_renders_a_readable_page(report: Path, tmp_path: Path) -> None:
    """Headless Chromium renders the report to a PNG that is tall, colourful and not blank."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(
            "chromium is not installed; this test renders the report with headless Chromium "
            "(Debian: apt-get install chromium)."
        )
    from PIL import Image

    png = tmp_path / "report.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}",
        "--window-size=1400,3000",
        report.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and png.exists(), proc.stderr[-2000:]
    with Image.open(png) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1400, 3000)
        colors = rgb.getcolors(maxcolors=1_000_000) or []
        # Plots in several colours, not a blank or an error page.
        assert len(colors) > 200
        white = sum(n for n, c in colors if c == (255, 255, 255))
        assert white < 0.97 * rgb.size[0] * rgb.size[1]
        # The severity red of the critical decision and triggered windows is on the page.
        reds = sum(
            n for n, c in colors if isinstance(c, tuple) and c[0] > 180 and c[1] < 80 and c[2] < 80
        )
        assert reds > 200
        # Content runs down the page: the lower half holds plots too.
        lower = rgb.crop((0, 1500, 1400, 3000)).getcolors(maxcolors=1_000_000) or []
        assert len(lower) > 100


def _prediction_windows(n: int) -> list[dict[str, Any]]:
    """Prediction windows of a ``ks`` drift detector and a cusum; version 2 from window 6."""
    out = []
    for i in range(n):
        p = 10.0 ** -(i * 3) if i >= 7 else 0.5
        out.append(
            {
                "model": "fraud",
                "stream": "predictions",
                "index": i,
                "start": f"2026-02-01T{i:02d}:00:00Z",
                "end": f"2026-02-01T{i:02d}:59:59Z",
                "count": 1000,
                "model_version": "2" if i >= 6 else "1",
                "results": {
                    "amounts": {
                        "name": "amounts",
                        "kind": "feature_drift",
                        "triggered": p < 0.05,
                        "statistic": 0.01 * i,
                        "threshold": 0.05,
                        "p_value": p,
                        "n": 1000,
                        "evidence": {"method": "ks", "top": [{"feature": "amount"}]},
                    },
                    "scores": {
                        "name": "scores",
                        "kind": "cusum",
                        "triggered": i == 9,
                        "statistic": float(i),
                        "threshold": 8.0,
                        "p_value": None,
                        "n": 1000,
                        "evidence": {},
                    },
                },
                "join": {"predictions": 1000 * (i + 1), "matched": 300 * i},
                "late": 0,
            }
        )
    return out


def test_test_based_drift_is_drawn_as_evidence_strength() -> None:
    """A ks/chi2 detector is drawn as -log10 p against -log10 of its level, not the effect."""
    text = render_report(_prediction_windows(10), [])
    fig = text[text.index('data-detector="amounts"') :]
    fig = fig[: fig.index("</figure>")]
    assert "−log10 adjusted p" in fig
    assert "Triggered in 3 of 10 windows." in fig


def test_model_version_switch_is_marked_on_the_plots() -> None:
    """When the prediction windows change model version, every time plot marks the switch."""
    text = render_report(_prediction_windows(10), [])
    figures = re.findall(r"<figure.*?</figure>", text, flags=re.S)
    assert len(figures) == 3  # two detectors and the label coverage
    assert all(" version 2" in f for f in figures)
    same = render_report([w for w in _prediction_windows(10) if w["model_version"] == "1"], [])
    assert not any(" version " in f for f in re.findall(r"<figure.*?</figure>", same, re.S))
