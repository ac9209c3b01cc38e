"""Start-up cost of Prefect's local API: a one-task flow, run in a fresh process each time.

    python -m benchmarks.prefect_overhead [repeats]

Two ways of getting the API, each on a fresh PREFECT_HOME (its database created
on the way) and then on the same home again:
  prefect   - Prefect's own temporary server (no PREFECT_API_URL), its start-up wait
              raised from 20 to 90 s: on a loaded 2-core machine a fresh one took longer
  local_api - flows/local_api.py, what `make run` and `make sweep` use
Prints wall and CPU seconds (the process and its children) per run. Run it on a
quiet machine: on a loaded one the wall time mostly measures the other processes.
"""
import os
import resource
import subprocess
import sys
import tempfile
import time

from vae_pipeline.environment import TELEMETRY_OFF
from vae_pipeline.files import ROOT

FLOW = """
import sys
from prefect import flow, task
@task
def one(): return 1
@flow
def tiny(): return one()
if sys.argv[1] == "local_api":
    from flows.local_api import local_api
    with local_api():
        tiny()
else:
    tiny()
"""


def timed_run(mode: str, home: str) -> tuple[float, float]:
    env = {**os.environ, "PREFECT_HOME": home, **TELEMETRY_OFF,
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}
    env.pop("PREFECT_API_URL", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOW, mode], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'mode':10} {'home':6} {'wall s':>7} {'cpu s':>6}")
    for _ in range(repeats):
        for mode in ("prefect", "local_api"):
            with tempfile.TemporaryDirectory() as home:
                for kind in ("fresh", "warm"):
                    wall, cpu = timed_run(mode, home)
                    print(f"{mode:10} {kind:6} {wall:7.1f} {cpu:6.1f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
