"""After each checkpoint the daemon hands the heap glibc keeps after frees back to the OS
(``runner.release_free_heap``): a checkpoint's serialised and compressed states are freed at
once, and without it RSS (what a container's memory limit sees) stayed at their peak."""

from __future__ import annotations

import gc
import os
import platform
from pathlib import Path

import pytest

from driftwarden.daemon import runner
from driftwarden.daemon.runner import release_free_heap
from tests.daemon.embedded import embedded_daemon

GLIBC = platform.libc_ver()[0] == "glibc"


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def test_freed_heap_goes_back_to_the_os() -> None:
    """64 KiB blocks (malloc's heap, under its mmap threshold), every other one freed: the
    holes stay resident until the trim hands their pages back. Where the C library has no
    such call (not glibc) the function says so and does nothing."""
    if not GLIBC:
        assert release_free_heap() is False
        return
    release_free_heap()
    keep, drop = [], []
    for i in range(2000):
        (keep if i % 2 else drop).append(os.urandom(64 * 1024))
    del drop
    gc.collect()
    before = _rss_mb()
    assert release_free_heap() is True
    after = _rss_mb()
    assert len(keep) == 1000
    assert before - after > 30, (before, after)  # about 64 MB were freed


def test_every_checkpoint_releases_the_freed_heap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(runner, "release_free_heap", lambda: calls.append(1) or True)
    daemon = embedded_daemon(tmp_path)
    daemon.checkpoint()
    daemon.checkpoint()
    assert len(calls) == daemon.summary.checkpoints == 2
