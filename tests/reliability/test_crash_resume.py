"""Crash and resume, done for real: processes killed with SIGKILL, then rerun.

Training killed mid-epoch resumes from its last checkpoint and ends with the
very weights of a run never interrupted (on the CPU, bit for bit). A download
killed mid-file leaves nothing in data/raw, and the rerun completes.
"""
import gzip
import http.server
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from stages import train
from tests.conftest import pipeline_env, put_data, run_in, section, set_params
from tests.reliability.helpers import snapshot
from vae_pipeline.ml.data import FILES
from vae_pipeline.ml.model import VAE

pytestmark = pytest.mark.reliability


def start_stage(project, stage: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=project, env=pipeline_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_to_the_same_weights(project, tiny_source, reliability):
    put_data(project, tiny_source)
    params = set_params(project, train={"epochs": 4})
    checkpoint = project / params["paths"]["checkpoint_dir"] / "train.pt"
    model_dir = project / params["paths"]["model_dir"]

    # Run, and once epoch 1 is logged (its checkpoint follows), kill halfway through epoch 2.
    process = start_stage(project, "train")
    for line in process.stderr:
        if epoch_line := re.search(r"epoch  1/4 .* ([\d.]+)s$", line.strip()):
            break
    else:
        pytest.fail(f"training ended before epoch 1 finished (exit {process.wait()})")
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and time.monotonic() < deadline:  # written just after the log line
        time.sleep(0.005)
    time.sleep(max(float(epoch_line[1]) / 2, 0.05))
    assert process.poll() is None, "training finished before it could be killed"
    kill(process)
    state = torch.load(checkpoint, weights_only=True)
    done = int(state["epoch"])
    assert process.returncode == -signal.SIGKILL and 1 <= done < 4
    assert not model_dir.exists(), "a killed run must not leave a model"

    resumed = run_in(project, sys.executable, "-m", "stages.train")
    assert f"resuming from {checkpoint} after epoch {done}" in resumed.stderr
    resumed_weights = load_file(model_dir / "vae.safetensors")
    resumed_history = pd.read_csv(project / params["paths"]["train_history"])
    assert not checkpoint.exists() and list(checkpoint.parent.iterdir()) == []
    # The model folder holds the model alone; which MLflow run made it is recorded beside it.
    assert sorted(p.name for p in model_dir.iterdir()) == ["vae.json", "vae.safetensors"]
    assert (project / params["paths"]["run_record"]).exists()

    # The same params run from scratch without interruption.
    shutil.rmtree(model_dir)
    uninterrupted = run_in(project, sys.executable, "-m", "stages.train")
    assert "resuming" not in uninterrupted.stderr
    weights = load_file(model_dir / "vae.safetensors")
    history = pd.read_csv(project / params["paths"]["train_history"])

    assert weights.keys() == resumed_weights.keys()
    identical = [name for name in weights if torch.equal(weights[name], resumed_weights[name])]
    reliability("fault", f"SIGKILL train in epoch {done + 1} of 4, rerun",
                f"resumed after epoch {done}; {len(identical)}/{len(weights)} weight tensors bit-identical "
                "to an uninterrupted run", process.returncode, [])
    assert identical == list(weights)
    pd.testing.assert_frame_equal(history, resumed_history, check_exact=True)


def test_evaluation_leaves_the_training_random_state_alone():
    """The per-epoch test loss samples z from its own generator, not the one training draws from."""
    torch.manual_seed(0)
    model, x = VAE.from_config({"latent_dim": 4, "hidden_dims": [16]}), torch.rand(50, 784)
    before = torch.get_rng_state()
    t = section("train", seed=0, eval_batch_size=20, beta=1.0, likelihood="bernoulli")
    figures = train.evaluate(model, x, t)
    assert torch.equal(torch.get_rng_state(), before)
    # and it is itself repeatable: the same z every epoch
    assert train.evaluate(model, x, t) == figures


class SlowGzipServer(http.server.ThreadingHTTPServer):
    """Serves <name>.gz of the tiny data set on 127.0.0.1; while `slow`, in small chunks with pauses."""

    def __init__(self, folder):
        self.files = {f"/{name}.gz": gzip.compress((folder / name).read_bytes()) for name in FILES}
        self.slow, self.stop = True, threading.Event()
        super().__init__(("127.0.0.1", 0), SlowGzipHandler)


class SlowGzipHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        chunk = 8192 if self.server.slow else len(body)
        try:
            for start in range(0, len(body), chunk):
                if self.server.stop.is_set():
                    return
                self.wfile.write(body[start:start + chunk])
                if self.server.slow:
                    time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed: that is the point

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server(tiny_source):
    server = SlowGzipServer(tiny_source[0])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_download_killed_mid_file_leaves_nothing_in_raw(project, slow_server, reliability):
    set_params(project, data={"sources": [f"http://127.0.0.1:{slow_server.server_address[1]}/"]})
    raw = project / "data/raw/mnist"
    first = f"{FILES[0]}.gz"
    process = start_stage(project, "download")
    # Wait until part of the first file has landed in the scratch folder, then kill.
    deadline = time.monotonic() + 60
    while not (partial := [p for p in (project / "data").glob(f".download-*/{first}") if p.stat().st_size]):
        assert process.poll() is None and time.monotonic() < deadline, "download ended before it was killed"
        time.sleep(0.01)
    kill(process)
    size = partial[0].stat().st_size
    assert 0 < size < len(slow_server.files[f"/{first}"]), "the kill must come mid-file"
    in_raw = sorted(snapshot(raw)) if raw.exists() else []
    reliability("fault", "SIGKILL download mid-file, rerun",
                f"killed at {size} of {len(slow_server.files[f'/{first}'])} bytes; data/raw/mnist empty, "
                "rerun verified all 4 files", process.returncode, in_raw)
    assert in_raw == []

    slow_server.slow = False
    rerun = run_in(project, sys.executable, "-m", "stages.download")
    assert "4 files verified" in rerun.stderr
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES)
    assert not list((project / "data").glob(".download-*")), "the rerun removes the killed run's scratch"
