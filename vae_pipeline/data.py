"""The data set as tensors: read once, batches are slices."""
import numpy as np
import torch

from vae_pipeline.datasets import class_names, raw_dir
from vae_pipeline.idx import read_split


def load_images(params: dict, split: str, device: torch.device,
                fixed_draw: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """Images of a split as float32 (N, 784) in [0, 1] on `device`, and their labels.

    With data.binarize static or dynamic, the images come back as one Bernoulli
    draw made with a fixed seed (the same draw every time), unless `fixed_draw`
    is False: then the grey pixels, for training to draw afresh each epoch.
    """
    images, labels = read_split(raw_dir(params), split, len(class_names(params)))
    x = torch.from_numpy(images.copy()).to(device).reshape(len(images), -1).float().div_(255)
    if fixed_draw and params["data"]["binarize"] != "none":
        x = binarize(x, params["data"]["binarize_seed"], SPLIT_STREAM[split], 0)
    return x, labels.astype(np.int64)


# Each split gets its own random stream, so the train and test draws are independent.
SPLIT_STREAM = {"train": 0, "test": 1}


def binarize(x: torch.Tensor, seed: int, stream: int, epoch: int) -> torch.Tensor:
    """Each pixel becomes 1 with probability its grey value, else 0.

    The draw depends only on (seed, stream, epoch): epoch 0 is a split's fixed
    draw, epochs 1, 2, ... are the fresh draws of dynamic binarization, so a
    resumed training run sees the same images it would have seen.
    """
    state = np.random.SeedSequence([seed, stream, epoch]).generate_state(2, np.uint32)
    generator = torch.Generator(device=x.device).manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.bernoulli(x, generator=generator)
