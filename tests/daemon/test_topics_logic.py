"""The topic check's verdicts from metadata answers (no broker: what the real one answers is in
``test_topics.py``; an authorization refusal needs a cluster with ACLs, so it is checked here)."""

from __future__ import annotations

from typing import Any

from driftwarden.daemon.topics import _partition_counts, _problems

TOPICS = {
    "predictions": "preds",
    "labels": "labels",
    "decisions": "dw.decisions",
    "alerts": "dw.alerts",
}


class _Metadata:
    """An admin client whose ``describe_topics`` gives fixed answers."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers

    def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"name": n, **self.answers[n]} for n in names]


def _partitions(n: int) -> dict[str, Any]:
    return {"error_code": 0, "partitions": [{"partition_index": i} for i in range(n)]}


def test_a_topic_the_principal_may_not_describe_is_not_called_missing() -> None:
    admin = _Metadata(
        {
            "preds": _partitions(3),
            "labels": {"error_code": 29, "partitions": []},  # TOPIC_AUTHORIZATION_FAILED
            "dw.decisions": {"error_code": 3, "partitions": []},  # UNKNOWN_TOPIC_OR_PARTITION
            "dw.alerts": {"error_code": 29, "partitions": []},
        }
    )
    counts, refused = _partition_counts(admin, TOPICS)
    assert counts == {"preds": 3}
    assert refused == {
        "labels": "TopicAuthorizationFailedError",
        "dw.alerts": "TopicAuthorizationFailedError",
    }
    problems = _problems(TOPICS, counts, refused, "on b:9092")
    assert problems == [
        "input topic 'labels' (kafka.topics.labels) cannot be described on b:9092: "
        "TopicAuthorizationFailedError (the daemon's principal needs Describe and Read on it).",
        "output topic 'dw.alerts' (kafka.topics.alerts) cannot be described on b:9092: "
        "TopicAuthorizationFailedError (the daemon's principal needs Describe and Write on it).",
    ]


def test_every_input_problem_at_once() -> None:
    counts, refused = _partition_counts(
        _Metadata(
            {
                "preds": {"error_code": 3, "partitions": []},
                "labels": {"error_code": 3, "partitions": []},
                "dw.decisions": _partitions(1),
                "dw.alerts": _partitions(1),
            }
        ),
        TOPICS,
    )
    problems = _problems(TOPICS, counts, refused, "on b:9092")
    assert [p.split(" (")[0] for p in problems] == ["input topic 'preds'", "input topic 'labels'"]
    assert all("does not exist on b:9092" in p for p in problems)
