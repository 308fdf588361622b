"""Picklable fault hooks for worker processes (:data:`bench.run.distributed.FaultHook`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def kill_once(marker: str, event: str, job, idx: int) -> None:
    """SIGKILL this worker after its first certified image, once per ``marker`` file (as an OOM kill does)."""
    if event == "image" and job.sigma > 0 and not Path(marker).exists():
        Path(marker).write_text(f"{job.key} {idx} pid {os.getpid()}")
        os.kill(os.getpid(), signal.SIGKILL)


def always_kill(event: str, job, idx: int) -> None:
    """SIGKILL every worker that certifies an image of FoR 9 (a shard that can never finish)."""
    if event == "image" and job.fors == 9:
        os.kill(os.getpid(), signal.SIGKILL)
