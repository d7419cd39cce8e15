"""Several processes, one job: PyTorch ``torch.distributed`` as launched by ``torchrun``.

``torchrun --nproc_per_node N -m hemaseg.cli train ...`` (or ``segment``) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address; :func:`from_launcher` sees them and joins the process group
(NCCL on GPUs, gloo on CPUs). Without a launcher everything runs in one process, unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the group."""

    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, name: str = "auto") -> torch.device:
        """``auto``: this process's GPU (``cuda:LOCAL_RANK``) when there are GPUs, else the CPU."""
        if name == "auto":
            return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        return torch.device(name)

    def barrier(self) -> None:
        dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_launcher() -> Dist | None:
    """Join the process group described by the launcher's environment (once); None when not launched."""
    if not launched():
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def backend() -> str:
    return dist.get_backend() if dist.is_initialized() else "none"


def weights_checksum(model: torch.nn.Module) -> float:
    """A position-weighted float64 sum of all parameters: equal on ranks that hold the same weights.
    (BatchNorm running statistics are left out: each process updates them on its own batches, and
    DistributedDataParallel broadcasts process 0's before every forward pass.)"""
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() * (i + 1) for i, p in enumerate(model.parameters())))
