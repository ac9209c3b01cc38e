"""A training with the recipes' options, killed with SIGKILL and rerun, ends as a run never interrupted:
the learning-rate schedule, the IWAE objective, the validation images, early stopping's best epoch and
weights and the time budget spent carry over through the checkpoint (stages/train.py)."""
import re
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import pipeline_env, put_data, run_in, set_params

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

OPTIONS = {"epochs": 8, "hidden_dims": [16, 16], "activation": "tanh", "objective": "iwae", "iwae_k": 3,
           "lr_schedule": "burda", "lr": 0.003, "validation_split": 0.2, "patience": 8, "max_minutes": 30}


def test_a_run_with_every_option_resumes_to_the_same_weights(project, tiny_source):
    put_data(project, tiny_source)
    params = set_params(project, train=OPTIONS, data={"binarize": "dynamic"})
    checkpoint = project / params["paths"]["checkpoint_dir"] / "train.pt"
    model_dir, history_file = project / params["paths"]["model_dir"], project / params["paths"]["train_history"]

    process = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, env=pipeline_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:                 # the line of epoch 3 follows its checkpoint
        lines.append(line)
        if re.search(r"epoch  3/8 .*validation [\d.]+ \(best: epoch \d\)  lr [\d.e-]+  .* left  [\d.]+s$",
                     line.strip()):
            break
    else:
        pytest.fail(f"training ended before epoch 3 (exit {process.wait()}):\n{''.join(lines)}")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    done = int(torch.load(checkpoint, weights_only=True)["epoch"])
    assert 3 <= done < 8 and not model_dir.exists()

    resumed = run_in(project, sys.executable, "-m", "stages.train")
    assert f"resuming from {checkpoint} after epoch {done}" in resumed.stderr
    resumed_weights, resumed_history = load_file(model_dir / "vae.safetensors"), pd.read_csv(history_file)

    run_in(project, "rm", "-r", str(model_dir))
    uninterrupted = run_in(project, sys.executable, "-m", "stages.train")
    assert "resuming" not in uninterrupted.stderr
    weights = load_file(model_dir / "vae.safetensors")
    assert weights.keys() == resumed_weights.keys()
    assert [name for name in weights if not torch.equal(weights[name], resumed_weights[name])] == []
    pd.testing.assert_frame_equal(pd.read_csv(history_file), resumed_history, check_exact=True)
