"""torchrun process groups: one process per GPU (or CPU process), rendezvous through ``env://``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among ``world_size`` and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_size_from_env() -> int:
    """torchrun's ``WORLD_SIZE`` (1 when started as a plain script)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str, backend: str) -> Runtime:
    """Join torchrun's process group (if any) and pick this rank's device.

    Args:
        device: "auto", "cuda" or "cpu".
        backend: "auto" (nccl on CUDA, gloo on CPU), "nccl" or "gloo".
    """
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = world_size_from_env()
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, init_method="env://",
                                device_id=chosen if use_cuda else None)
    return Runtime(rank, local_rank, world_size, chosen)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in the group (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks in place (a no-op for one process)."""
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_floats(value: float, device: torch.device) -> list[float]:
    """``value`` from every rank, in rank order."""
    if not dist.is_initialized():
        return [value]
    local = torch.tensor([value], dtype=torch.float64, device=device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [float(item) for item in gathered]
