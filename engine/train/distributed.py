"""Several training processes: where `accelerate launch` (torchrun or MPI) put this one, joining the
torch.distributed group (gloo on CPU, nccl on CUDA), and the few collectives the trainers use.
Knows nothing of models or runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.jobs import OnEvent, ignore


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torch.distributed job started by `accelerate launch` or torchrun (one
    process: rank 0 of 1). Rank 0 owns the run directory and the store; every rank trains a shard."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed

            torch.distributed.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value, on every rank (any picklable object)."""
        if not self.enabled:
            return value
        import torch.distributed

        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value (any picklable object) in rank order, on every rank."""
        if not self.enabled:
            return [value]
        import torch.distributed

        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one (a cancel seen by any process stops them all)."""
        if not self.enabled:
            return flag
        import torch
        import torch.distributed

        value = torch.tensor([float(flag)], device=_collective_device())
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())


def _collective_device():
    import torch
    import torch.distributed

    return torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


# Where each launcher puts a process's rank, the job's size and the rank on this machine: torchrun
# (accelerate launch --multi_gpu), then MPI (accelerate launch --cpu --mpirun_hostfile: Open MPI, MVAPICH,
# MPICH/Intel MPI), as accelerate's own PartialState reads them.
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK")
SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMI_SIZE")
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


def launch_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process as its launcher set them; (0, 1, 0) alone."""
    environ = os.environ if environ is None else environ

    def first(names: tuple[str, ...], default: int) -> int:
        return next((int(environ[name]) for name in names if environ.get(name, "").strip()), default)

    return first(RANK_VARIABLES, 0), first(SIZE_VARIABLES, 1), first(LOCAL_RANK_VARIABLES, 0)


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group when launched with several processes (gloo on CPU, nccl on CUDA). Under MPI
    the torchrun variables torch.distributed reads are set from MPI's; MASTER_ADDR/PORT come from
    accelerate launch (default 127.0.0.1:29500)."""
    rank, world_size, local_rank = launch_environment()
    if world_size <= 1:
        return Distributed()
    import torch
    import torch.distributed

    for name, value in (("RANK", rank), ("WORLD_SIZE", world_size), ("LOCAL_RANK", local_rank)):
        os.environ.setdefault(name, str(value))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if not torch.distributed.is_initialized():
        nccl = device != "cpu" and not accelerate_cpu() and torch.cuda.is_available()
        if nccl:
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group("nccl" if nccl else "gloo")
    return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size())


def accelerate_cpu() -> bool:
    """`accelerate launch --cpu` asked for the CPU."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def close_distributed(distributed: Distributed) -> None:
    if distributed.enabled:
        import torch.distributed

        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main_process_sink(on_event: OnEvent) -> OnEvent:
    """The sink on rank 0, nothing on the other processes of a multi-process job (their events would repeat)."""
    return on_event if launch_environment()[0] == 0 else ignore


