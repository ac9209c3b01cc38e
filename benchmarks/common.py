"""Small helpers the benchmarks share: the machine's description and a median."""
import os
import platform
import statistics


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(torch=None) -> str:
    """One line: CPU model, cores this process may use, load, and torch's version, threads and GPU."""
    parts = [f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores usable",
             f"load {os.getloadavg()[0]:.1f}", f"Python {platform.python_version()}"]
    if torch is not None:
        parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def median(values) -> float:
    return statistics.median(values)
