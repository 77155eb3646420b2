"""driftwarden daemon: Kafka wiring, state, scheduler, HTTP and the CLI."""
