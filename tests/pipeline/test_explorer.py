"""The report's latent explorer: the decoder packed for the page, and the page used in headless Chromium.

The browser tests use the tiny project on Fashion-MNIST's class names built once per run
(tests/conftest.py built_fashion), open its report offline in Debian's chromium driven by
Playwright (tests/browser.py) and use the explorer as a reader would (explore_report): decode fixed
latent vectors in the page, click two points of the map, extend, swap, click empty space, drag a
slider, and do it again with the keyboard alone. Other latent sizes run on copies of that project.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.browser import launch, next_frames, open_page
from tests.conftest import copy_project, downstream, run_in, set_params, stages_run
from tests.pipeline.test_report import embedded_images
from vae_pipeline.ml.data import DATASETS, IMAGE_PIXELS, IMAGE_SIZE, class_names, read_labels
from vae_pipeline.ml.model import VAE, load_model
from vae_pipeline.outputs import read_mu
from vae_pipeline.params import load_params
from vae_pipeline.report.explorer import MAX_SLIDERS, TOLERANCE, decode_packed, pack_decoder
from vae_pipeline.report.figures import MANIFOLD_GRID

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

def map_points(page) -> dict:
    """The map canvas's box in the viewport, and each selectable point's place on it and its label."""
    page.evaluate("document.getElementById('map-frame').scrollIntoView({block: 'center', behavior: 'instant'})")
    next_frames(page)
    return page.evaluate("(() => { const m = vaeReport.map, r = m.canvas.getBoundingClientRect(), n = m.data.hover;"
                         " const places = []; for (let k = 0; k < n; k++) places.push(m.screenOf(...m.place(k)));"
                         " return {left: r.left, top: r.top, width: r.width, height: r.height, places: places,"
                         " labels: Array.from(m.labels.slice(0, n))}; })()")


def pick_targets(points: dict) -> tuple[list[int], list[float]]:
    """Three selectable points of three classes, each alone under the mouse, far apart; and an empty place near some."""
    places = np.array(points["places"], dtype=float)
    labels = np.array(points["labels"])
    # Alone: the click lands on the point (rounded to a whole pixel) and no other is as near.
    clicks = np.round(places)
    gaps = np.linalg.norm(clicks[:, None] - places[None], axis=2)
    own = gaps[np.arange(len(places)), np.arange(len(places))]
    np.fill_diagonal(gaps, np.inf)
    inside = ((places > 30) & (places < [points["width"] - 30, points["height"] - 30])).all(1)
    alone = np.flatnonzero(inside & (gaps.min(1) > own + 1))
    chosen = [int(alone[0])]
    for _ in range(2):
        others = [k for k in alone if labels[k] not in labels[chosen]] or [k for k in alone if k not in chosen]
        distance = np.min([np.linalg.norm(places[others] - places[c], axis=1) for c in chosen], axis=0)
        chosen.append(int(others[int(np.argmax(distance))]))
    # Empty: no selectable point within 16 pixels (the map picks within 12), the nearest within 60.
    grid = np.stack(np.meshgrid(np.arange(40, points["width"] - 40, 6), np.arange(40, points["height"] - 40, 6)),
                    -1).reshape(-1, 2)
    nearest = np.linalg.norm(grid[:, None] - places[None], axis=2).min(1)
    empty = grid[np.flatnonzero((nearest > 16) & (nearest < 60))[0]]
    return chosen, [float(empty[0]), float(empty[1])]


def click_point(page, points: dict, k: int) -> None:
    """A click on selectable point k of the map (at its place rounded to a whole pixel, as pick_targets chose)."""
    x, y = np.round(points["places"][k])
    page.mouse.click(points["left"] + x, points["top"] + y)


def click_button(page, element_id: str) -> None:
    page.locator(f"#{element_id}").click()
    next_frames(page)


def tab_to(page, test: str, limit: int = 120) -> bool:
    """Press Tab until the focused element passes the JavaScript test `test` (on `e`); whether it did."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(e => !!e && ({test}))(document.activeElement)"):
            return True
    return False


def strip_pixels(page) -> list[list[int]]:
    """The grey values of every frame shown in the walk's strip, in order."""
    return page.evaluate("[...document.querySelectorAll('#explorer-strip canvas')].map(c => {"
                         " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                         " const g = []; for (let i = 0; i < d.length; i += 4) g.push(d[i]); return g; })")


def canvas_pixels(page, element_id: str) -> list[int]:
    return page.evaluate("id => { const c = document.getElementById(id);"
                         " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                         " const g = []; for (let i = 0; i < d.length; i += 4) g.push(d[i]); return g; }", element_id)


def element_shot(page, path: Path, top_id: str, bottom_id: str) -> None:
    """A screenshot from the top of one element to the bottom of another, the page's width."""
    box = page.evaluate("([top, bottom]) => { const a = document.getElementById(top).getBoundingClientRect(),"
                        " b = document.getElementById(bottom).getBoundingClientRect();"
                        " return {x: 0, y: a.top + scrollY - 8, width: document.documentElement.clientWidth,"
                        " height: Math.max(a.bottom, b.bottom) - a.top + 16}; }", [top_id, bottom_id])
    page.screenshot(path=path, full_page=True, clip=box)


def timings(page, draws: int = 300) -> dict:
    """When the explorer was ready and the page loaded (ms after navigation), and the decode time per image."""
    return page.evaluate(
        "draws => { const nav = performance.getEntriesByType('navigation')[0], d = vaeReport.decoder.latentDim;"
        " const zs = []; for (let i = 0; i < draws; i++)"
        " zs.push(Array.from({length: d}, () => 3 * Math.random() - 1.5));"
        " for (let i = 0; i < 20; i++) vaeReport.decode(zs[i]);"
        " const t = performance.now(); for (const z of zs) vaeReport.decode(z);"
        " return {interactive_ms: vaeReport.readyAt, dom_content_loaded_ms: nav.domContentLoadedEventEnd,"
        " load_ms: nav.loadEventEnd, decode_ms: (performance.now() - t) / draws}; }", draws)


def explore_report(browser, html: Path, latent_vectors: list[list[float]], screenshots: Path | None = None) -> dict:
    """Use the report's latent explorer as a reader would, in headless Chromium; return what it showed.

    Decodes `latent_vectors` in the page; clicks two points of the map, extends the walk to a
    third, swaps it, clicks empty space; drags a slider; reaches the map and a slider with Tab
    and selects and slides with the keys; then looks at a narrow window. With `screenshots`,
    PNGs of each step land in that folder (explorer-*.png).
    """
    def shot(name: str, top: str = "map-frame", bottom: str = "explorer-strip") -> None:
        if screenshots:
            screenshots.mkdir(parents=True, exist_ok=True)
            element_shot(page, screenshots / f"explorer-{name}.png", top, bottom)

    def state() -> dict:
        return page.evaluate("vaeReport.explorer.state()")

    seen = {}
    with open_page(browser, html) as (page, events):
        seen["timings"] = timings(page)
        seen["decoded"] = page.evaluate("zs => zs.map(z => Array.from(vaeReport.decode(z)))", latent_vectors)
        seen["decoder"] = page.evaluate("vaeReport.decoder")
        points = map_points(page)
        chosen, empty = pick_targets(points)
        seen["targets"] = chosen
        for k in chosen[:2]:
            click_point(page, points, k)
        next_frames(page)
        seen["two"] = {**state(), "strip": strip_pixels(page),
                       "text": page.locator("#explorer-points").inner_text()}
        shot("walk")
        click_button(page, "explorer-extend")
        points = map_points(page)
        click_point(page, points, chosen[2])
        next_frames(page)
        seen["three"] = state()
        seen["animation"] = page.evaluate("new Promise(r => setTimeout(() => r("
                                          "document.getElementById('explorer-animation').dataset.frame), 1500))")
        shot("extended")
        click_button(page, "explorer-swap")
        seen["swapped"] = state()
        click_button(page, "explorer-clear")
        seen["cleared"] = state()
        points = map_points(page)
        page.mouse.click(points["left"] + empty[0], points["top"] + empty[1])
        next_frames(page)
        seen["estimate"] = {**state(), "text": page.locator("#explorer-points").inner_text()}
        shot("estimate", bottom="map-legend")

        # A slider dragged with the mouse, from its middle to near its right end.
        slider = page.locator("#explorer-sliders input").first
        slider.evaluate("s => s.scrollIntoView({block: 'center', behavior: 'instant'})")
        plane = "(() => { const p = document.getElementById('explorer-plane'); return p ? p.dataset.point : null; })()"
        seen["slider_dims"] = page.evaluate("[...document.querySelectorAll('#explorer-sliders input')]"
                                            ".map(i => +i.dataset.dim)")
        before = {**state()["slider"], "canvas": canvas_pixels(page, "explorer-slider-image"),
                  "plane": page.evaluate(plane)}
        box = slider.bounding_box()
        middle = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] / 2, middle)
        page.mouse.down()
        for f in (0.6, 0.7, 0.8, 0.9):
            page.mouse.move(box["x"] + f * box["width"], middle)
        page.mouse.up()
        next_frames(page)
        seen["slider"] = {"before": before, "after": {**state()["slider"], "plane": page.evaluate(plane),
                                                      "canvas": canvas_pixels(page, "explorer-slider-image")}}
        shot("sliders", "explorer-sliders-block", "explorer-sliders-block")

        # The keyboard alone: Tab to the map, move its cursor, Enter; Tab on to a slider, arrow keys.
        click_button(page, "explorer-clear")
        page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
        keyboard = {"map_reached": tab_to(page, "e.id === 'map-canvas'")}
        for _ in range(4):
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        next_frames(page)
        keyboard["points"] = len(state()["points"])
        keyboard["slider_reached"] = tab_to(page, "e.matches('#explorer-sliders input')")
        keyboard["slider_before"] = state()["slider"]["z"]
        for _ in range(25):
            page.keyboard.press("ArrowRight")
        next_frames(page)
        keyboard["slider_after"] = state()["slider"]["z"]
        seen["keyboard"] = keyboard
        seen.update(events)

    with open_page(browser, html, width=390, height=844) as (page, events):
        seen["narrow"] = page.evaluate("({page: document.documentElement.scrollWidth, window: innerWidth,"
                                       " explorer: document.getElementById('explorer').getBoundingClientRect().width})")
        points = map_points(page)
        for k in pick_targets(points)[0][:2]:
            click_point(page, points, k)
        next_frames(page)
        seen["narrow"]["points"] = len(state()["points"])
        shot("narrow", "map-frame", "explorer-sliders-block")
        seen["narrow_errors"] = events["console_errors"]
    return seen


@pytest.fixture(scope="module")
def fashion(built_fashion, tmp_path_factory) -> Path:
    """A tiny project on Fashion-MNIST's class names, after a full `dvc repro`. Tests only read it, or
    copy it: this module's own copy of built_fashion, so that what the copies log stays in this module."""
    return copy_project(built_fashion, tmp_path_factory.mktemp("explorer"))


@pytest.fixture(scope="module")
def retrained(fashion, tmp_path_factory):
    """`retrained(latent_dim)`: a copy of `fashion` after a full `dvc repro` with train.latent_dim changed,
    made once per size for this module's tests (which only read it), with what `dvc repro` printed."""
    made = {}

    def of(latent_dim: int) -> tuple[Path, str]:
        if latent_dim not in made:
            folder = tmp_path_factory.mktemp(f"latent-{latent_dim}")
            project = Path(shutil.copytree(fashion, folder / "project", symlinks=True))
            set_params(project, train={"latent_dim": latent_dim})
            made[latent_dim] = project, run_in(project, "dvc", "repro").stdout
        return made[latent_dim]
    return of


def explored(browser, project: Path, request) -> tuple[dict, object, dict]:
    """The explorer used in Chromium (screenshots in pytest's cache), the project's model and the map's μ by row."""
    model, config = load_model(project / "models")
    seen = explore_report(browser, project / "reports/index.html", fixed_vectors(config["latent_dim"]).tolist(),
                          request.config.cache.mkdir(f"explorer-{config['latent_dim']}"))
    params = load_params(project / "params.yaml")
    raw = project / params.paths.raw_dir / params.data.dataset
    mu, labels = read_mu(project / "data/embeddings/train.parquet", "train",
                         read_labels(raw, "train", len(class_names(params.data))), config["latent_dim"])
    return seen, model, {"mu": mu, "labels": labels}


def check_point(point: dict, table: dict) -> None:
    """A selected map point carries its own row's μ, exactly, and its label."""
    assert not point["estimated"]
    np.testing.assert_array_equal(np.float32(point["z"]), table["mu"][point["row"]])
    assert point["label"] == table["labels"][point["row"]]


@pytest.mark.slow
@pytest.mark.browser
def test_the_explorer_decodes_walks_and_slides_in_the_page(fashion, browser, request):
    seen, model, table = explored(browser, fashion, request)
    print(f"timings: {seen['timings']}")
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
@pytest.mark.browser
@pytest.mark.parametrize("latent_dim", [2, 20])
def test_the_explorer_for_other_latent_sizes(retrained, browser, request, latent_dim):
    """2-D: the plane and its point, moved by the slider; wide: the MAX_SLIDERS dimensions with the most KL."""
    project, _ = retrained(latent_dim)
    seen, model, table = explored(browser, project, request)
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


@pytest.mark.slow
def test_a_2d_latent_space_shows_the_raw_plane(retrained, fashion):
    project, output = retrained(2)
    assert stages_run(output) == downstream("train", project)
    html = (project / "reports/index.html").read_text()
    assert "No projection needed" in html and "only its UMAP projection is shown" not in html
    figures = {p.name for p in (project / "reports/figures").iterdir()}
    assert figures == {p.name for p in (fashion / "reports/figures").iterdir()} | {"latent_plane.png",
                                                                                   "latent_manifold.png"}
    assert len(embedded_images(html)) == len(embedded_images((fashion / "reports/index.html").read_text())) + 2
    # The decoder grid: 15 x 15 images of the 2-D plane.
    manifold = Image.open(project / "reports/figures/latent_manifold.png")
    assert manifold.size == ((MANIFOLD_GRID * (IMAGE_SIZE + 2) + 2) * 2,) * 2


if __name__ == "__main__":
    # python -m tests.test_explorer REPORT FOLDER: the explorer used as the browser test does, on any report;
    # its timings and what it showed, screenshots of each step in FOLDER (tests/browser.py).
    with launch() as chromium:
        explored = explore_report(chromium, Path(sys.argv[1]), [], Path(sys.argv[2]))
    print(json.dumps({"timings": explored["timings"], "decoder": explored["decoder"],
                      "console_errors": explored["console_errors"], "narrow": explored["narrow"],
                      "keyboard": {k: v for k, v in explored["keyboard"].items() if "slider_" not in k}}, indent=1))
