"""Where torch runs: the device, how many CPU threads, and whether matmuls run in bfloat16."""
import logging
import os
import time

import torch

from vae_pipeline.files import PipelineError

log = logging.getLogger("device")


def setup_torch(device: str, threads: int) -> torch.device:
    """Pick the device (`auto`: CUDA when present) and set torch's CPU thread count.

    threads 0 means the cores that are idle now, at least one. More threads than
    free cores makes torch far slower, not faster: each of the ~30 parallel
    regions of a training step waits for the thread that another process has
    pushed off its core (on this 2-core machine, with other work running, an
    epoch took 23-190 s on 2 threads against 5-8 s on 1).
    """
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads or idle_cores(cores))
    if device == "cuda" and not torch.cuda.is_available():
        raise PipelineError("params.yaml: train.device is 'cuda' but no CUDA device is available "
                            "(use 'auto' or 'cpu')")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def idle_cores(cores: int, seconds: float = 0.25) -> int:
    """How many of `cores` are idle, from the machine's CPU time in /proc/stat over `seconds`."""
    def idle_and_total():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]  # the "cpu" line: all CPUs summed
        return ticks[3] + ticks[4], sum(ticks)                   # idle + iowait, all
    try:
        idle_before, total_before = idle_and_total()
        time.sleep(seconds)
        idle_after, total_after = idle_and_total()
    except (OSError, ValueError, IndexError):  # not Linux: trust the affinity mask
        return cores
    idle = (idle_after - idle_before) / max(total_after - total_before, 1) * (os.cpu_count() or cores)
    chosen = max(1, min(cores, int(idle + 0.2)))  # a core 80% idle counts as free
    log.info("train.threads 0: %.1f of %d cores idle, using %d thread%s", idle, cores, chosen,
             "s" * (chosen > 1))
    return chosen


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether training runs its matmuls in bfloat16 (train.precision).

    auto: yes where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on,
    and CPUs with AVX512-BF16 or AMX (torch's own checks; private, hence the guard).
    """
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:
        return False
