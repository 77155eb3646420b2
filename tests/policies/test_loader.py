"""Tests of the strict policy loader: one data file per invalid case, sets, references, env."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from driftwarden.detectors.base import registry
from driftwarden.policies.loader import (
    load_policies,
    load_policy_file,
    parse_duration,
    validate_paths,
)
from driftwarden.policies.model import PolicyError, ReceiverSpec, expand_env
from driftwarden.policies.schema import policy_schema

from .detector_types import detector_types, stand_in

HERE = Path(__file__).parent
INVALID = sorted((HERE / "data" / "invalid").glob("*.yaml"))
CONFIG = HERE.parent.parent / "config" / "policies"
SCHEMA = HERE.parent.parent / "policies" / "schema.json"

VALID = """apiVersion: driftwarden/v1
kind: Policy
model: {model}
reference: {reference}
window: {{events: 1000}}
detectors:
  - {{name: quality, type: data_quality, max_null_rate_increase: 0.05}}
  - {{name: drift, type: feature_drift, method: psi, threshold: 0.2}}
rules:
  - name: drifted
    when: drift and not quality
    actions: [{{alert: team}}]
receivers:
  team: {{type: webhook, url: "https://${{HOOK_USER}}:${{HOOK_PASSWORD}}@hooks.example.com/x"}}
"""


def write(tmp: Path, name: str, model: str = "churn", reference: str = "file:p.json") -> Path:
    """Write a valid policy file for ``model``."""
    p = tmp / name
    p.write_text(VALID.format(model=model, reference=reference))
    return p


def expected(path: Path) -> list[str]:
    """The ``# expect: LINE: path: message`` headers of a data file, as full error lines."""
    return [
        f"{path}:{line[len('# expect: ') :]}"
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


def test_there_are_invalid_cases() -> None:
    """The data folder holds the invalid cases (a glob that finds nothing would test nothing)."""
    assert len(INVALID) >= 20


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_policy_reports_exact_errors(path: Path) -> None:
    """Each invalid file gives exactly the errors (line, key path, message) its header lists."""
    want = expected(path)
    assert want, f"{path} has no '# expect:' header"
    with pytest.raises(PolicyError) as info:
        load_policy_file(path, detector_types())
    assert info.value.errors == want


def test_all_errors_of_a_file_are_reported_at_once() -> None:
    """A file with five mistakes in different sections gets five errors in one PolicyError."""
    with pytest.raises(PolicyError) as info:
        load_policy_file(HERE / "data" / "invalid" / "many_errors.yaml", detector_types())
    assert len(info.value.errors) == 5
    assert str(info.value).count("\n") == 4


def test_example_policies_load() -> None:
    """The shipped example policies are valid."""
    assert validate_paths(CONFIG, detector_types()) == []
    churn = load_policy_file(CONFIG / "churn.yaml", detector_types())
    assert [r.name for r in churn.rules] == ["broken-input", "drifted", "concept-change"]
    drifted = churn.rules[1]
    assert (drifted.for_windows, drifted.cooldown_s, drifted.recover_after) == (2, 21600.0, 1)
    assert churn.rules[0].recover_after == 3  # it falls back
    assert churn.window.events == 5000 and churn.window.labeled_events == 2000
    assert churn.receivers["ml-team"] == ReceiverSpec(
        "ml-team", "webhook", {"url": "${ML_TEAM_WEBHOOK}"}
    )


def test_example_policies_match_the_json_schema() -> None:
    """schema.json (for editors) accepts the example policies and rejects an unknown key."""
    schema = policy_schema()
    assert schema == json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for p in sorted(CONFIG.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(p.read_text()), schema)
    bad = yaml.safe_load((CONFIG / "churn.yaml").read_text())
    bad["modle"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_real_detector_schemas_check_params(tmp_path: Path) -> None:
    """With the real registry, a parameter outside a real detector's schema is refused."""
    reg = registry()
    if "feature_drift" not in reg:
        pytest.fail("the feature_drift detector is not registered")
    p = write(tmp_path, "p.yaml")
    p.write_text(p.read_text().replace("threshold: 0.2", "threshold: 0.2, bogus: 1"))
    with pytest.raises(PolicyError, match=r"detectors\[1\]\.bogus: unknown key 'bogus'"):
        load_policy_file(p, reg)


def test_file_reference_is_resolved_relative_to_the_policy(tmp_path: Path) -> None:
    """``file:`` references are relative to the policy file; the profile need not exist."""
    (tmp_path / "sub").mkdir()
    p = write(tmp_path / "sub", "p.yaml", reference="file:../profiles/churn.json")
    policy = load_policy_file(p, detector_types())
    assert policy.reference == f"file:{(tmp_path / 'profiles' / 'churn.json').resolve()}"
    assert policy.reference_path == (tmp_path / "profiles" / "churn.json").resolve()


def test_models_reference_with_model_placeholder(tmp_path: Path) -> None:
    """A glob policy's ``models:/{model}@champion`` names each model's own champion."""
    p = write(tmp_path, "p.yaml", model='"ranking-*"', reference='"models:/{model}@champion"')
    policy = load_policy_file(p, detector_types())
    assert policy.is_glob and policy.matches("ranking-feed") and not policy.matches("churn")
    assert policy.reference_for("ranking-feed") == "models:/ranking-feed@champion"


def test_policy_set_exact_name_beats_glob(tmp_path: Path) -> None:
    """``for_model`` prefers the exact policy; other models fall to the glob; none → None."""
    write(tmp_path, "a.yaml", model='"churn*"')
    write(tmp_path, "b.yaml", model="churn")
    policies, errors = load_policies(tmp_path, detector_types())
    assert errors == []
    assert policies.for_model("churn").model == "churn"
    assert policies.for_model("churn-eu").model == "churn*"
    assert policies.for_model("fraud") is None


def test_ambiguous_policies_are_load_errors(tmp_path: Path) -> None:
    """Two policies for one exact name, or overlapping globs, are refused with both files named."""
    a = write(tmp_path, "a.yaml", model='"*"')
    b = write(tmp_path, "b.yaml", model='"churn-*"')
    c = write(tmp_path, "c.yaml", model="fraud")
    d = write(tmp_path, "d.yaml", model="fraud")
    policies, errors = load_policies([a, b, c, d], detector_types())
    assert [p.source for p in policies.policies] == [str(a), str(c)]
    assert errors == [
        f"{b}:1: model: 'churn-*' and '*' in {a} are overlapping model globs; which policy "
        "applies would be ambiguous.",
        f"{d}:1: model: 'fraud' and 'fraud' in {c} are the same model; which policy applies "
        "would be ambiguous.",
    ]


def test_validate_paths_collects_every_file(tmp_path: Path) -> None:
    """A directory means its YAML files; errors of every file come back; missing paths too."""
    write(tmp_path, "good.yaml")
    (tmp_path / "bad.yml").write_text("apiVersion: driftwarden/v1\n")
    (tmp_path / "notes.txt").write_text("not a policy")
    errors = validate_paths([tmp_path, tmp_path / "nope.yaml"], detector_types())
    assert any(
        e.startswith(f"{tmp_path / 'bad.yml'}:1: missing required key 'kind'") for e in errors
    )
    assert f"{tmp_path / 'nope.yaml'}:1: no such file or directory." in errors
    assert not any("notes.txt" in e or "good.yaml" in e for e in errors)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    """An empty policy file is refused, not loaded as nothing."""
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing\n")
    with pytest.raises(PolicyError, match="the file is empty"):
        load_policy_file(p, detector_types())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        (90, 90.0),
        (1.5, 1.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    """Durations take s/m/h/d units, combinations, or a number of seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["6 hours", "1w", "-5", -5, True, "h", ""])
def test_bad_durations(text: object) -> None:
    """Anything else is refused."""
    with pytest.raises(ValueError):
        parse_duration(text)


def test_receiver_env_expansion() -> None:
    """``${VAR}`` is expanded from the given environment; ``$$`` stays a literal dollar."""
    spec = ReceiverSpec("team", "webhook", {"url": "https://${HOST}/x?p=$$1", "headers": {}})
    assert spec.expand({"HOST": "hooks.example.com"}).params["url"] == (
        "https://hooks.example.com/x?p=$1"
    )
    with pytest.raises(
        PolicyError, match=r"receiver 'team': environment variable\(s\) not set: HOST"
    ):
        spec.expand({})
    assert expand_env(["${A}", {"b": "${B}"}], {"A": "1", "B": "2"}) == ["1", {"b": "2"}]


def test_build_detectors_instantiates_each_with_its_params(tmp_path: Path) -> None:
    """``build_detectors`` builds one detector per entry with the profile and the params."""
    types = {k: stand_in(k) for k in ("data_quality", "feature_drift")}
    policy = load_policy_file(write(tmp_path, "p.yaml"), detector_types())
    built = policy.build_detectors(profile=None, detector_types=types)
    assert sorted(built) == ["drift", "quality"]
    assert built["drift"].kind == "feature_drift" and built["drift"].name == "drift"
    assert built["drift"].params == {"method": "psi", "threshold": 0.2}


BUILT_IN = (
    "data_quality",
    "feature_drift",
    "prediction_drift",
    "concept_drift",
    "slice_performance",
)


def test_example_policies_validate_against_the_real_detectors() -> None:
    """With the real registry alone (no stand-ins) the examples' detector params are accepted."""
    missing = [k for k in BUILT_IN if k not in registry()]
    assert missing == [], f"built-in detector types not registered: {missing}"
    assert validate_paths(CONFIG) == []


def test_build_detectors_with_the_real_detectors_and_a_profile() -> None:
    """The churn example's detectors are built by the real classes from a real profile."""
    import numpy as np
    import pandas as pd

    from driftwarden.detectors.profile import build_profile

    rng = np.random.default_rng(3)
    n = 600
    score = rng.random(n)
    df = pd.DataFrame(
        {
            "days_since_last_login": rng.integers(0, 60, n),
            "plan": rng.choice(["free", "pro"], n),
            "user_age": rng.normal(40, 10, n),
            "customer_tier": rng.choice(["enterprise", "smb"], n),
            "score": score,
            "prediction": (score > 0.5).astype(int),
            "label": (rng.random(n) < score).astype(int),
        }
    )
    profile = build_profile(
        df,
        "churn",
        target="label",
        prediction="prediction",
        score="score",
        segments=["customer_tier"],
    )
    built = load_policy_file(CONFIG / "churn.yaml").build_detectors(profile)
    assert {k: d.kind for k, d in built.items()} == {
        "quality": "data_quality",
        "drift": "feature_drift",
        "scores": "prediction_drift",
        "enterprise_recall": "slice_performance",
        "errors": "concept_drift",
    }
