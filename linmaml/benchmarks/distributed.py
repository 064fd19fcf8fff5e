"""Data-parallel meta-training with torch.distributed: one meta-batch, split across processes.

Launch with ``torchrun --nproc_per_node N -m linmaml train ...`` (several nodes: torchrun's
``--nnodes/--node_rank/--rdzv_endpoint``). torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them and joins the process group (NCCL when
training on CUDA, gloo on CPU). Without them everything runs in one process and every function here
is a no-op.

The scheme (exact, not an approximation): iteration ``t`` uses the same ``M`` tasks whatever the
number of processes (they are numbered, see :mod:`linmaml.benchmarks.episodes`); process ``r``
takes the contiguous share :func:`share` of them, backpropagates ``Σ_{i in share} ℓ_i / M``, and
:func:`all_reduce_gradients` sums the gradients over processes — giving ``(1/M) Σ_i ∇ℓ_i``, the
single-process meta-gradient up to floating-point summation order. Every process then takes the
same Adam step, so the replicas stay identical. Rank 0 alone writes files and prints.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import pickle

import torch
import torch.distributed as dist

from linmaml import _validate
from linmaml.errors import ArgumentError


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes checkpoints, metrics and progress."""
        return self.rank == 0


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; ``"cuda"`` fails clearly when there is none."""
    if device not in ("auto", "cpu", "cuda"):
        raise ArgumentError("device", f"expected auto, cpu or cuda, got {device!r}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ArgumentError("device", "cuda was asked for but torch sees no CUDA device (a CPU build of torch, or no"
                         " GPU); use --device cpu or auto")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(device: str = "auto") -> Context:
    """The :class:`Context` of this process; joins the process group when launched by torchrun."""
    world_size = _validate.integer(int(os.environ.get("WORLD_SIZE", "1")), "WORLD_SIZE", minimum=1)
    if world_size == 1:
        return Context(device=resolve_device(device))
    rank = _validate.integer(int(os.environ["RANK"]), "RANK", minimum=0, maximum=world_size - 1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, owns_group=owns)


def teardown(ctx: Context, synchronize: bool = True) -> None:
    """Leave the process group if :func:`setup` joined it; with ``synchronize``, only once every
    process has reached this point.

    Without that barrier a process that finishes first destroys its gloo connections while another
    is still writing its files, and that one can abort inside gloo's threads ("terminate called
    without an active exception": seen in tests/benchmarks/test_bench_distributed.py on this 2-core
    machine). A process that failed never arrives, so the caller passes ``synchronize=False`` after a
    failure; and under gloo the barrier gives up after :data:`TEARDOWN_TIMEOUT` seconds (a peer that
    died), leaving the group anyway.
    """
    if not ctx.owns_group:
        return
    if not dist.is_initialized():
        return
    if synchronize and ctx.world_size > 1:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=TEARDOWN_TIMEOUT))
            else:
                dist.barrier()
        except RuntimeError:  # a peer failed or timed out: nothing left to wait for
            pass
    dist.destroy_process_group()


#: Seconds a finished process waits at :func:`teardown` for the others (gloo).
TEARDOWN_TIMEOUT = 120


def share(total: int, world_size: int, rank: int) -> range:
    """Process ``rank``'s contiguous part of ``range(total)``; sizes differ by at most one, the
    first ``total mod world_size`` processes taking one more (a part may be empty)."""
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def all_reduce_gradients(parameters, ctx: Context) -> None:
    """Sum every parameter's ``.grad`` over processes, in one flat buffer (one collective call).

    A parameter without a gradient on this process contributes zeros, so all processes agree.
    """
    if not ctx.distributed:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def all_reduce_sum(values, ctx: Context) -> torch.Tensor:
    """Sum a small float64 vector over processes (losses, counts, flags); returns it on CPU."""
    tensor = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if not ctx.distributed:
        return tensor
    # NCCL only reduces device tensors.
    work = tensor.to(ctx.device) if ctx.device.type == "cuda" else tensor.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.cpu()


def broadcast_object(obj, ctx: Context):
    """Rank 0's ``obj`` on every process (pickled; for set-up data such as a checkpoint payload)."""
    if not ctx.distributed:
        return obj
    holder = [obj if ctx.rank == 0 else None]
    dist.broadcast_object_list(holder, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return holder[0]


def raise_if_any_failed(error: BaseException | None, ctx: Context) -> None:
    """Collective error check for set-up steps run on rank 0 only: if rank 0 failed, every process
    raises the same kind of exception with the same message (so all exit with the same status)."""
    if not ctx.distributed:
        if error is not None:
            raise error
        return
    # the error itself, with its fields (an ArgumentError's .argument, say); one that does not
    # pickle travels as a RuntimeError with its message
    if error is None:
        packed = None
    else:
        try:
            packed = pickle.dumps(error)
        except Exception:  # noqa: BLE001 - any pickling failure
            packed = pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
    packed = broadcast_object(packed, ctx)
    if packed is None:
        return
    if error is not None:
        raise error
    raise pickle.loads(packed)
