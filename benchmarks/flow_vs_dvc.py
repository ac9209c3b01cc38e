"""Wall time of the pipeline through the Prefect flow against plain `dvc repro`, in this project.

    python -m benchmarks.flow_vs_dvc [flow dvc]     # the ways to time, in this order

For each way: remove the generated outputs (models/, data/embeddings/,
reports/metrics/, and DVC's cache but the downloaded data), run the whole pipeline, then run it
again with nothing changed (every stage cached). Prints wall seconds, and the
training's own seconds from reports/metrics/train.json so that the difference
(start-up, DVC and Prefect overhead) can be read off a loaded machine too.
It rewrites this workspace's outputs: run it on a checkout you are not using.
"""
import json
import os
import shutil
import subprocess
import sys
import time

from vae_pipeline.files import ROOT
from vae_pipeline.params import load_params

WAYS = {"flow": [sys.executable, "-m", "flows.pipeline"],     # `make run`
        "dvc": [sys.executable, "-m", "dvc", "repro"]}         # `make repro`


def clean(params: dict) -> None:
    paths = params["paths"]
    # DVC's cache too, else the second way checks the first way's outputs out instead of training;
    # the downloaded data goes back into it, so the download stage stays done.
    for folder in (paths["model_dir"], paths["embeddings_dir"], os.path.dirname(paths["train_metrics"]),
                   ".dvc/cache"):
        shutil.rmtree(ROOT / folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "download"], cwd=ROOT, check=True,
                   capture_output=True)


def timed(cmd: list[str]) -> float:
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(ROOT / ".prefect")),
           "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    params = load_params()
    print(f"{'way':5} {'run':7} {'wall s':>7} {'train s':>8} {'load':>5}")
    for way in sys.argv[1:] or list(WAYS):
        cmd = WAYS[way]
        clean(params)
        for run in ("full", "cached"):
            load = os.getloadavg()[0]
            wall = timed(cmd)
            train = json.loads((ROOT / params["paths"]["train_metrics"]).read_text())["train_seconds"]
            print(f"{way:5} {run:7} {wall:7.1f} {train if run == 'full' else 0:8.1f} {load:5.1f}", flush=True)


if __name__ == "__main__":
    main()
