"""The snapshot artifact's file (read back as the table it was written from) and the dataset
source its run input names, for each kind of artifact URI a run can have."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftwarden.retrain.pipeline import _arrow_table, _dataset_source, _write_parquet


def test_snapshot_file_reads_back_as_the_table(tmp_path: Path) -> None:
    """Numbers, strings with gaps, booleans and categories come back as they were (a fresh
    RangeIndex); an object column of mixed types comes back as its values' strings."""
    snapshot = pd.DataFrame(
        {
            "x": [0.5, np.nan, 2.0, -1.0],
            "n": np.arange(4, dtype="int64"),
            "plan": ["basic", None, "pro", np.nan],
            "flag": [True, False, True, True],
            "tier": pd.Categorical(["a", "b", "a", None]),
            "mixed": ["a", 1, 2.5, None],
            "_part": ["reference", "reference", "recent", "recent"],
        },
        index=[10, 11, 12, 13],
    )
    path = tmp_path / "snapshot.parquet"
    _write_parquet(_arrow_table(snapshot), path)
    back = pd.read_parquet(path)
    expected = snapshot.reset_index(drop=True).assign(
        plan=["basic", None, "pro", None], mixed=["a", "1", "2.5", None]
    )
    pd.testing.assert_frame_equal(back.drop(columns="mixed"), expected.drop(columns="mixed"))
    assert back["mixed"].tolist() == ["a", "1", "2.5", None]


@pytest.mark.parametrize(
    ("uri", "kind", "source"),
    [
        (
            "/srv/mlruns/1/r/artifacts/s.parquet",
            "local",
            {"uri": "/srv/mlruns/1/r/artifacts/s.parquet"},
        ),
        ("file:///srv/mlruns/s.parquet", "local", {"uri": "file:///srv/mlruns/s.parquet"}),
        (
            "mlflow-artifacts:/1/r/artifacts/driftwarden/s.parquet",
            "http",
            {
                "url": "http://mlflow.local:5000/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/driftwarden/s.parquet"
            },
        ),
        (
            "s3://bucket/1/r/artifacts/s.parquet",
            "s3",
            {"uri": "s3://bucket/1/r/artifacts/s.parquet"},
        ),
        (
            "dbfs:/databricks/mlflow/s.parquet",
            "artifact",
            {"uri": "dbfs:/databricks/mlflow/s.parquet"},
        ),
    ],
)
def test_dataset_source_for_each_artifact_uri(uri: str, kind: str, source: dict[str, str]) -> None:
    """Local paths and object stores as MLflow records them; the server's proxied
    ``mlflow-artifacts:`` URIs as the URL it serves them from; anything else as it is."""
    got_kind, got_source = _dataset_source(uri, "http://mlflow.local:5000")
    assert (got_kind, json.loads(got_source)) == (kind, source)
