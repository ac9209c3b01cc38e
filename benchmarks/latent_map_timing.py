"""Wall and CPU time of the latent_map stage, numba's cache cold then warm.

Runs `python -m stages.latent_map` (on params.yaml, so on the embed stage's output)
twice in fresh processes sharing one new, empty NUMBA_CACHE_DIR: the first run
compiles UMAP's numba code and fills the cache, the second reuses it.

    python -m benchmarks.latent_map_timing
"""
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from vae_pipeline.files import ROOT


def timed_run(env: dict) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, seconds inside UMAP's fit) of one run of the stage."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "stages.latent_map"], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    fit = float(re.search(r"UMAP took ([\d.]+)s", result.stderr).group(1))
    return wall, cpu, fit


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        print(f"{'run':<22}{'wall s':>8}{'CPU s':>8}{'fit s':>8}   (load average {os.getloadavg()[0]:.1f}, "
              f"{len(os.sched_getaffinity(0))} cores)")
        for name in ("first (cache cold)", "second (cache warm)"):
            wall, cpu, fit = timed_run(env)
            print(f"{name:<22}{wall:8.1f}{cpu:8.1f}{fit:8.1f}", flush=True)


if __name__ == "__main__":
    main()
