"""Prometheus metrics (one registry per daemon, so tests can run several daemons in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    """Every metric the daemon exports on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "driftwarden_events_total",
            "Events consumed, by topic role and result.",
            ["role", "result"],
            registry=r,
        )
        self.invalid = Counter(
            "driftwarden_invalid_events_total",
            "Malformed events sent to the dead-letter topic, by reason class.",
            ["reason"],
            registry=r,
        )
        self.lag = Gauge(
            "driftwarden_consumer_lag",
            "Records behind the partition end.",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "driftwarden_assigned_partitions",
            "Input partitions this replica holds (the sum over replicas is the topics' "
            "partition count once a rebalance has completed).",
            registry=r,
        )
        self.windows = Counter(
            "driftwarden_windows_total", "Windows closed.", ["model", "stream"], registry=r
        )
        self.detector_statistic = Gauge(
            "driftwarden_detector_statistic",
            "Headline statistic of a detector at its last window.",
            ["model", "detector"],
            registry=r,
        )
        self.detector_triggered = Gauge(
            "driftwarden_detector_triggered",
            "1 if the detector triggered at its last window.",
            ["model", "detector"],
            registry=r,
        )
        self.decisions = Counter(
            "driftwarden_decisions_total",
            "Decisions by rule and status.",
            ["model", "rule", "status"],
            registry=r,
        )
        self.actions = Counter(
            "driftwarden_action_outcomes_total",
            "Action deliveries by outcome.",
            ["type", "outcome"],
            registry=r,
        )
        self.join = Gauge(
            "driftwarden_join", "Join counters by model.", ["model", "counter"], registry=r
        )
        self.unmonitored = Counter(
            "driftwarden_unmonitored_events_total",
            "Events of models that are only counted: no policy matches them (no_policy), or "
            "their reference profile is missing or does not fit the policy (no_reference).",
            ["model", "reason"],
            registry=r,
        )
        self.processing_errors = Counter(
            "driftwarden_processing_errors_total",
            "Batches of a model whose processing raised (its events went to the dead-letter "
            "topic with the error; the other models went on).",
            ["model"],
            registry=r,
        )
        self.labeled_shared = Counter(
            "driftwarden_labeled_rows_shared_total",
            "Labeled examples handed over through kafka.topics.labeled (state.backend kafka): "
            "published at checkpoints (published), read on taking a partition over (read), "
            "not published: a record the broker refused (failed).",
            ["direction"],
            registry=r,
        )
        self.models_moved = Counter(
            "driftwarden_models_moved_total",
            "A model's events came to another input partition (the input topics gained "
            "partitions): its state taken over from the other partition's checkpoint (adopted), "
            "or an idle copy left on the old partition dropped (retired).",
            ["model", "direction"],
            registry=r,
        )
        self.policy_reload_errors = Counter(
            "driftwarden_policy_reload_errors_total",
            "Policy reloads refused (the last good policies stay).",
            registry=r,
        )
        self.seconds_since_event = Gauge(
            "driftwarden_seconds_since_last_event",
            "Wall-clock seconds since the model's last event.",
            ["model"],
            registry=r,
        )
        self.seconds_since_label = Gauge(
            "driftwarden_seconds_since_last_label",
            "Wall-clock seconds since the model's last label (since the daemon first saw the "
            "model, when none yet): a label pipeline that stopped leaves slice performance and "
            "concept drift blind while predictions still flow.",
            ["model"],
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "driftwarden_checkpoint_seconds",
            "Time to write a checkpoint and commit offsets.",
            registry=r,
        )
