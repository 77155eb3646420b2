"""The snapshot artifact's file (read back as the table it was written from) and the dataset
source its run input names, for each kind of artifact URI a run can have."""

from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftwarden.retrain.pipeline import (
    _arrow_table,
    _dataset_schema,
    _dataset_source,
    _write_parquet,
)


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


def _mlflow_schema(frame: pd.DataFrame) -> Any:
    from mlflow.data.pandas_dataset import from_pandas

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        schema = from_pandas(frame, source="/nowhere/snapshot.parquet").to_dict()["schema"]
    return None if schema is None else json.loads(schema)


def test_dataset_schema_is_the_one_mlflow_infers() -> None:
    """The run input's schema, typed from the Arrow table, is the one MLflow's pandas dataset
    infers value by value: every column type, nulls (NaN, None, NA) making a column optional,
    the columns MLflow still types itself (all null, categorical)."""
    n = 6
    frame = pd.DataFrame(
        {
            "i64": np.arange(n, dtype="int64"),
            "i32": np.arange(n, dtype="int32"),
            "u8": np.arange(n, dtype="uint8"),
            "x": [0.1, np.nan, 0.3, 0.4, 0.5, 0.6],
            "f32": np.ones(n, dtype="float32"),
            "plan": ["a", None, "c", "d", "e", "f"],
            "region": list("abcdef"),
            "flag": [True, False, True, True, False, True],
            "maybe": [True, None, False, True, True, False],
            "ints_as_objects": pd.Series(range(n), dtype=object),
            "t": pd.date_range("2026-01-01", periods=n),
            "t_utc": pd.date_range("2026-01-01", periods=n, tz="UTC"),
            "nullable_int": pd.array([1, None, 3, 4, 5, 6], dtype="Int64"),
            "nothing": [None] * n,
            "tier": pd.Categorical(list("aabbcc")),
            "prediction_id": [f"p{i}" for i in range(n)],
            "day": [datetime.date(2026, 1, 1 + i) for i in range(n)],
            "raw": [bytes([i]) for i in range(n)],
        }
    )
    ours = json.loads(_dataset_schema(_arrow_table(frame), frame))
    assert ours == _mlflow_schema(frame)
    assert [c["name"] for c in ours["mlflow_colspec"]] == list(frame.columns)
    # The types Arrow gave over every row: a null beyond MLflow's sample still counts.
    big = pd.DataFrame({"x": np.r_[np.ones(5000), np.nan], "s": ["a"] * 5000 + [None]})
    assert [
        c["required"] for c in json.loads(_dataset_schema(_arrow_table(big), big))["mlflow_colspec"]
    ] == [False, False]


def test_dataset_schema_types_a_mixed_column_as_the_strings_the_file_holds() -> None:
    """MLflow gives up on the whole schema for an object column of mixed values; the file holds
    that column as strings, and so does the schema, the other columns typed as usual."""
    frame = pd.DataFrame({"mixed": pd.Series([1, "a", 2.5], dtype=object), "n": [1, 2, 3]})
    assert _mlflow_schema(frame) is None
    assert json.loads(_dataset_schema(_arrow_table(frame), frame)) == {
        "mlflow_colspec": [
            {"type": "string", "name": "mixed", "required": True},
            {"type": "long", "name": "n", "required": True},
        ]
    }


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
