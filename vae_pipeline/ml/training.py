"""What a training run decides between epochs: the learning rate, when to stop, what to tell a person.

Each is a plain function of the epoch and of the figures so far, so a run resumed from its
checkpoint (stages/train.py) decides exactly as the run that was killed would have:
- the learning-rate schedule (train.lr_schedule) is a function of the epoch alone;
- the validation images (train.validation_split) are carved from the TRAINING images with
  train.seed, never from the test set; early stopping (train.patience) watches their loss;
- the time budget (train.max_minutes) counts the seconds of every epoch in the history,
  resumed ones included.
"""
import math

import torch

# Burda et al. 2015, section 5: 8 stages i = 0..7, stage i lasting 3^i epochs at lr 0.001 * 10^(-i/7),
# 3,280 epochs in all. `burda` scales the stages to train.epochs.
BURDA_STAGES = 8
BURDA_EPOCHS = sum(3 ** i for i in range(BURDA_STAGES))
COSINE_FLOOR = 0.01          # cosine: the last epoch runs at lr / 100
RECENT_EPOCHS = 5            # the time of an epoch is the mean of the last few (the load changes)


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The factor on train.lr in `epoch` (1-based) of `epochs`: none, burda (the paper's stages scaled to
    `epochs`: stage i covers epochs whose start lies in its share 3^i / 3280 of the run) or cosine."""
    if schedule == "none":
        return 1.0
    if schedule == "cosine":
        return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(epochs - 1, 1)))
    position, stage_end, stage = (epoch - 1) * BURDA_EPOCHS / epochs, 1, 0
    while position >= stage_end and stage < BURDA_STAGES - 1:
        stage += 1
        stage_end += 3 ** stage
    return 10 ** (-stage / 7)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def carve_validation(x: torch.Tensor, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(training images, validation images): `share` of x picked with `seed` (its own generator: torch's
    default one, which the training's shuffles and draws use, is left as it was); share 0: (x, None)."""
    if not share:
        return x, None
    held_out = int(len(x) * share)
    if held_out < 1 or held_out == len(x):
        raise ValueError(f"{share} of {len(x)} images holds out {held_out}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    return x.index_select(0, order[held_out:].sort().values), x.index_select(0, order[:held_out].sort().values)


class EarlyStopping:
    """The best validation loss so far, its epoch and its weights; `stop` once `patience` epochs passed
    without a better one (patience None: never). Its state goes into the checkpoint."""

    def __init__(self, patience: int | None):
        self.patience, self.best_loss, self.best_epoch, self.best_weights = patience, math.inf, 0, None

    def update(self, model, epoch: int, loss: float) -> None:
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, epoch
            if self.patience is not None:   # the weights are kept only when they will be used
                self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def stop(self, epoch: int) -> bool:
        return self.patience is not None and epoch - self.best_epoch >= self.patience

    def state(self) -> dict:
        state = {"best": torch.tensor([self.best_loss, self.best_epoch], dtype=torch.float64)}
        if self.best_weights is not None:
            state["best_weights"] = self.best_weights
        return state

    def restore(self, state: dict) -> None:
        if "best" in state:
            self.best_loss, self.best_epoch = state["best"][0].item(), int(state["best"][1])
            self.best_weights = state.get("best_weights")


def seconds_per_epoch(seconds: list[float]) -> float:
    recent = seconds[-RECENT_EPOCHS:]
    return sum(recent) / len(recent)


def out_of_time(seconds: list[float], max_minutes: float | None) -> bool:
    """Whether another epoch would end past the budget (never before the first epoch)."""
    return bool(max_minutes and seconds) and sum(seconds) + seconds_per_epoch(seconds) > max_minutes * 60


def time_left(seconds: list[float], epochs_left: int, max_minutes: float | None) -> float:
    """Seconds the run will still take: the epochs left at the recent pace, or the budget if sooner."""
    left = seconds_per_epoch(seconds) * epochs_left
    if max_minutes:
        left = min(left, max(0.0, max_minutes * 60 - sum(seconds)))
    return left


def duration(seconds: float) -> str:
    """A duration a person reads at a glance: 42 s, 7 min 05 s, 1 h 03 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
