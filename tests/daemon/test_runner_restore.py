"""After a restore, the restored offsets are committed at the next due checkpoint even if no
new input arrives (a commit lost to a crash or an outage must not leave the group's lag stale)."""

from __future__ import annotations

from pathlib import Path

from driftwarden.daemon.app import build_daemon
from driftwarden.daemon.settings import load_settings
from driftwarden.daemon.sinks import MemorySink
from driftwarden.daemon.sources import FileSource

ROOT = Path(__file__).resolve().parents[2]


def test_restored_offsets_are_committed_without_new_input(tmp_path: Path) -> None:
    """A daemon restored from a checkpoint has a checkpoint (and commit) due at once."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {ROOT / 'config/examples/events.jsonl.gz'}}}\n"
        f"policies: {ROOT / 'config/embedded/policies'}\nstate: {{dir: {tmp_path / 'state'}}}\n"
        "checkpoint: {every: 1ms}\nhttp: {enabled: false}\n"
    )
    settings = load_settings(cfg, env={})
    first = build_daemon(settings, sink=MemorySink())
    first.run(max_events=5_000)

    commits: list[dict] = []
    second = build_daemon(settings, sink=MemorySink())
    assert isinstance(second.source, FileSource)
    second.source.commit = lambda offsets, wait=True: commits.append(dict(offsets))  # type: ignore[method-assign]
    assert second._checkpoint_due()
    second.checkpoint()
    assert commits == [{("file", 0): 5_000}]
