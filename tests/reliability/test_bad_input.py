"""Bad input through the real entry points: a clear error, exit 2, and no file written.

Each test damages one thing in a fresh copy of the project (params.yaml, an
IDX file, a missing input), runs `python -m stages.NAME` there, and checks the
exit code, the message (it names the file or the key) and that the run left no
new or changed file anywhere in the project.
"""
import shutil

import numpy as np
import pytest
import torch
import yaml

from stages import train
from tests.conftest import free_port, put_data, section, set_params
from tests.reliability.helpers import run_stage
from vae_pipeline.errors import PipelineError
from vae_pipeline.files import write_json
from vae_pipeline.ml.data import write_idx
from vae_pipeline.ml.model import VAE, load_model, save_model
from vae_pipeline.params import Pipeline

pytestmark = pytest.mark.reliability


# Every stage validates the whole params.yaml before doing anything; `download` is
# used here because it starts without loading torch, so each case takes a moment.
@pytest.mark.parametrize("case, section, key, value, message", [
    ("wrong type: train.epochs 'two'", "train", "epochs", "two",
     "'train.epochs' is 'two'; allowed: an integer >= 1"),
    ("out of range: train.latent_dim 0", "train", "latent_dim", 0,
     "'train.latent_dim' is 0; allowed: an integer >= 1"),
    ("out of range: train.lr -0.001", "train", "lr", -0.001, "'train.lr' is -0.001; allowed: a number > 0"),
    ("out of range: train.beta -1", "train", "beta", -1.0, "'train.beta' is -1.0; allowed: a number >= 0"),
    ("unknown key: train.learning_rate", "train", "learning_rate", 0.1,
     "unknown key 'train.learning_rate' (allowed: latent_dim"),
    ("unknown dataset: cifar10", "data", "dataset", "cifar10",
     "'data.dataset' is 'cifar10'; allowed: one of mnist, fashion-mnist"),
])
def test_bad_params_stop_before_anything_runs(project, reliability, case, section, key, value, message):
    set_params(project, **{section: {key: value}})
    code, error, stray = run_stage(project, "download")
    reliability("bad input", f"params: {case}", error, code, stray)
    assert code == 2
    assert error.startswith("params.yaml: invalid params:") and message in error
    assert stray == []


def test_params_file_that_is_not_yaml(project, reliability):
    (project / "params.yaml").write_text("train: [unclosed\n")
    code, error, stray = run_stage(project, "download")
    reliability("bad input", "params.yaml is not YAML", error, code, stray)
    assert code == 2 and error.startswith("params.yaml: not valid YAML") and stray == []


def test_batch_larger_than_the_data(project, tiny_source, reliability):
    put_data(project, tiny_source)
    set_params(project, train={"batch_size": 5000})
    code, error, stray = run_stage(project, "train")
    reliability("bad input", "params: train.batch_size 5000 > 2000 images", error, code, stray)
    assert code == 2
    assert error == "params.yaml: train.batch_size is 5000, larger than the 2000 training images"
    assert stray == []


def damage_truncate(raw):
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])


def damage_magic(raw):
    path = raw / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x09  # 0x09 would be signed bytes
    path.write_bytes(bytes(data))


def damage_dimensions(raw):
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((2000, 27, 28), np.uint8))


def damage_label_count(raw):
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(499, np.uint8))


@pytest.mark.parametrize("case, damage, message", [
    ("IDX truncated by 100 bytes", damage_truncate,
     "data/raw/mnist/train-images-idx3-ubyte: truncated IDX file: header says shape (2000, 28, 28)"),
    ("IDX wrong magic number", damage_magic,
     "data/raw/mnist/t10k-images-idx3-ubyte: wrong magic number 00000903 (expected 00000803"),
    ("IDX wrong dimensions (27x28)", damage_dimensions,
     "data/raw/mnist/train-images-idx3-ubyte: images are (27, 28), expected 28x28"),
    ("IDX 499 labels for 500 images", damage_label_count,
     "data/raw/mnist/t10k-labels-idx1-ubyte: 499 labels for 500 images in t10k-images-idx3-ubyte"),
])
def test_damaged_idx_file_is_named(project, tiny_source, reliability, case, damage, message):
    damage(put_data(project, tiny_source))
    code, error, stray = run_stage(project, "train")
    reliability("bad input", case, error, code, stray)
    assert code == 2 and error.startswith(message)
    assert stray == []


def test_checksum_mismatch_from_a_source(project, tiny_source, tmp_path, reliability):
    folder, checksums = tiny_source
    bad = tmp_path / "bad-source"
    shutil.copytree(folder, bad)
    data = bytearray((bad / "train-labels-idx1-ubyte").read_bytes())
    data[100] ^= 0x01
    (bad / "train-labels-idx1-ubyte").write_bytes(bytes(data))
    set_params(project, data={"sources": [f"file://{bad}"]})
    code, error, stray = run_stage(project, "download")
    shown = error[error.find("file://"):].replace(str(bad), "<source>")
    reliability("bad input", "source file fails its SHA-256", shown, code, stray)
    assert code == 2
    assert "every source failed" in error
    assert "train-labels-idx1-ubyte has sha256 " in error
    assert f"expected {checksums['train-labels-idx1-ubyte']}" in error
    assert stray == [] and not list((project / "data").glob(".download-*"))


def test_train_without_raw_data_says_which_stage_to_run(project, reliability):
    code, error, stray = run_stage(project, "train")
    reliability("bad input", "train before download (no raw data)", error, code, stray)
    assert code == 2
    assert error == ("data/raw/mnist/train-images-idx3-ubyte: missing; "
                     "run the download stage first (dvc repro download)")
    assert stray == []


def test_embed_without_a_model_says_which_stage_to_run(project, tiny_source, reliability):
    put_data(project, tiny_source)
    code, error, stray = run_stage(project, "embed")
    reliability("bad input", "embed before train (no model)", error, code, stray)
    assert code == 2
    assert error == "models/vae.safetensors: missing; run the train stage first (dvc repro train)"
    assert stray == []


def test_unreachable_tracking_uri_stops_train_before_any_work(project, tiny_source, monkeypatch, reliability):
    """A tracking server that is not there, with credentials in its URI: train stops at once, masking them."""
    put_data(project, tiny_source)
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{port}")
    code, error, stray = run_stage(project, "train")
    reliability("bad input", "unreachable MLflow tracking URI (user:password in it)",
                error.replace(str(port), "<port>"), code, stray)
    assert code == 2
    assert error.startswith(f"MLflow tracking server http://alice:***@127.0.0.1:{port} is unreachable")
    assert "s3cret" not in error                # the one redaction (vae_pipeline/errors.py) keeps the user name
    assert stray == []


def test_loss_turning_nan_stops_at_once(project, tiny_source, reliability):
    """lr 1e30: the first Adam step throws every weight to ~1e30, the second batch's loss is not finite."""
    put_data(project, tiny_source)
    set_params(project, train={"lr": 1e30})
    code, error, stray = run_stage(project, "train")
    reliability("bad input", "loss turns NaN (train.lr 1e30)", error, code, stray)
    assert code == 2
    assert error.startswith("train: loss became nan at epoch 1, batch 2 of 16; training stopped there "
                            "and nothing was saved.")
    assert stray == []


def test_loss_turning_nan_after_a_good_epoch_keeps_its_checkpoint(project, tiny_source, reliability):
    """A checkpoint after one real epoch, its optimizer's lr then raised to 1e30: epoch 2 fails."""
    raw = put_data(project, tiny_source)
    params = Pipeline.of(yaml.safe_load((project / "params.yaml").read_text()))
    t = params.train
    torch.manual_seed(t.seed)
    model = VAE.from_config(t)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    images = np.fromfile(raw / "train-images-idx3-ubyte", np.uint8, offset=16).reshape(-1, 784)
    figures = train.train_epoch(model, optimizer, torch.from_numpy(images).float() / 255, t, epoch=1)
    optimizer.param_groups[0]["lr"] = 1e30
    checkpoint = project / params.paths.checkpoint_dir / "train.pt"
    train.save_checkpoint(checkpoint, model, optimizer, 1, [[1, *figures, *figures, 0.1]],
                          train.checkpoint_key(params.data, params.train))
    good = checkpoint.read_bytes()

    code, error, stray = run_stage(project, "train")
    reliability("bad input", "loss turns NaN in epoch 2 (resumed run)", error, code, stray)
    assert code == 2
    assert error.startswith("train: loss became nan at epoch 2, batch 2 of 16; training stopped there "
                            "and the checkpoint of epoch 1 is kept, nothing of epoch 2 was saved.")
    assert checkpoint.read_bytes() == good
    assert stray == []


def diverging_epoch(tiny_source, device: str):
    """One epoch at lr 1e30 on 6,400 images in batches of 64: returns (error, optimizer steps taken)."""
    folder, _ = tiny_source
    images = np.fromfile(folder / "train-images-idx3-ubyte", np.uint8, offset=16).reshape(-1, 784)
    x = (torch.from_numpy(np.tile(images, (4, 1))[:6400]).float() / 255).to(device)
    torch.manual_seed(0)
    model = VAE.from_config({"latent_dim": 4, "hidden_dims": [32]}).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e30)
    t = section("train", batch_size=64, beta=1.0, likelihood="bernoulli", precision="fp32")
    with pytest.raises(PipelineError) as error:
        train.train_epoch(model, optimizer, x, t, epoch=3)
    return str(error.value), {int(state["step"]) for state in optimizer.state.values()}


def test_training_stops_before_the_bad_batch_updates_the_weights(tiny_source):
    """On the CPU: the error comes at batch 2 and only batch 1's step was taken."""
    error, steps = diverging_epoch(tiny_source, "cpu")
    assert "loss became nan at epoch 3, batch 2 of 100" in error
    assert steps == {1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_training_stops_within_a_check_interval(tiny_source):
    """On a GPU the loss is looked at every CUDA_CHECK_EVERY batches: same batch named, few steps wasted."""
    error, steps = diverging_epoch(tiny_source, "cuda")
    assert "loss became nan at epoch 3, batch 2 of 100" in error
    assert steps == {train.CUDA_CHECK_EVERY - 1}  # the check comes before step 50


def test_damaged_model_config_or_mismatched_weights_are_clear_errors(tmp_path):
    save_model(VAE.from_config({"latent_dim": 3, "hidden_dims": [16]}), tmp_path, {"likelihood": "bernoulli"})
    (tmp_path / "vae.json").write_text("{not json")
    with pytest.raises(PipelineError, match="vae.json: not a model config"):
        load_model(tmp_path)
    write_json(tmp_path / "vae.json", {"latent_dim": 4, "hidden_dims": [16], "likelihood": "bernoulli"})
    with pytest.raises(PipelineError, match="vae.safetensors: weights do not match vae.json"):
        load_model(tmp_path)
