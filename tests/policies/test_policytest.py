"""Tests of the ``driftwarden test`` runner on the shipped examples and on failing tests."""

from __future__ import annotations

from pathlib import Path

from driftwarden.policies.policytest import run_policy_tests

from .detector_types import detector_types

ROOT = Path(__file__).parent.parent.parent
EXAMPLES = sorted((ROOT / "config" / "policy-tests").glob("*.yaml"))


def test_example_policy_tests_pass() -> None:
    """Every example policy test file passes, and it really ran its cases."""
    assert len(EXAMPLES) >= 2
    for path in EXAMPLES:
        report = run_policy_tests(path, detector_types())
        assert report.ok, report.text
        assert report.passed >= 2 and report.failed == 0


def test_failing_case_reports_expected_vs_got(tmp_path: Path) -> None:
    """A wrong expectation fails and shows what was expected, what was produced instead."""
    t = tmp_path / "t.yaml"
    t.write_text(
        f"policy: {ROOT / 'config' / 'policies' / 'churn.yaml'}\n"
        "tests:\n"
        "  - name: wrong on purpose\n"
        "    windows: [{drift: true}, {drift: true}]\n"
        "    expect:\n"
        "      - {window: 1, rule: drifted, status: firing, actions: [alert]}\n"
        "  - name: right\n"
        "    windows: [{}]\n"
        "    expect: []\n"
    )
    report = run_policy_tests(t, detector_types())
    assert not report.ok and (report.passed, report.failed) == (1, 1)
    assert "  FAIL wrong on purpose" in report.text and "  ok   right" in report.text
    assert (
        "expected, not produced: {window: 1, rule: drifted, status: firing, actions: ['alert']}"
        in report.text
    )
    assert (
        "produced, not expected: {window: 1, rule: drifted, status: firing, severity: warning, "
        "actions: ['alert', 'retrain']}" in report.text
    )


def test_unexpected_decision_fails(tmp_path: Path) -> None:
    """A decision nobody expected fails the case (every decision must be expected)."""
    t = tmp_path / "t.yaml"
    t.write_text(
        f"policy: {ROOT / 'config' / 'policies' / 'churn.yaml'}\n"
        "tests:\n"
        "  - name: quiet\n"
        "    windows: [{quality: true}]\n"
    )
    report = run_policy_tests(t, detector_types())
    assert not report.ok
    assert "produced, not expected: {window: 0, rule: broken-input, status: firing" in report.text


def test_broken_test_file_is_a_failure(tmp_path: Path) -> None:
    """An unknown detector in a window, or a bad policy path, fails with a plain message."""
    t = tmp_path / "t.yaml"
    t.write_text(
        f"policy: {ROOT / 'config' / 'policies' / 'churn.yaml'}\n"
        "tests:\n"
        "  - name: typo\n"
        "    windows: [{drfit: true}]\n"
    )
    report = run_policy_tests(t, detector_types())
    assert not report.ok and "unknown detector 'drfit'" in report.text
    t.write_text("policy: missing.yaml\ntests: []\n")
    report = run_policy_tests(t, detector_types())
    assert not report.ok and "FAILED to load" in report.text


def test_example_policy_tests_pass_with_the_real_registry() -> None:
    """The runner's default detector types are the real registry; the examples pass with it."""
    for path in EXAMPLES:
        report = run_policy_tests(path)
        assert report.ok, report.text
