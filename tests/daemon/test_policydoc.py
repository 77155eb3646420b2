"""The checked-in policy reference is generated from the schema and the detectors: keep it current."""

from __future__ import annotations

from pathlib import Path

from driftwarden.daemon.policydoc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "POLICY_REFERENCE.md"


def test_policy_reference_is_current() -> None:
    """docs/POLICY_REFERENCE.md equals a fresh rendering (regenerate with the module)."""
    assert DOC.read_text() == render(), (
        "docs/POLICY_REFERENCE.md is stale: run "
        "`python -m driftwarden.daemon.policydoc > docs/POLICY_REFERENCE.md`"
    )


def test_every_detector_type_is_documented() -> None:
    """Each registered detector type has a section with its parameters."""
    from driftwarden.detectors.base import registry

    text = render()
    for kind in registry():
        assert f"### `{kind}`" in text
