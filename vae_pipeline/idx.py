"""Reading and writing IDX files, the format MNIST and Fashion-MNIST ship in.

Layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of
dimensions, then one big-endian uint32 per dimension, then the data.
"""
import math
from pathlib import Path

import numpy as np

from vae_pipeline.datasets import IMAGE_SIZE
from vae_pipeline.files import PipelineError, damaged_output, stage_output

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
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


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
