"""torch.distributed from whatever started the processes: torchrun, or SLURM tasks.

torchrun exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under SLURM
(``srun``, or submitit's tasks) each task has SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID,
and the first host of the job is the rendezvous point. One process: nothing to set up.
Backend: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "localhost")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0]


def init_distributed() -> DistInfo:
    """Join the process group if several processes were started; a no-op otherwise."""
    env = os.environ
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(env.get("LOCAL_RANK", 0)))
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun
        info = DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        info = DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
        env.setdefault("MASTER_ADDR", _slurm_master_addr())
        env.setdefault("MASTER_PORT", str(10000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    else:
        return DistInfo()
    if info.enabled:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", rank=info.rank, world_size=info.world_size)
    return info


def wrap_ddp(model: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """The module a training step runs through: DDP's wrapper under torchrun / SLURM (it all-reduces
    the trainable parameters' gradients), else the model itself. LoRA-only training leaves no
    trainable parameter without a gradient, so unused-parameter search stays off."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index or 0] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=False)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def replicas_in_sync(params, info: DistInfo) -> bool:
    """True when every rank holds the same trainable weights (DDP's promise, checked)."""
    if not info.enabled:
        return True
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    with torch.no_grad():
        local = torch.stack([p.detach().double().sum() for p in params]).to(device)
    gathered = [torch.zeros_like(local) for _ in range(info.world_size)]
    dist.all_gather(gathered, local)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def max_over_ranks(value: int, info: DistInfo) -> int:
    """The largest of every rank's ``value``, on every rank (so all act alike at the same step)."""
    if not info.enabled:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any (so all stop at the same step)."""
    return bool(max_over_ranks(int(flag), info))


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
