"""RetrainRequest from a policy decision, and reference data lookup (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from driftwarden.retrain.pipeline import RetrainRequest, load_reference_data

DECISION = {
    "model": "churn",
    "rule": "drifted",
    "key": "churn/drifted/w12",
    "actions": [],
}
ACTION: dict[str, Any] = {
    "type": "retrain",
    "key": "churn/drifted/w12/retrain",
    "params": {
        "trainer": "examples.churn:train",
        "gates": {"min": {"roc_auc": 0.8}},
        "promote": "auto",
        "data": {"reference": "ref.csv", "recent": 500},
    },
}


def test_from_decision_takes_the_action_key_and_params() -> None:
    """The action's key is the idempotency key; trainer, gates, promote and data come along."""
    req = RetrainRequest.from_decision(DECISION, ACTION, target="churned", features=["a", "b"])
    assert (req.model, req.action_key, req.promote) == ("churn", ACTION["key"], "auto")
    assert req.trainer == "examples.churn:train" and req.gates == {"min": {"roc_auc": 0.8}}
    assert req.trigger["key"] == "churn/drifted/w12" and req.data["recent"] == 500


def test_from_decision_refuses_other_actions_and_promote_modes() -> None:
    """An alert action or an unknown promote mode is refused with a sentence naming it."""
    with pytest.raises(ValueError, match="not retrain"):
        RetrainRequest.from_decision(DECISION, {**ACTION, "type": "alert"}, target="y", features=[])
    bad = {**ACTION, "params": {**ACTION["params"], "promote": "yolo"}}
    with pytest.raises(ValueError, match="yolo"):
        RetrainRequest.from_decision(DECISION, bad, target="y", features=[])


def test_reference_data_is_found_on_the_search_paths(tmp_path: Path) -> None:
    """data.reference relative paths are looked up in search_paths; champion means None."""
    pd.DataFrame({"a": [1, 2], "churned": [0, 1]}).to_csv(tmp_path / "ref.csv", index=False)
    req = RetrainRequest.from_decision(
        DECISION, ACTION, target="churned", features=["a"], search_paths=[str(tmp_path)]
    )
    frame = load_reference_data(req)
    assert frame is not None and frame["churned"].tolist() == [0, 1]
    champ = RetrainRequest.from_decision(
        DECISION,
        {**ACTION, "params": {**ACTION["params"], "data": {"reference": "champion"}}},
        target="churned",
        features=["a"],
    )
    assert load_reference_data(champ) is None
    missing = RetrainRequest.from_decision(DECISION, ACTION, target="churned", features=["a"])
    with pytest.raises(FileNotFoundError, match="ref.csv"):
        load_reference_data(missing)
