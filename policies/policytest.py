"""``driftwarden test FILE``: policy unit tests in the style of ``promtool test rules``.

A test file names a policy file (relative to the test file) and test cases. Each case is a
sequence of windows of detector results and the decisions expected out of them::

    policy: ../policies/churn.yaml
    model: churn                  # optional when the policy names one exact model
    window: 1h                    # length of each synthetic window (default 1h)
    start: "2026-11-26T00:00:00Z" # start of window 0 (default shown)
    tests:
      - name: drift fires after two windows and retrains
        windows:                  # window i; unlisted detectors did not trigger
          - {drift: true}
          - {drift: {triggered: true, statistic: 0.31}}
          - repeat: 2             # the same results for 2 windows
            results: {}
        silences:                 # optional: [from, to) in window indexes
          - {rule: drifted, from: 0, to: 1, comment: planned}
        expect:                   # every decision, in any order; fields left out match anything
          - {window: 1, rule: drifted, status: firing, actions: [alert, retrain]}
          - {window: 2, rule: drifted, status: resolved, actions: [resolve],
             reasons: [clear for 1]}   # substrings of the decision's reasons

A detector result is ``true``/``false`` or a mapping with ``triggered`` and optionally
``statistic``, ``p_value``, ``threshold``, ``n`` and ``evidence``. Every decision produced must
be expected and every expected decision produced; a failure shows expected vs got.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from driftwarden.detectors.base import DetectorResult

from .evaluator import PolicyState, evaluate
from .loader import load_policy_file, parse_duration, read_yaml_file
from .model import Decision, Policy, PolicyError, WindowInfo, parse_iso
from .silences import Silence, SilenceSet

__all__ = ["PolicyTestReport", "run_policy_tests"]

_FILE_KEYS = {"policy", "model", "window", "start", "tests"}
_CASE_KEYS = {"name", "windows", "silences", "expect"}
_EXPECT_KEYS = {"window", "rule", "status", "actions", "severity", "reasons"}
_RESULT_KEYS = {"triggered", "statistic", "p_value", "threshold", "n", "evidence"}
_DEFAULT_START = "2026-11-26T00:00:00Z"


@dataclass(frozen=True)
class PolicyTestReport:
    """Outcome of one test file: ``ok`` and a readable ``text`` (failures show expected vs got)."""

    ok: bool
    text: str
    passed: int = 0
    failed: int = 0


def _fail(where: str, msg: str) -> PolicyError:
    return PolicyError(f"{where}: {msg}")


def _check_keys(d: Any, allowed: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise _fail(where, "must be a mapping.")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise _fail(
            where,
            f"unknown key(s) {', '.join(map(repr, unknown))} (allowed: "
            f"{', '.join(sorted(allowed))}).",
        )
    return d


def _result(name: str, kind: str, v: Any, where: str) -> DetectorResult:
    if isinstance(v, bool):
        return DetectorResult(name, kind, v)
    d = _check_keys(v, _RESULT_KEYS, where)
    return DetectorResult(
        name,
        kind,
        bool(d.get("triggered", False)),
        statistic=d.get("statistic"),
        threshold=d.get("threshold"),
        p_value=d.get("p_value"),
        n=int(d.get("n", 0)),
        evidence=dict(d.get("evidence") or {}),
    )


def _windows(policy: Policy, raw: Any, where: str) -> list[dict[str, DetectorResult]]:
    if not isinstance(raw, list) or not raw:
        raise _fail(where, "must be a non-empty list of windows.")
    kinds = policy.detector_kinds()
    out: list[dict[str, DetectorResult]] = []
    for i, w in enumerate(raw):
        wh = f"{where}[{i}]"
        repeat = 1
        if isinstance(w, Mapping) and "repeat" in w:
            w = _check_keys(w, {"repeat", "results"}, wh)
            repeat = w["repeat"]
            if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
                raise _fail(f"{wh}.repeat", f"must be an integer >= 1, not {repeat!r}.")
            w = w.get("results") or {}
        if w is None:
            w = {}
        if not isinstance(w, Mapping):
            raise _fail(wh, "must map detector names to results.")
        for n in w:
            if n not in kinds:
                raise _fail(wh, f"unknown detector {n!r} (defined: {', '.join(sorted(kinds))}).")
        results = {
            n: _result(n, kinds[n], w[n], f"{wh}.{n}")
            if n in w
            else DetectorResult(n, kinds[n], False)
            for n in kinds
        }
        out.extend(dict(results) for _ in range(repeat))
    return out


def _summary(d: Decision) -> dict[str, Any]:
    return {
        "window": d.window_index,
        "rule": d.rule,
        "status": d.status,
        "severity": d.severity,
        "actions": [a.type for a in d.actions],
        "reasons": list(d.reasons),
    }


def _matches(exp: Mapping[str, Any], got: Mapping[str, Any]) -> bool:
    for k, v in exp.items():
        if k == "actions":
            if sorted(map(str, v or [])) != sorted(got["actions"]):
                return False
        elif k == "reasons":
            if not all(any(str(s) in r for r in got["reasons"]) for s in v or []):
                return False
        elif got[k] != v:
            return False
    return True


def _show(d: Mapping[str, Any]) -> str:
    parts = [f"{k}: {d[k]}" for k in ("window", "rule", "status", "severity", "actions") if k in d]
    if d.get("reasons"):
        parts.append(f"reasons: {list(d['reasons'])}")
    return "{" + ", ".join(parts) + "}"


def _run_case(
    policy: Policy, model: str, case: Mapping[str, Any], where: str, start: float, length: float
) -> list[str]:
    windows = _windows(policy, case.get("windows"), f"{where}.windows")
    silences = []
    for j, s in enumerate(case.get("silences") or []):
        sw = f"{where}.silences[{j}]"
        s = _check_keys(s, {"model", "rule", "from", "to", "comment", "created_by"}, sw)
        lo, hi = int(s.get("from", 0)), int(s.get("to", len(windows)))
        # Active for windows lo .. hi-1: decisions are taken at each window's end.
        silences.append(
            Silence(
                f"test-{j}",
                str(s.get("model", "*")),
                str(s.get("rule", "*")),
                start + (lo + 1) * length,
                start + (hi + 1) * length,
                str(s.get("created_by", "policytest")),
                str(s.get("comment", "")),
            )
        )
    muter = SilenceSet(tuple(silences))
    expected = case.get("expect") or []
    if not isinstance(expected, list):
        raise _fail(f"{where}.expect", "must be a list of expected decisions.")
    for j, e in enumerate(expected):
        _check_keys(e, _EXPECT_KEYS, f"{where}.expect[{j}]")

    state = PolicyState()
    got: list[dict[str, Any]] = []
    for i, results in enumerate(windows):
        info = WindowInfo.from_epoch(i, start + i * length, start + (i + 1) * length)
        decisions, state = evaluate(policy, model, info, results, state, info.end_ts, muter)
        got.extend(_summary(d) for d in decisions)

    unmatched = list(range(len(got)))
    missing = []
    for e in expected:
        hit = next((g for g in unmatched if _matches(e, got[g])), None)
        if hit is None:
            missing.append(e)
        else:
            unmatched.remove(hit)
    if not missing and not unmatched:
        return []
    lines = []
    for e in missing:
        lines.append(f"    expected, not produced: {_show(e)}")
    for g in unmatched:
        lines.append(f"    produced, not expected: {_show(got[g])}")
    lines.append("    all decisions produced:")
    lines.extend(f"      {_show(g)}" for g in got)
    if not got:
        lines.append("      (none)")
    return lines


def run_policy_tests(
    path: str | Path, detector_types: Mapping[str, Any] | None = None
) -> PolicyTestReport:
    """Run a policy test file; a broken test file or policy is reported as a failure."""
    p = Path(path)
    try:
        # Not yaml.safe_load: it keeps the last of two equal keys, so a second `tests:` block
        # would silently drop the first one's cases. Duplicates are errors at file:line.
        raw = read_yaml_file(p)
        spec = _check_keys(raw, _FILE_KEYS, str(p))
        if "policy" not in spec or "tests" not in spec:
            raise _fail(str(p), "needs 'policy' (a policy file) and 'tests'.")
        policy = load_policy_file(p.parent / str(spec["policy"]), detector_types)
        model = spec.get("model") or policy.model
        if not policy.matches(str(model)) or policy.is_glob and "model" not in spec:
            raise _fail(f"{p}: model", f"name a model the policy's {policy.model!r} matches.")
        start = parse_iso(str(spec.get("start", _DEFAULT_START)))
        length = parse_duration(spec.get("window", "1h"))
        if length <= 0:
            raise _fail(f"{p}: window", "must be a positive duration.")
        cases = spec["tests"]
        if not isinstance(cases, list) or not cases:
            raise _fail(f"{p}: tests", "must be a non-empty list of test cases.")
    except (OSError, yaml.YAMLError, ValueError) as e:
        return PolicyTestReport(
            False, f"{p}: FAILED to load:\n  " + str(e).replace("\n", "\n  "), 0, 1
        )

    out = [f"{p}: policy {policy.source}, model {model}"]
    passed = failed = 0
    for i, case in enumerate(cases):
        where = f"tests[{i}]"
        name = str(case.get("name", where)) if isinstance(case, Mapping) else where
        try:
            _check_keys(case, _CASE_KEYS, where)
            problems = _run_case(policy, str(model), case, where, start, length)
        except (ValueError, TypeError, KeyError) as e:
            problems = [f"    the test case is invalid: {e}"]
        if problems:
            failed += 1
            out.append(f"  FAIL {name}")
            out.extend(problems)
        else:
            passed += 1
            out.append(f"  ok   {name}")
    out.append(f"{passed} passed, {failed} failed")
    return PolicyTestReport(failed == 0, "\n".join(out), passed, failed)
