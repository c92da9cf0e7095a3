"""Starting one process per device, on one or several machines, for DistributedDataParallel.

Three ways in, one code path:
- ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set): the process group is read from the
  environment.
- ``--num-gpus N`` (``--num-machines``, ``--machine-rank``, ``--dist-url``): :func:`launch` spawns N
  processes per machine with ``torch.multiprocessing``.
- one process: ``main_func`` is called directly.

The backend is NCCL on CUDA and gloo on CPU, so a 2-process CPU run works on any machine.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from diffvision.utils import comm

__all__ = ["find_free_port", "launch"]

logger = logging.getLogger(__name__)


def find_free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _backend(use_cuda: bool) -> str:
    return "nccl" if use_cuda else "gloo"


def launch(
    main_func: Callable[..., object],
    num_gpus_per_machine: int,
    *,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    use_cuda: bool | None = None,
    args: tuple = (),
    timeout: timedelta = timedelta(minutes=30),
) -> None:
    """Run ``main_func(*args)`` in every process of a (possibly) distributed job.

    Args:
        main_func: the per-process entry point.
        num_gpus_per_machine: processes per machine (CPU processes with gloo when ``use_cuda`` is
            False).
        num_machines: machines in the job.
        machine_rank: rank of this machine.
        dist_url: ``tcp://host:port`` of machine 0, or ``auto`` (single machine: a free port).
        use_cuda: bind each process to a GPU (default: whether CUDA is available).
    """
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        _init_from_env(use_cuda, timeout)
        _run_then_tear_down(main_func, args)
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' only works on one machine; pass tcp://HOST:PORT.")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    mp.start_processes(
        _worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            use_cuda,
            args,
            timeout,
        ),
        daemon=False,
        start_method="spawn",
    )


def _init_from_env(use_cuda: bool, timeout: timedelta) -> None:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=_backend(use_cuda), timeout=timeout)
    comm.set_local_rank(local_rank)


def _worker(
    local_rank: int,
    main_func: Callable[..., object],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    use_cuda: bool,
    args: tuple,
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=_backend(use_cuda),
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    comm.set_local_rank(local_rank)
    comm.synchronize()
    _run_then_tear_down(main_func, args)


def _run_then_tear_down(main_func: Callable[..., object], args: tuple) -> None:
    """``main_func(*args)`` in an initialised process group, which is destroyed afterwards."""
    try:
        main_func(*args)
        # every rank is past its last collective before any rank tears its connections down
        comm.synchronize()
    finally:
        # Free what still holds the process group (a DDP wrapper inside a trainer <-> hook
        # reference cycle) while the interpreter is alive: left to the final teardown, gloo's
        # threads were destroyed at exit and a worker died with SIGABRT ("terminate called
        # without an active exception") after finishing its work.
        gc.collect()
        dist.destroy_process_group()
