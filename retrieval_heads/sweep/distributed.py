"""Data-parallel sweeps under ``torchrun`` or ``accelerate launch``: each rank runs its shard, rank 0 merges.

Both launchers export ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; nothing else is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_dir(self, out: str | Path) -> Path:
        return Path(out) / "shards" / f"rank-{self.rank}"

    def device(self, requested: str) -> str:
        """``cuda`` becomes this process's own GPU; anything explicit is kept."""
        return f"cuda:{self.local_rank}" if requested == "cuda" else requested


def current_launch() -> Launch | None:
    """The launch this process belongs to, or None when it runs alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank = int(os.environ.get("RANK", "0"))
    return Launch(rank, world, int(os.environ.get("LOCAL_RANK", rank)))


def _group():
    """``torch.distributed``, with the gloo process group created on first use from the launcher's env."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return dist


def barrier() -> None:
    """Wait for every rank."""
    _group().barrier()


def all_gather(obj) -> list:
    """``obj`` of every rank, in rank order (every rank must call it, the same number of times)."""
    dist = _group()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def finish(launch: Launch, out: str | Path, merge) -> dict | None:
    """After this rank's shard: wait for all, let rank 0 merge every shard into ``out``."""
    barrier()
    result = None
    if launch.is_main:
        result = merge([launch.shard_dir(out).parent / f"rank-{r}" for r in range(launch.world_size)], out)
    barrier()
    return result
