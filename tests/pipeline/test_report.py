"""The latent map and the report: `dvc repro` on the tiny config, then the page itself.

The tests read the tiny project built once per run (tests/conftest.py built_project: download,
train, embed, latent_map, evaluate, report); a test that changes params works on its own copy of it.
"""
import base64
import datetime
import io
import json
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from stages.report import SECTIONS
from tests.browser import launch, next_frames, open_page
from tests.conftest import (
    copy_project,
    dvc_stages,
    first_build_output,
    run_in,
    set_params,
    stages_run,
    stages_with_param,
)
from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT
from vae_pipeline.ml.data import IMAGE_SIZE, read_split
from vae_pipeline.params import validate
from vae_pipeline.report.explorer import map_data
from vae_pipeline.report.figures import class_means

SECTION_IDS = [section.id for section in SECTIONS]
# What the page shows for a latent space of more than 2 dimensions (the tiny config's 4).
FIGURES = {"latent_map.png", "prior_samples.png", "reconstructions.png", "latent_walk.png",
           "latent_walk.gif", "training_curves.png", "kl_per_dimension.png"}


def embedded_images(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/(?:png|gif);base64,([^"]+)"', html)]


def section_html(html: str, section_id: str) -> str:
    """The <section> element with this id, whole."""
    found = re.findall(rf'<section id="{section_id}">.*?</section>', html, re.S)
    assert len(found) == 1, f"{len(found)} sections with id {section_id}"
    return found[0]


def png_text_chunks(data: bytes) -> list[bytes]:
    """The PNG chunks that carry text or a time (tEXt, zTXt, iTXt, tIME): the ones that can vary per run."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind in (b"tEXt", b"zTXt", b"iTXt", b"tIME"):
            found.append(kind)
        at += 12 + length
    return found


@pytest.fixture(scope="module")
def built(built_project):
    """The tiny project after a full `dvc repro`, and that run's output. Tests only read it."""
    return built_project, first_build_output(built_project)


@pytest.fixture
def own_copy(built_project, tmp_path) -> Path:
    """A copy of the built project, outputs, DVC cache, git history and MLflow store included, for a test to change."""
    return copy_project(built_project, tmp_path)


# ---- fast: the pieces ----------------------------------------------------------------------

def test_every_section_has_one_template_and_every_template_a_section():
    assert len(set(SECTION_IDS)) == len(SECTIONS) and len({s.title for s in SECTIONS}) == len(SECTIONS)
    templates = {p.name for p in (ROOT / "vae_pipeline/report/templates/report").iterdir()}
    assert templates == {f"{section_id}.html.j2" for section_id in SECTION_IDS}


def test_the_docs_list_the_sections_in_order():
    """README.md or a page of docs/ has a numbered list `1. **Summary**: ...` of the sections, in order."""
    titles = [section.title for section in SECTIONS]
    lists = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if path.exists():
            items = re.findall(r"^(\d+)\. \*\*([^*]+)\*\*", path.read_text(), re.M)
            lists[path.relative_to(ROOT)] = [title for _, title in items]
    assert any(titles == found[i:i + len(titles)] for found in lists.values() for i in range(len(found))), (
        f"no numbered list of the report's sections {titles} in README.md or docs/; the lists found: {lists}")


def test_map_data_keeps_positions_and_pairs_each_hover_point_with_its_image():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"x": rng.normal(size=300) * 5, "y": rng.normal(size=300), "label": rng.integers(0, 10, 300),
                          "index": rng.permutation(1000)[:300]})
    images = rng.integers(0, 256, (1000, IMAGE_SIZE, IMAGE_SIZE)).astype(np.uint8)
    data, sprite = map_data(table, images, [str(d) for d in range(10)], hover_points=120, seed=3)
    q = np.frombuffer(base64.b64decode(data["xy"]), "<u2").reshape(-1, 2) / 65535
    labels = np.frombuffer(base64.b64decode(data["labels"]), np.uint8)
    rows = np.frombuffer(base64.b64decode(data["rows"]), "<u4")
    assert data["n"] == 300 and data["hover"] == 120 and len(rows) == 120
    # Every point keeps its label and its place, one scale for both axes (the aspect kept).
    order = [np.flatnonzero(table["index"].to_numpy() == r)[0] for r in rows]
    np.testing.assert_array_equal(labels[:120], table["label"].to_numpy()[order])
    xy = table[["x", "y"]].to_numpy()
    span = (xy.max(0) - xy.min(0)).max()
    np.testing.assert_allclose(q[:120], (xy[order] - xy.min(0)) / span, atol=1 / 65535)
    assert data["extent"][0] == 1.0 and 0 < data["extent"][1] < 1
    # Sprite tile k is the image of hover point k.
    sheet = np.asarray(Image.open(io.BytesIO(sprite)))
    for k in (0, 57, 119):
        r, c = divmod(k, data["spriteColumns"])
        size = data["imageSize"]
        np.testing.assert_array_equal(sheet[r * size:(r + 1) * size, c * size:(c + 1) * size], images[rows[k]])


def test_exact_neighbours_are_each_points_nearest_itself_first():
    from stages.latent_map import exact_neighbours
    points = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    indices, distances = exact_neighbours(points, 15, "euclidean")
    brute = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.testing.assert_array_equal(indices, np.argsort(brute, axis=1, kind="stable")[:, :15])
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :15], atol=1e-5)
    assert (indices[:, 0] == np.arange(300)).all() and distances.dtype == np.float32


def test_walk_through_a_class_with_no_image_names_the_param():
    mu, labels = np.zeros((4, 2), np.float32), np.array([1, 1, 2, 2])
    np.testing.assert_array_equal(class_means(mu + labels[:, None], labels, [2, 1], [str(d) for d in range(10)], "x"),
                                  [[2, 2], [1, 1]])
    with pytest.raises(PipelineError, match="report.walk_digits has 7"):
        class_means(mu, labels, [1, 7], [str(d) for d in range(10)], "train.parquet")


@pytest.mark.parametrize("section, key, value, message", [
    ("report", "walk_digits", [4], "'report.walk_digits' is [4]; allowed: a list of at least 2 items"),
    ("report", "walk_digits", [4, 12], "each an integer >= 0 and <= 9"),
    ("latent_map", "metric", "hamming", "'latent_map.metric' is 'hamming'; allowed: one of euclidean"),
    ("latent_map", "split", "validation", "'latent_map.split' is 'validation'"),
    ("latent_map", "random_state", -1, "allowed: null or an integer >= 0"),
    ("latent_map", "neighbours", "annoy", "'latent_map.neighbours' is 'annoy'; allowed: one of exact, nndescent"),
])
def test_bad_map_and_report_params_are_refused(section, key, value, message):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params[section][key] = value
    with pytest.raises(PipelineError) as error:
        validate(params)
    assert message in str(error.value)


# ---- slow: the real pipeline on the tiny config ---------------------------------------------

@pytest.mark.slow
def test_repro_writes_the_latent_map(built):
    project, output = built
    assert stages_run(output) == sorted(dvc_stages(project))
    latent_map = pd.read_parquet(project / "data/latent_map.parquet")
    assert list(latent_map.columns) == ["x", "y", "label", "index"]
    assert len(latent_map) == 2000 and np.isfinite(latent_map[["x", "y"]]).all().all()
    _, labels = read_split(project / "data/raw/mnist", "train", 10)
    np.testing.assert_array_equal(latent_map["label"], labels[latent_map["index"]])
    # UMAP's compiled code went to the tests' shared cache (tests/conftest.py), not into the project.
    assert any(Path(os.environ["NUMBA_CACHE_DIR"]).rglob("*.nbi")) and not (project / ".numba_cache").exists()


@pytest.mark.slow
def test_report_has_every_section_and_every_image_decodes(built):
    project, _ = built
    html = (project / "reports/index.html").read_text()
    assert re.findall(r'<section id="([^"]+)"', html) == SECTION_IDS
    assert re.findall(r'<nav class="toc">.*?</nav>', html, re.S)[0].count("<a href") == len(SECTIONS)
    # Self-contained: no stylesheet, script or image from anywhere else.
    assert not re.findall(r'(?:src|href)="(?!data:|#)', html)
    assert "<link rel=\"stylesheet\"" not in html and "<script src" not in html
    images = embedded_images(html)
    assert len(images) == len(FIGURES) + 1          # and the map's sprite sheet
    for data in images:
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.width > 0 and image.height > 0
    # The same figures as files.
    figures = {p.name: p.read_bytes() for p in (project / "reports/figures").iterdir()}
    assert set(figures) == FIGURES
    assert all(data in images for data in figures.values())
    walk = Image.open(project / "reports/figures/latent_walk.gif")
    assert walk.n_frames == 2 * 10 + 1                  # 4 -> 7 -> 9, 10 steps each
    prior = Image.open(project / "reports/figures/prior_samples.png")
    assert prior.size == ((10 * (IMAGE_SIZE + 2) + 2) * 2,) * 2       # a 10 x 10 grid of images, 2 apart, x2
    # The summary's figures come from the run: its metrics and its commit.
    metrics = {**yaml.safe_load((project / "reports/metrics/train.json").read_text()),
               **yaml.safe_load((project / "reports/metrics/train_detail.json").read_text())}
    assert f"{metrics['test_loss']:.1f}" in html and f"{metrics['test_kl']:.2f}" in html
    # The evaluate stage's figures, and the literature table with its verdicts.
    evaluation = {**json.loads((project / "reports/metrics/eval.json").read_text()),
                  **json.loads((project / "reports/metrics/eval_detail.json").read_text())}
    assert f"{evaluation['iwae_nll']:.2f}" in html and f"{100 * evaluation['knn_accuracy']:.1f}" in html
    trustworthiness = json.loads((project / "reports/metrics/map.json").read_text())["trustworthiness"]
    assert f"{trustworthiness:.3f}" in html
    assert html.count("PyTorch examples, VAE") == 1 and html.count('class="badge warn">not comparable') == 2
    commit = run_in(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert commit[:12] in html
    assert html.count('class="badge ok">pinned') == 4


@pytest.mark.slow
@pytest.mark.parametrize("number, section", list(enumerate(SECTIONS, 1)), ids=SECTION_IDS)
def test_each_section_is_numbered_linked_and_its_figures_are_files(built, number, section):
    project, _ = built
    html = (project / "reports/index.html").read_text()
    part = section_html(html, section.id)
    assert f'<h2><span class="num">{number}</span> {section.title}</h2>' in part
    assert f'<a href="#{section.id}">{section.title}</a>' in html
    # Each picture of the section is one of the files in figures/ (the map's sprite sheet aside).
    figures = [p.read_bytes() for p in (project / "reports/figures").iterdir()]
    sprite = re.search(r'id="map-sprite" src="data:image/png;base64,([^"]+)"', part)
    for image in embedded_images(part):
        assert image in figures or (sprite and image == base64.b64decode(sprite.group(1)))


@pytest.mark.slow
def test_the_page_counts_active_units_once_from_the_evaluation(built):
    project, _ = built
    html = (project / "reports/index.html").read_text()
    evaluation = {**json.loads((project / "reports/metrics/eval.json").read_text()),
                  **json.loads((project / "reports/metrics/eval_detail.json").read_text())}
    active, dims = evaluation["active_units"], evaluation["latent_dim"]
    kl_section = section_html(html, "kl-per-dimension")
    assert re.search(rf"Here {active} of\s+{dims} dimensions are active", kl_section)
    assert f"{sum(evaluation['kl_per_dim'].values()):.2f} nats" in kl_section
    assert f"{active} / {dims}</div>" in section_html(html, "evaluation")
    # No other count of active dimensions anywhere on the page.
    assert len(re.findall(r"\b\d+ of\s+\d+ dimensions?\b", html)) == 1


@pytest.mark.slow
def test_the_same_inputs_give_the_same_bytes(built, own_copy):
    """The report again on the same inputs: the page and every figure byte for byte, dvc status clean."""
    def outputs(project):
        return {p.relative_to(project): p.read_bytes()
                for p in [project / "reports/index.html", *(project / "reports/figures").iterdir()]}

    first = outputs(own_copy)
    run_in(own_copy, "python", "-m", "stages.report")
    assert outputs(own_copy) == first
    assert "Data and pipelines are up to date" in run_in(own_copy, "dvc", "status", "report").stdout
    # Nothing in them that would change with the day or the library versions.
    assert datetime.date.today().isoformat() not in first[Path("reports/index.html")].decode()
    for name, data in first.items():
        if name.suffix == ".png":
            assert png_text_chunks(data) == [], name


def hover_the_map(page) -> dict | None:
    """Move the mouse over the map until a point's tip shows; its text and where, or None."""
    page.evaluate("document.getElementById('map-frame').scrollIntoView({block: 'center', behavior: 'instant'})")
    box = page.locator("#map-canvas").bounding_box()
    for fy in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
        for fx in [i / 24 for i in range(2, 23)]:
            x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
            page.mouse.move(x, y)
            # The tip's text, the row it names, and its enlarged picture sampled back to IMAGE_SIZE pixels square
            # (the middle of each enlarged pixel).
            tip = page.evaluate("SIZE => { const t = document.getElementById('map-tip'); if (t.hidden) return null;"
                                " const c = t.querySelector('canvas'), w = c.width, f = Math.floor(w / SIZE);"
                                " const d = c.getContext('2d').getImageData(0, 0, w, w).data;"
                                " const pixels = []; for (let y = 0; y < SIZE; y++) for (let x = 0; x < SIZE; x++)"
                                " pixels.push(d[((f * y + (f >> 1)) * w + f * x + (f >> 1)) * 4]);"
                                " return {text: t.innerText, pixels: pixels,"
                                " hovered: document.getElementById('map-frame').dataset.hovered}; }", IMAGE_SIZE)
            if tip:
                return {**tip, "x": x, "y": y}
    return None


def check_report(browser, html: Path, screenshot: Path) -> dict:
    """Load `html` offline in headless Chromium; return what the browser saw (screenshots: `screenshot`, and
    the map with a point's tip showing beside it, -hover.png)."""
    with open_page(browser, html) as (page, events):
        seen = {
            "title": page.title(),
            "sections": page.evaluate("[...document.querySelectorAll('main > section')].map(s => s.id)"),
            "images": page.evaluate("[...document.images].map(i => ({src: i.src.slice(0, 30), complete: i.complete,"
                                    " width: i.naturalWidth, height: i.naturalHeight}))"),
            # Pixels the map's canvas painted (alpha > 0): zero means nothing was drawn.
            "map_pixels": page.evaluate("(() => { const c = document.getElementById('map-canvas');"
                                        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                                        " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0;"
                                        " return n; })()"),
        }
        page.screenshot(path=screenshot, full_page=True)
        seen["hover"] = hover_the_map(page)
        if seen["hover"]:
            # The map's box on the page, taken where it is, without scrolling (that could hide the tip).
            frame = page.evaluate("(() => { const r = document.getElementById('map-frame').getBoundingClientRect();"
                                  " return {x: r.left + scrollX, y: r.top + scrollY, width: r.width,"
                                  " height: r.height}; })()")
            page.screenshot(path=screenshot.with_name(screenshot.stem + "-hover.png"), full_page=True, clip=frame)
        box = page.locator("#map-canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -400)
        next_frames(page)
        seen["zoom_after_wheel"] = float(page.evaluate("document.getElementById('map-frame').dataset.zoom"))
        return {**seen, **events}


@pytest.mark.slow
@pytest.mark.browser
def test_report_in_headless_chromium(built, browser, request):
    project, _ = built
    screenshot = request.config.cache.mkdir("report-browser") / "report.png"
    seen = check_report(browser, project / "reports/index.html", screenshot)
    assert seen["console_errors"] == []
    assert seen["sections"] == SECTION_IDS
    html = (project / "reports/index.html").read_text()
    assert len(seen["images"]) == html.count("<img")
    for image in seen["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    # Nothing but the file itself and its data: URIs was requested.
    assert seen["requests"] and all(url.startswith(("file:", "data:")) for url in seen["requests"])
    assert seen["map_pixels"] > 2000                    # the canvas drew the points
    assert seen["zoom_after_wheel"] > 1.2               # the wheel zoomed in
    # Hovering a point shows its class and its own image, as stored in the data set.
    hover = seen["hover"]
    assert hover is not None, "no point showed its tip under the mouse"
    images, labels = read_split(project / "data/raw/mnist", "train", 10)
    row = int(hover["hovered"])
    assert hover["text"].splitlines()[0] == str(labels[row])
    np.testing.assert_array_equal(np.array(hover["pixels"]).reshape(IMAGE_SIZE, IMAGE_SIZE), images[row])
    assert Image.open(screenshot).height > 2000
    print(f"screenshot: {screenshot}")


@pytest.mark.slow
def test_a_report_param_reruns_only_the_report(own_copy):
    project = own_copy
    set_params(project, latent_map={"min_dist": 0.2})
    stale = run_in(project, "dvc", "status").stdout
    assert sorted(re.findall(r"^(\w+):", stale, re.M)) == stages_with_param("latent_map.min_dist", project)
    set_params(project, latent_map={"min_dist": 0.1})

    set_params(project, report={"samples_grid": 4})
    assert re.findall(r"^(\w+):", run_in(project, "dvc", "status").stdout, re.M) == ["report"] \
        == stages_with_param("report.samples_grid", project)
    assert stages_run(run_in(project, "dvc", "repro").stdout) == ["report"]
    assert Image.open(project / "reports/figures/prior_samples.png").size == ((4 * (IMAGE_SIZE + 2) + 2) * 2,) * 2


if __name__ == "__main__":
    # python -m tests.test_report REPORT SCREENSHOT: what the browser test sees on any report (tests/browser.py).
    with launch() as chromium:
        result = check_report(chromium, Path(sys.argv[1]), Path(sys.argv[2]))
    if result["hover"]:
        result["hover"]["pixels"] = f"{len(result['hover']['pixels'])} values"
    print(json.dumps(result, indent=1))
