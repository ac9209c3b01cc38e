"""Stage train: fit the article's VAE and save it as tensors plus a JSON config.

The images are read once into tensors; each epoch shuffles the indices and
slices batches (the last one may be smaller). Per epoch, train and test loss,
reconstruction and KL (per sample) go to the history CSV; the final figures to
the metrics JSON (the headline ones: test_recon and test_kl) and the detail JSON
(the rest; vae_pipeline/outputs.py TRAIN_METRICS, TRAIN_DETAIL). A checkpoint
written atomically after every epoch lets a killed run resume where it stopped,
with the same result: the learning-rate schedule, early stopping's best epoch and weights and
the time budget spent carry over (vae_pipeline/ml/training.py). Each epoch logs a progress
line: the figures, the learning rate, the time per epoch and the time left.
"""
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from vae_pipeline.errors import PipelineError, failing_as
from vae_pipeline.files import atomic_path, project_path, replace_together, write_json
from vae_pipeline.ml import training
from vae_pipeline.ml.data import SPLIT_STREAM, binarize, dataset_dir, load_images
from vae_pipeline.ml.model import VAE, k_draw_loss, reparameterize, save_model, setup_torch, uses_bf16, vae_loss
from vae_pipeline.ml.training import EarlyStopping, duration
from vae_pipeline.outputs import CURVE_COLUMNS, HISTORY_COLUMNS, TRAIN_DETAIL, TRAIN_METRICS, split_figures
from vae_pipeline.params import Data, Pipeline, Train
from vae_pipeline.tracking import runs, store

log = logging.getLogger("train")
# The outputs (paths.train_history, paths.train_metrics, paths.train_detail) hold figures only: a rerun with the same
# params writes them byte for byte again (dvc.lock unchanged). Times and the thread count vary
# from run to run; they go to the MLflow run alone.


# On a GPU, looking at a loss makes the host wait for the device, so a CUDA run
# looks for a NaN or infinite loss every this many batches, not after each one.
CUDA_CHECK_EVERY = 50


def train_epoch(model, optimizer, x, t: Train, epoch: int) -> list[float]:
    """One pass over x in shuffled batches; returns per-sample loss, recon, KL.

    Kept close to the hardware's limit (see BENCHMARKS.md): x is already a tensor on
    the device, a batch is one index_select (twice as fast as x[indices] on the CPU),
    and nothing waits for the device per batch. With train.precision bf16 the model's
    matmuls run in bfloat16 (autocast); the weights, the Adam state and the loss stay
    float32. One draw of z and the ELBO (the default) is the article's step; train.objective
    iwae or train.iwae_k > 1 draw k per image (model.k_draw_loss).
    """
    model.train()
    n = len(x)
    bf16 = uses_bf16(x.device, t.precision)
    order = torch.randperm(n, device=x.device)
    batch_losses = torch.zeros(math.ceil(n / t.batch_size), device=x.device)
    totals = torch.zeros(3, device=x.device)
    starts = range(0, n, t.batch_size)
    checked = 0  # batches whose loss has been looked at
    for i, start in enumerate(tqdm(starts, desc=f"epoch {epoch}", disable=None, leave=False)):
        batch = x.index_select(0, order[start:start + t.batch_size])
        if t.objective == "elbo" and t.iwae_k == 1:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits, mu, logvar = model(batch)
            loss, recon, kl = vae_loss(logits, batch, mu, logvar, t.beta, t.likelihood)
        else:
            loss, recon, kl = k_draw_loss(model, batch, t.beta, t.likelihood, t.objective, t.iwae_k, bf16)
        # Kept on the device: no host sync per batch.
        batch_losses[i] = loss.detach()
        # On the CPU the check costs nothing: a bad loss stops training before its step
        # touches the weights. On CUDA the few steps taken after it do no harm either:
        # the weights of an epoch that fails are never saved.
        if x.device.type == "cpu" or (i + 1) % CUDA_CHECK_EVERY == 0:
            stop_if_not_finite(batch_losses, checked, i + 1, epoch)
            checked = i + 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals += torch.stack([loss.detach(), recon.detach(), kl.detach()])
    stop_if_not_finite(batch_losses, checked, len(batch_losses), epoch)
    return (totals / n).tolist()


def stop_if_not_finite(batch_losses, start: int, stop: int, epoch: int) -> None:
    """Raise, naming the epoch and batch, if a loss in batch_losses[start:stop] is NaN or infinite."""
    bad = (~torch.isfinite(batch_losses[start:stop])).nonzero()
    if len(bad):
        i = start + bad[0, 0].item()
        kept = (f"the checkpoint of epoch {epoch - 1} is kept, nothing of epoch {epoch} was saved"
                if epoch > 1 else "nothing was saved")
        raise PipelineError(f"train: loss became {batch_losses[i].item()} at epoch {epoch}, batch {i + 1} "
                            f"of {len(batch_losses)}; training stopped there and {kept}. "
                            "Lower train.lr or check the data.")


@torch.no_grad()
def evaluate(model, x, t: Train, sample: bool = True) -> list[float]:
    """Per-sample loss, recon, KL on x; z is sampled with a fixed seed (or z = mu).

    Always float32, whatever train.precision: the reported test loss is the model's own.
    """
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(t.seed)
    totals = torch.zeros(3, device=x.device)
    for start in range(0, len(x), t.eval_batch_size):
        batch = x[start:start + t.eval_batch_size]
        mu, logvar = model.encode(batch)
        z = reparameterize(mu, logvar, generator) if sample else mu
        loss, recon, kl = vae_loss(model.decode_logits(z), batch, mu, logvar, t.beta, t.likelihood)
        totals += torch.stack([loss, recon, kl])
    return (totals / len(x)).tolist()


def epoch_beta(t: Train, epoch: int) -> float:
    """KL warm-up: beta is 0 in epoch 1 and rises linearly to train.beta after kl_warmup_epochs epochs."""
    if epoch > t.kl_warmup_epochs:
        return t.beta
    return t.beta * (epoch - 1) / t.kl_warmup_epochs


def epoch_images(x_train, data: Data, epoch: int):
    """The training images of an epoch: a fresh Bernoulli draw with dynamic binarization, else x_train."""
    if data.binarize != "dynamic":
        return x_train
    return binarize(x_train, data.binarize_seed, SPLIT_STREAM["train"], epoch)


def checkpoint_key(data: Data, train: Train) -> str:
    """Identifies the params a checkpoint belongs to; a checkpoint of other params is ignored. The time
    budget is left out: a run killed in its hour may resume with a longer one (the time spent counts)."""
    shaping = {"data": data.model_dump(), "train": train.model_dump(exclude={"max_minutes"})}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, model, optimizer, epoch: int, history: list, key: str,
                    extra: dict | None = None) -> None:
    """Everything a resumed run needs to continue exactly as if never stopped (`extra`: early
    stopping's state and the validation losses, tensors only).

    Training draws random numbers only from torch's default generators (the
    shuffle and z's noise; numpy and `random` are not used), so their states are
    saved: the CPU one and, on a GPU, the CUDA ones. The test-loss evaluation
    uses its own seeded generator and leaves these untouched.
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": torch.tensor(epoch),
        "history": torch.tensor(history, dtype=torch.float64),
        "key": torch.tensor(list(key.encode())),
        "cpu_rng": torch.get_rng_state(),
        **(extra or {}),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, model, optimizer, key: str) -> tuple[int, list, dict]:
    """Restore a checkpoint of the same params; returns (epochs done, history, the whole checkpoint)
    or (0, [], {})."""
    if not path.exists():
        return 0, [], {}
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PipelineError(f"{path}: refused to load checkpoint ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0]}); only tensors are accepted, never "
                            "pickled objects. Delete it to start afresh") from None
    try:
        if bytes(state["key"].tolist()).decode() != key:
            log.info("%s: checkpoint is for other params; starting afresh", path)
            return 0, [], {}
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["cpu_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        epoch, history = int(state["epoch"]), state["history"].tolist()
    except Exception as e:
        raise PipelineError(f"{path}: not a training checkpoint of this project ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0]}); delete it to start afresh") from None
    log.info("resuming from %s after epoch %d", path, epoch)
    return epoch, history, state


def write_history(path: Path, history: list) -> None:
    with atomic_path(path) as tmp:
        lines = [",".join(CURVE_COLUMNS)]
        lines += [",".join(f"{v:.6g}" if c != "epoch" else str(int(v)) for c, v in zip(CURVE_COLUMNS, row))
                  for row in history]
        tmp.write_text("\n".join(lines) + "\n")


def save_outputs(params: Pipeline, client, run_id: str, model, metrics: dict, history: list, seconds: float,
                 run_only: dict | None = None) -> None:
    """The model, the metrics and the history, all new or (on any failure) all old; the run recorded.

    They are written to staging names first, the MLflow run finished from there, and only then
    moved into place together (files.replace_together): a failure on the way, e.g. at the
    tracking store, leaves the previous run's set whole.
    The run record (in the project's home, shared by every checkout and experiment) gains the
    new model's record before the model moves in: keyed by the model's hash, a record of a model
    that never moved in names nothing, and the old model still finds its own. The checkpoint of
    the last epoch stays, so a rerun goes straight to saving.
    """
    paths = params.paths
    outputs = [project_path(paths.train_metrics), project_path(paths.train_detail),
               project_path(paths.train_history), project_path(paths.model_dir)]
    with replace_together(*outputs) as (new_metrics, new_detail, new_history, new_model):
        save_model(model, new_model, {"likelihood": params.train.likelihood})
        write_history(new_history, history)
        headline, detail = split_figures(metrics, TRAIN_METRICS, TRAIN_DETAIL)
        write_json(new_metrics, headline)
        write_json(new_detail, detail)
        # finish_training_run logs the files at these paths and records the run of the model there.
        staged = params.model_copy(update={"paths": paths.model_copy(update={
            "train_metrics": str(new_metrics), "train_detail": str(new_detail),
            "train_history": str(new_history), "model_dir": str(new_model)})})
        with failing_as(f"{store.store_name(client.tracking_uri)}: finishing MLflow run {run_id}",
                        "the previous model, metrics and run record are kept, and so is the checkpoint of the "
                        "last epoch: rerun the train stage (dvc repro train) once the store works"):
            # (The thread count is the run's `threads` tag.)
            runs.finish_training_run(client, run_id, staged, {**metrics, **(run_only or {}), "train_seconds": seconds})


def run(params: Pipeline | dict) -> dict:
    params = Pipeline.of(params)
    t, data = params.train, params.data
    # The tracking store first: one that is unreachable, damaged or read-only fails here, in
    # seconds, not after the last epoch.
    mlflow_client = store.connect(params.mlflow, params.paths)
    device = setup_torch(t.device, t.threads)
    torch.manual_seed(t.seed)
    # Dynamic binarization keeps the grey training images: epoch_images draws from them.
    raw = dataset_dir(params.paths, data)
    x_train, _ = load_images(data, raw, "train", device, fixed_draw=data.binarize != "dynamic")
    x_test, _ = load_images(data, raw, "test", device)
    if t.batch_size > len(x_train):
        raise PipelineError(f"params.yaml: train.batch_size is {t.batch_size}, larger than the "
                            f"{len(x_train)} training images")

    try:
        x_train, x_val = training.carve_validation(x_train, t.validation_split, t.seed)
    except ValueError as e:
        raise PipelineError(f"params.yaml: train.validation_split: {e}; allowed: a share that holds out "
                            "at least one image and keeps one") from None
    if x_val is not None and data.binarize == "dynamic":   # one fixed draw, as the test images have
        x_val = binarize(x_val, data.binarize_seed, SPLIT_STREAM["train"], 0)
    log.info("%d train%s / %d test images on %s (%d threads)", len(x_train),
             f" (+ {len(x_val)} held out for validation)" if x_val is not None else "", len(x_test), device,
             torch.get_num_threads())

    model = VAE.from_config(t).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, fused=True)  # one kernel for all tensors
    checkpoint = project_path(params.paths.checkpoint_dir) / "train.pt"
    key = checkpoint_key(data, t)
    done, history, state = load_checkpoint(checkpoint, model, optimizer, key)
    stopping = EarlyStopping(t.patience)
    stopping.restore(state)
    validation = state["validation"].tolist() if "validation" in state else []
    run_id = runs.start_training_run(mlflow_client, params, device, key,
                                         [dict(zip(HISTORY_COLUMNS, row)) for row in history])

    for epoch in range(done + 1, t.epochs + 1):
        if stopping.stop(epoch - 1) or training.out_of_time([row[-1] for row in history], t.max_minutes):
            break
        started = time.perf_counter()
        if t.lr_schedule != "none":
            training.set_lr(optimizer, t.lr * training.lr_factor(t.lr_schedule, epoch, t.epochs))
        x_epoch = epoch_images(x_train, data, epoch)
        train_figures = train_epoch(model, optimizer, x_epoch, t.model_copy(update={"beta": epoch_beta(t, epoch)}),
                                    epoch)
        test_figures = evaluate(model, x_test, t)
        if not all(map(math.isfinite, test_figures)):
            raise PipelineError(f"train: test loss became {test_figures[0]} after epoch {epoch}; "
                                "nothing of this epoch was saved. Lower train.lr or check the data.")
        extra = {}
        if x_val is not None:
            validation.append(evaluate(model, x_val, t)[0])
            stopping.update(model, epoch, validation[-1])
            extra = {**stopping.state(), "validation": torch.tensor(validation, dtype=torch.float64)}
        seconds = time.perf_counter() - started
        history.append([epoch, *train_figures, *test_figures, seconds])
        save_checkpoint(checkpoint, model, optimizer, epoch, history, key, extra)
        log_progress(history, validation, stopping, optimizer, t)
        runs.log_epoch(mlflow_client, run_id, dict(zip(HISTORY_COLUMNS, history[-1])))
        if validation:
            store.log_metrics(mlflow_client, run_id, {"validation_loss": validation[-1]}, step=epoch)

    # The model kept: early stopping's best epoch, else the last one run (the time budget may end it early).
    kept = len(history)
    if stopping.best_weights is not None:
        model.load_state_dict(stopping.best_weights)
        kept = stopping.best_epoch
    if len(history) < t.epochs:
        log.info("stopped after epoch %d of %d: %s", len(history), t.epochs,
                 f"no better validation loss in {t.patience} epochs" if stopping.stop(len(history))
                 else f"the time budget of {t.max_minutes:g} minutes")
    if kept < len(history):
        log.info("keeping the weights of epoch %d, the best on the validation images", kept)
    test_loss, test_recon, test_kl = history[kept - 1][4:7]
    test_loss_mu, test_recon_mu, _ = evaluate(model, x_test, t, sample=False)
    metrics = {
        "train_loss": history[kept - 1][1],
        "test_loss": test_loss, "test_recon": test_recon, "test_kl": test_kl,
        "test_loss_mu": test_loss_mu, "test_recon_mu": test_recon_mu,
        "best_test_loss": min(row[4] for row in history),
        "epochs": len(history),
        "device": str(device),
    }
    seconds = sum(row[-1] for row in history)
    # (The validation figures go to the MLflow run alone: the metrics files keep their keys.)
    stopped = {"kept_epoch": kept, "best_validation_loss": stopping.best_loss} if validation else {}
    save_outputs(params, mlflow_client, run_id, model, metrics, history, seconds, stopped)
    checkpoint.unlink(missing_ok=True)
    log.info("test loss %.2f per sample (z = mu: %.2f) after %d epochs, %s",
             test_loss, test_loss_mu, len(history), duration(seconds))
    return metrics


def log_progress(history: list, validation: list, stopping: EarlyStopping, optimizer, t: Train) -> None:
    """One line a person can read during a long run: the epoch's figures, the time per epoch and left."""
    epoch, seconds = int(history[-1][0]), [row[-1] for row in history]
    left = training.time_left(seconds, t.epochs - epoch, None)
    budget = training.time_left(seconds, t.epochs - epoch, t.max_minutes)
    held_out = f"  validation {validation[-1]:.2f} (best: epoch {stopping.best_epoch})" if validation else ""
    # Ends with the epoch's seconds, as it always did (tests/reliability/test_crash_resume.py reads them).
    log.info("epoch %2d/%d  train %.2f  test %.2f (recon %.2f, KL %.2f)%s  lr %.2g  %s left%s  %.1fs",
             epoch, t.epochs, history[-1][1], *history[-1][4:7], held_out, optimizer.param_groups[0]["lr"],
             duration(budget), " (time budget)" * (budget < left), seconds[-1])


if __name__ == "__main__":
    from vae_pipeline.errors import main
    from vae_pipeline.params import load_params

    main(lambda: run(load_params()))
