"""Property-based tests: whatever bytes the IDX reader gets, it returns valid data or raises PipelineError.

The labels are checked too: each one a class of the data set.
"""
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reliability.fuzzing import FUZZ, fuzz_reader, mutate, mutation, outcome_row
from vae_pipeline.errors import PipelineError
from vae_pipeline.ml.data import read_idx, read_labels, read_split, write_idx

pytestmark = pytest.mark.reliability


def read_or_refuse(path, ndim: int):
    """read_idx's result, checked to be well-formed data, or None when it raised PipelineError.

    Any other exception fails the test.
    """
    try:
        array = read_idx(path, ndim)
    except PipelineError as e:
        assert str(path) in str(e), "the error must name the file"
        return None
    raw = path.read_bytes()
    assert array.dtype == np.uint8 and array.ndim == ndim
    assert raw[:4] == bytes([0, 0, 8, ndim])
    assert array.shape == tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    assert len(raw) == 4 + 4 * ndim + math.prod(array.shape)
    assert array.tobytes() == raw[4 + 4 * ndim:]
    return array


def test_random_bytes(tmp_path, reliability):
    counts = Counter()

    @FUZZ
    @given(data=st.binary(max_size=200), ndim=st.integers(1, 3))
    def check(data, ndim):
        (tmp_path / "x").write_bytes(data)
        counts["refused" if read_or_refuse(tmp_path / "x", ndim) is None else "read"] += 1

    check()
    reliability("fuzz", "read_idx on random bytes (hypothesis)", outcome_row(counts))


def test_random_headers(tmp_path, reliability):
    """A valid magic number with any dimensions, then any body: huge dimensions included."""
    counts = Counter()

    @FUZZ
    @given(ndim=st.integers(1, 3),
           header_dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6)
                                | st.sampled_from([2**16, 2**31, 2**32 - 1]), min_size=3, max_size=3),
           body=st.binary(max_size=300))
    def check(ndim, header_dims, body):
        header = bytes([0, 0, 8, ndim]) + b"".join(d.to_bytes(4, "big") for d in header_dims[:ndim])
        (tmp_path / "x").write_bytes(header + body)
        counts["refused" if read_or_refuse(tmp_path / "x", ndim) is None else "read"] += 1

    check()
    reliability("fuzz", "read_idx on random headers and bodies (hypothesis)", outcome_row(counts))


def valid_file(ndim: int) -> bytes:
    shape = {1: (7,), 2: (3, 5), 3: (2, 4, 3)}[ndim]
    array = np.arange(math.prod(shape), dtype=np.uint8).reshape(shape)
    header = bytes([0, 0, 8, ndim]) + b"".join(d.to_bytes(4, "big") for d in shape)
    return header + array.tobytes()


def test_mutated_valid_files(tmp_path, reliability):
    counts = Counter()

    @FUZZ
    @given(ndim=st.integers(1, 3), mutations=st.lists(mutation, min_size=1, max_size=4))
    def check(ndim, mutations):
        (tmp_path / "x").write_bytes(mutate(valid_file(ndim), mutations))
        counts["refused" if read_or_refuse(tmp_path / "x", ndim) is None else "read"] += 1

    check()
    reliability("fuzz", "read_idx on mutated valid files (hypothesis)", outcome_row(counts))


def test_read_split_of_damaged_pairs(tmp_path, reliability):
    """A split is n 28x28 images and n labels, n > 0; anything else is a PipelineError."""
    images, labels = tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-labels-idx1-ubyte"
    counts = Counter()

    @settings(max_examples=100, deadline=None)
    @given(n_images=st.integers(0, 4), n_labels=st.integers(0, 4), side=st.sampled_from([28, 27]),
           image_mutations=st.lists(mutation, max_size=2), label_mutations=st.lists(mutation, max_size=2))
    def check(n_images, n_labels, side, image_mutations, label_mutations):
        write_idx(images, np.zeros((n_images, side, side), np.uint8))
        write_idx(labels, np.zeros(n_labels, np.uint8))
        images.write_bytes(mutate(images.read_bytes(), image_mutations))
        labels.write_bytes(mutate(labels.read_bytes(), label_mutations))
        try:
            x, y = read_split(tmp_path, "test", 10)
        except PipelineError:
            counts["refused"] += 1
            return
        assert x.shape[1:] == (28, 28) and len(x) == len(y) > 0
        counts["read"] += 1

    check()
    reliability("fuzz", "read_split on damaged image/label pairs (hypothesis)", outcome_row(counts))


def test_read_labels_of_damaged_files(tmp_path, reliability):
    """A labels file holds one byte per image, each a class of the data set; anything else is a PipelineError."""
    path = tmp_path / "train-labels-idx1-ubyte"
    n_classes = 10

    def write(damage):
        labels, mutations = damage
        write_idx(path, np.array(labels, np.uint8))
        path.write_bytes(mutate(path.read_bytes(), mutations))

    def valid(found):
        assert found.tobytes() == path.read_bytes()[8:] and (found < n_classes).all()

    counts = fuzz_reader(st.tuples(st.lists(st.integers(0, 15), max_size=20), st.lists(mutation, max_size=3)),
                         write, lambda: read_labels(tmp_path, "train", n_classes), path, valid)
    reliability("fuzz", "read_labels on damaged label files, labels outside the classes (hypothesis)",
                outcome_row(counts))


def test_fuzzing_found_valid_files_too(tmp_path):
    """The properties are not vacuous: an unmutated file is read back exactly."""
    (tmp_path / "x").write_bytes(valid_file(3))
    assert read_or_refuse(tmp_path / "x", 3).shape == (2, 4, 3)
