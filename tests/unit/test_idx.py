import numpy as np
import pytest

from vae_pipeline.errors import PipelineError
from vae_pipeline.ml.data import read_idx, read_split, write_idx


def test_round_trip(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    write_idx(tmp_path / "x", images)
    assert np.array_equal(read_idx(tmp_path / "x", 3), images)


def test_truncated_file_names_the_file(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 28, 28), np.uint8))
    data = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(data[:-10])
    with pytest.raises(PipelineError, match=r"x: truncated IDX file.*\(4, 28, 28\)"):
        read_idx(tmp_path / "x", 3)


def test_wrong_magic_number(tmp_path):
    write_idx(tmp_path / "labels", np.zeros(5, np.uint8))
    with pytest.raises(PipelineError, match="labels: wrong magic number 00000801"):
        read_idx(tmp_path / "labels", 3)


def test_header_shorter_than_its_own_size(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x08\x01\x00")
    with pytest.raises(PipelineError, match="truncated"):
        read_idx(tmp_path / "x", 1)


def test_labels_must_match_images(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(PipelineError, match="3 labels for 4 images"):
        read_split(tmp_path, "train", 10)


def test_images_must_be_28_by_28(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 27, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(PipelineError, match=r"\(27, 28\), expected 28x28"):
        read_split(tmp_path, "test", 10)


def test_missing_file_is_named_with_the_stage_to_run(tmp_path):
    with pytest.raises(PipelineError, match="train-images-idx3-ubyte: missing; run the download stage"):
        read_split(tmp_path, "train", 10)
    with pytest.raises(PipelineError, match="x: cannot read IDX file"):
        read_idx(tmp_path / "x", 1)


def test_empty_split_is_refused(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(PipelineError, match="train-images-idx3-ubyte: holds no images"):
        read_split(tmp_path, "train", 10)


def test_huge_dimensions_do_not_overflow(tmp_path):
    # 2**31 * 2**31 * 4 = 2**64: in int64 arithmetic that wraps to 0, which would make a
    # bare 16-byte header look complete (and numpy's reshape fail with a ValueError).
    dims = (2**31, 2**31, 4)
    (tmp_path / "x").write_bytes(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in dims))
    with pytest.raises(PipelineError, match="truncated IDX file"):
        read_idx(tmp_path / "x", 3)
