"""The embedded file-source daemon many daemon tests build: the example events, a policy folder
(the embedded churn policy unless given), a state folder of the test's own, no HTTP server."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import zstandard

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "config/examples/events.jsonl.gz"
POLICIES = ROOT / "config/embedded/policies"


def embedded_config(tmp: Path, *, policies: Path | None = None, extra: str = "") -> Path:
    """Write ``tmp/driftwarden.yaml`` for the file source and return its path (``extra``: more
    YAML lines, e.g. ``"checkpoint: {every_events: 1000}\\n"``)."""
    cfg = tmp / "driftwarden.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {EVENTS}}}\npolicies: {policies or POLICIES}\n"
        f"state: {{dir: {tmp / 'state'}}}\nhttp: {{enabled: false}}\n{extra}"
    )
    return cfg


def embedded_daemon(tmp: Path, **kw: Any) -> Any:
    """A daemon built from :func:`embedded_config` with an in-memory sink."""
    from driftwarden.daemon.app import build_daemon
    from driftwarden.daemon.settings import load_settings
    from driftwarden.daemon.sinks import MemorySink

    return build_daemon(load_settings(embedded_config(tmp, **kw), env={}), sink=MemorySink())


def comparable_state(state: dict[str, Any]) -> Any:
    """A model's state as its checkpoint holds it (parts of it are pre-encoded JSON), with the
    join's compressed predictions as the JSON they hold: two runs compress at their own
    checkpoints, each with a dictionary of its own."""
    doc = orjson.loads(orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY))
    join = doc["join"]
    if join["dictionary"] is not None:
        inflate = zstandard.ZstdDecompressor(
            dict_data=zstandard.ZstdCompressionDict(base64.b64decode(join["dictionary"]))
        ).decompress
        join["predictions"] = [
            [pid, ts, orjson.loads(inflate(base64.b64decode(d))) if isinstance(d, str) else d]
            for pid, ts, d in join["predictions"]
        ]
    join["dictionary"] = None
    return doc
