"""The report's latent explorer: the decoder packed for the page, and the page used in headless Chromium.

The browser tests use the tiny project on Fashion-MNIST's class names built once per run
(tests/conftest.py built_fashion), open its report offline and use the explorer as a reader would (tests/browser.py,
explore_report): decode fixed latent vectors in the page, click two points of the map, extend,
swap, click empty space, drag a slider, and do it again with the keyboard alone. Other latent
sizes run on copies of that project.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.browser import explore_report, skip_without_chromium
from tests.conftest import copy_project, run_in, set_params
from vae_pipeline.ml.data import DATASETS, IMAGE_PIXELS, class_names, read_labels
from vae_pipeline.ml.model import VAE, load_model
from vae_pipeline.outputs import read_mu
from vae_pipeline.params import load_params
from vae_pipeline.report.explorer import MAX_SLIDERS, TOLERANCE, decode_packed, pack_decoder

CLASSES = DATASETS["fashion-mnist"]["classes"]
# The strip's canvases hold grey levels 0..255: a decoded value within TOLERANCE, then rounded.
CANVAS_TOLERANCE = round(TOLERANCE * 255) + 1


def fixed_vectors(latent_dim: int) -> np.ndarray:
    """20 fixed latent vectors: the origin, and draws of N(0, 1.5² I)."""
    z = 1.5 * np.random.default_rng(20).normal(size=(20, latent_dim)).astype(np.float32)
    z[0] = 0
    return z


@torch.no_grad()
def torch_decode(model, z) -> np.ndarray:
    return model.decode(torch.from_numpy(np.array(z, np.float32))).numpy()


# ---- fast: the packed decoder ---------------------------------------------------------------

@pytest.mark.parametrize("latent_dim, hidden", [(1, [400]), (2, [400]), (4, [400]), (64, [400]), (8, [256, 128])])
def test_the_packed_decoder_decodes_as_pytorch_does(latent_dim, hidden):
    torch.manual_seed(latent_dim)
    model = VAE(latent_dim=latent_dim, hidden_dims=hidden).eval()
    z = fixed_vectors(latent_dim)
    packed = pack_decoder(model, z)
    assert packed["layers"][0]["weightType"] == "float16"       # half the bytes
    assert [(layer["in"], layer["out"]) for layer in packed["layers"]] == list(
        zip([latent_dim, *reversed(hidden)], [*reversed(hidden), IMAGE_PIXELS]))
    # On vectors it was not checked on, too.
    other = 2 * np.random.default_rng(1).normal(size=(200, latent_dim))
    assert np.abs(decode_packed(packed, other) - torch_decode(model, other)).max() <= TOLERANCE
    assert packed["maxError"] <= TOLERANCE and packed["checked"] == 20


def test_weights_that_float16_would_spoil_are_packed_as_float32():
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden_dims=[400]).eval()
    with torch.no_grad():          # large weights: float16's rounding moves the logits by whole units
        model.decoder[-1].weight.mul_(300)
        model.decoder[-1].weight.add_(1e-3)
    z = fixed_vectors(4)
    packed = pack_decoder(model, z)
    assert {layer["weightType"] for layer in packed["layers"]} == {"float32"}
    assert np.abs(decode_packed(packed, z) - torch_decode(model, z)).max() <= 1e-4   # float32 rounding only


# ---- slow: the page in headless Chromium ----------------------------------------------------

@pytest.fixture(scope="module")
def fashion(built_fashion, tmp_path_factory) -> Path:
    """A tiny project on Fashion-MNIST's class names, after a full `dvc repro`. Tests only read it, or
    copy it: this module's own copy of built_fashion, so that what the copies log stays in this module."""
    return copy_project(built_fashion, tmp_path_factory.mktemp("explorer"))


def explored(project: Path, request) -> tuple[dict, object, dict]:
    """The explorer used in Chromium (screenshots in pytest's cache), the project's model and the map's μ by row."""
    model, config = load_model(project / "models")
    seen = explore_report(project / "reports/index.html", fixed_vectors(config["latent_dim"]).tolist(),
                          request.config.cache.mkdir(f"explorer-{config['latent_dim']}"))
    params = load_params(project / "params.yaml")
    raw = project / params["paths"]["raw_dir"] / params["data"]["dataset"]
    mu, labels = read_mu(project / "data/embeddings/train.parquet", "train",
                         read_labels(raw, "train", len(class_names(params))), config["latent_dim"])
    return seen, model, {"mu": mu, "labels": labels}


def check_point(point: dict, table: dict) -> None:
    """A selected map point carries its own row's μ, exactly, and its label."""
    assert not point["estimated"]
    np.testing.assert_array_equal(np.float32(point["z"]), table["mu"][point["row"]])
    assert point["label"] == table["labels"][point["row"]]


@pytest.mark.slow
def test_the_explorer_decodes_walks_and_slides_in_the_page(fashion, request):
    skip_without_chromium()
    seen, model, table = explored(fashion, request)
    assert seen["console_errors"] == [] and seen["narrow_errors"] == []
    assert seen["requests"] and all(url.startswith(("file:", "data:")) for url in seen["requests"])

    # vaeReport.decode on 20 fixed vectors: PyTorch's decode, every pixel within 2/255.
    decoded = np.array(seen["decoded"])
    assert decoded.shape == (20, IMAGE_PIXELS)
    assert np.abs(decoded - torch_decode(model, fixed_vectors(4))).max() <= TOLERANCE

    # Two clicks: the two points, and the walk between their μ; first and last frame are their decodings.
    two = seen["two"]
    assert [p["k"] for p in two["points"]] == seen["targets"][:2]
    for point in two["points"]:
        check_point(point, table)
    [leg] = two["legs"]
    steps = yaml.safe_load((fashion / "params.yaml").read_text())["report"]["walk_steps"]
    assert len(leg) == steps + 1
    a, b = (np.float32(p["z"]) for p in two["points"])
    t = np.linspace(0, 1, steps + 1, dtype=np.float32)[:, None]
    walk = torch_decode(model, (1 - t) * a + t * b)
    frames = np.array([frame["pixels"] for frame in leg])
    assert np.abs(frames - walk).max() <= TOLERANCE
    assert np.abs(frames[0] - torch_decode(model, table["mu"][two["points"][0]["row"]][None])[0]).max() <= TOLERANCE
    assert np.abs(frames[-1] - torch_decode(model, table["mu"][two["points"][1]["row"]][None])[0]).max() <= TOLERANCE
    # ... and the strip on the page shows those frames.
    strip = np.array(two["strip"])
    assert strip.shape == (steps + 1, IMAGE_PIXELS)
    assert np.abs(strip - walk * 255).max() <= CANVAS_TOLERANCE
    # The cards name the classes as the data set does.
    for point in two["points"]:
        assert CLASSES[point["label"]] in two["text"]

    # Extend to a third point, swap, clear.
    three = seen["three"]
    assert [p["k"] for p in three["points"]] == seen["targets"]
    assert len(three["legs"]) == 2 and three["legs"][1][0]["z"] == three["legs"][0][-1]["z"]
    assert seen["animation"] not in (None, "")
    assert [p["k"] for p in seen["swapped"]["points"]] == seen["targets"][::-1]
    assert seen["cleared"]["points"] == [] and seen["cleared"]["legs"] == []

    # Empty space: an estimate, labelled so, decoded.
    [estimate] = seen["estimate"]["points"]
    assert estimate["estimated"] and estimate["row"] is None and "estimated" in seen["estimate"]["text"]
    assert np.isfinite(estimate["z"]).all()

    # The first slider: the dimension with the most KL; dragging it changes z there only, and the image.
    before, after = seen["slider"]["before"], seen["slider"]["after"]
    np.testing.assert_allclose(before["z"], estimate["z"], atol=1e-6)
    moved = np.flatnonzero(np.abs(np.subtract(after["z"], before["z"])) > 1e-4)
    assert len(moved) == 1
    assert np.abs(np.subtract(after["canvas"], before["canvas"])).max() > 0
    assert np.abs(np.array(after["pixels"]) - torch_decode(model, [after["z"]])[0]).max() <= TOLERANCE
    assert np.abs(np.array(after["canvas"]) - torch_decode(model, [after["z"]])[0] * 255).max() <= CANVAS_TOLERANCE

    # The keyboard alone reaches the map and selects, then reaches a slider and moves it.
    keyboard = seen["keyboard"]
    assert keyboard["map_reached"] and keyboard["points"] == 1
    assert keyboard["slider_reached"] and keyboard["slider_after"] != keyboard["slider_before"]

    # A narrow window: nothing wider than it, the explorer still works.
    narrow = seen["narrow"]
    assert narrow["page"] <= narrow["window"] and narrow["points"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("latent_dim", [2, 20])
def test_the_explorer_for_other_latent_sizes(fashion, tmp_path, request, latent_dim):
    """2-D: the plane and its point, moved by the slider; wide: the MAX_SLIDERS dimensions with the most KL."""
    skip_without_chromium()
    project = Path(shutil.copytree(fashion, tmp_path / "project", symlinks=True))
    set_params(project, train={"latent_dim": latent_dim})
    run_in(project, "dvc", "repro")
    seen, model, table = explored(project, request)
    assert seen["console_errors"] == []
    assert np.abs(np.array(seen["decoded"]) - torch_decode(model, fixed_vectors(latent_dim))).max() <= TOLERANCE
    for point in seen["two"]["points"]:
        check_point(point, table)
    html = (project / "reports/index.html").read_text()
    # One slider per dimension, most KL first, at most MAX_SLIDERS of them.
    kl = json.loads((project / "reports/metrics/eval_detail.json").read_text())["kl_per_dim"]
    by_kl = sorted(range(latent_dim), key=lambda j: -kl[str(j)])
    assert seen["slider_dims"] == by_kl[:MAX_SLIDERS]
    before, after = seen["slider"]["before"], seen["slider"]["after"]
    if latent_dim == 2:
        # The plane: its point moves with the slider.
        assert 'id="explorer-plane"' in html
        assert before["plane"] and after["plane"] and before["plane"] != after["plane"]
    else:
        assert 'id="explorer-plane"' not in html and before["plane"] is None
        assert f"The {MAX_SLIDERS} dimensions with the most KL" in html
