"""Stage report: one self-contained HTML page about the trained VAE, plus its figures as PNGs.

The page is a list of sections, SECTIONS at the bottom of this file: each has an id, a
title and a function that returns its figures (file name -> PNG or GIF bytes) and the
values its template shows. That one list makes the page's navigation, its numbering and
its order; its section templates are vae_pipeline/report/templates/report/<id>.html.j2, put
together by vae_pipeline/report/templates/report.html.j2 (Jinja2). To add a section: write its
function, its template, and add it to SECTIONS (and to the list in the README).

Every image is embedded in the page as base64 and the page's CSS and JavaScript are
inline, so the file opens offline in any browser and can be attached anywhere as a
single artifact. The same inputs give the same bytes: nothing on the page or in a
figure depends on the time of the run, and every random draw has its seed (report.seed).
"""
import base64
import importlib.metadata
import json
import logging
import platform
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd
import torch

from vae_pipeline import pages
from vae_pipeline.files import project_path, replace_together, sha256_file
from vae_pipeline.ml.data import (
    FILES,
    IMAGE_PIXELS,
    IMAGE_SIZE,
    class_names,
    dataset_checksums,
    dataset_dir,
    read_split,
)
from vae_pipeline.ml.model import load_model
from vae_pipeline.outputs import (
    latent_map_rows,
    read_eval_metrics,
    read_history,
    read_latent_map,
    read_literature,
    read_map_metrics,
    read_mu,
    read_train_metrics,
)
from vae_pipeline.params import Pipeline
from vae_pipeline.provenance import git_provenance
from vae_pipeline.report.explorer import explorer_data, map_data, page_decoder
from vae_pipeline.report.figures import (
    COLOURS,
    MANIFOLD_GRID,
    class_means,
    latent_manifold,
    latent_walk,
    plot_kl_per_dimension,
    plot_latent_map,
    plot_training_curves,
    prior_samples,
    reconstructions,
)
from vae_pipeline.tracking import store

log = logging.getLogger("report")

MEDIA_TYPES = {".png": "image/png", ".gif": "image/gif"}


def data_uri(name: str, data: bytes) -> str:
    """A figure as a data: URI, its media type from its file name."""
    kind = MEDIA_TYPES[name[name.rindex("."):]]
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def script_json(value) -> str:
    """`value` as JSON for a <script type="application/json"> element: a "</" in it must not close the element."""
    return json.dumps(value).replace("</", "<\\/")


# ---- what the sections read -----------------------------------------------------------------

class Inputs:
    """The params, the model and the earlier stages' outputs, each output read once, on first use.

    A section reads only what it shows (the walk needs no evaluation, the evaluation no
    latent map), so a new section costs only what it draws. Every output is read checked
    (vae_pipeline/outputs.py): against the data set's labels, the model's latent width and
    each other, so a damaged one stops the report with its name and the stage to rerun.
    """

    def __init__(self, params: Pipeline):
        self.params = params
        self.dataset = params.data.dataset
        self.classes = class_names(params.data)
        self.raw_dir = dataset_dir(params.paths, params.data)
        self.model, self.config = load_model(project_path(params.paths.model_dir), "cpu")
        self.likelihood = self.config["likelihood"]
        self.split_images = {}
        self.split_mu = {}

    def path(self, key: str):
        """The output named `key` in params.yaml `paths`."""
        return project_path(getattr(self.params.paths, key))

    def mu(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The embed stage's μ (N, latent_dim) of `split` and their labels, read once, checked against
        the data set's labels of the split and the model's latent width."""
        if split not in self.split_mu:
            self.split_mu[split] = read_mu(self.path("embeddings_dir") / f"{split}.parquet", split,
                                           self.images(split)[1], self.config["latent_dim"])
        return self.split_mu[split]

    @cached_property
    def latent_map(self) -> pd.DataFrame:
        split, subsample = self.params.latent_map.split, self.params.latent_map.subsample
        labels = self.images(split)[1]
        return read_latent_map(self.path("latent_map"), split, labels, latent_map_rows(len(labels), subsample))

    @cached_property
    def map_metrics(self) -> dict:
        return read_map_metrics(self.path("map_metrics"))

    @cached_property
    def metrics(self) -> dict:
        return read_train_metrics(self.path("train_metrics"), self.path("train_detail"))

    @cached_property
    def history(self) -> pd.DataFrame:
        return read_history(self.path("train_history"), self.metrics["epochs"])

    @cached_property
    def evaluation(self) -> dict:
        return read_eval_metrics(self.path("eval_metrics"), self.path("eval_detail"), self.config["latent_dim"])

    @cached_property
    def literature(self) -> list[dict]:
        return read_literature(self.path("literature"))

    @cached_property
    def git(self) -> dict:
        return git_provenance(self.params.paths)

    def images(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The IDX images and labels of `split`, read once."""
        if split not in self.split_images:
            self.split_images[split] = read_split(self.raw_dir, split, len(self.classes))
        return self.split_images[split]

    def generator(self) -> torch.Generator:
        """A fresh torch generator seeded with report.seed: each section draws the same whatever ran before."""
        return torch.Generator().manual_seed(self.params.report.seed)


# ---- the sections: each returns its figures (file name -> bytes) and its template's values ---

Part = tuple[dict[str, bytes], dict]


def summary_section(inputs: Inputs) -> Part:
    """The headline numbers, the data and the model, and where they came from."""
    expected = dataset_checksums(inputs.params.data)
    checksums = []
    for name in FILES:
        actual = sha256_file(inputs.raw_dir / name)
        checksums.append({"file": name, "sha256": actual, "verified": actual == expected.get(name)})
    return {}, {
        "n_train": len(inputs.mu("train")[0]), "n_test": inputs.evaluation["test_images"],
        "checksums": checksums,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "umap-learn": importlib.metadata.version("umap-learn")},
    }


def latent_map_section(inputs: Inputs) -> Part:
    """The latent map stage's UMAP, static and interactive, with the explorer that decodes in the page.

    With a 2-D latent space, also the plane itself.
    """
    r, classes, dataset = inputs.params.report, inputs.classes, inputs.dataset
    table = inputs.latent_map
    split = inputs.params.latent_map.split
    log.info("latent map of %d points", len(table))
    figures = {"latent_map.png": plot_latent_map(table, classes,
                                                 f"UMAP of μ, {dataset} {split} ({len(table):,} images)")}
    interactive, sprite = map_data(table, inputs.images(split)[0], classes, r.hover_points, r.seed)
    interactive["split"] = split
    # The explorer selects the map's hover points: their μ, in the map's order.
    hover_rows = np.frombuffer(base64.b64decode(interactive["rows"]), "<u4")
    hover_mu = inputs.mu(split)[0][hover_rows]
    e = inputs.evaluation
    kl = np.array([e["kl_per_dim"][str(j)] for j in range(e["latent_dim"])])
    explorer = explorer_data(hover_mu, kl, r.walk_steps, r.walk_frame_ms)
    decoder = page_decoder(inputs.model, hover_mu, inputs.generator())
    if inputs.config["latent_dim"] == 2:
        mu, labels = inputs.mu("train")
        plane = pd.DataFrame({"x": mu[:, 0], "y": mu[:, 1], "label": labels})
        figures["latent_plane.png"] = plot_latent_map(plane, classes,
                                                      f"μ itself: the 2-D latent plane ({dataset} train)")
        figures["latent_manifold.png"] = latent_manifold(inputs.model, MANIFOLD_GRID)
    return figures, {
        "split": split, "n_map": interactive["n"], "n_hover": interactive["hover"], "colours": COLOURS,
        "manifold_grid": MANIFOLD_GRID,
        "map_json": script_json(interactive),
        "sprite": data_uri("sprite.png", sprite) if sprite else None,
        "explorer_json": script_json(explorer), "decoder_json": script_json(decoder),
        "sliders": len(explorer["sliders"]), "decoder": decoder,
        "reach": explorer["reach"],
    }


def prior_samples_section(inputs: Inputs) -> Part:
    """Images decoded from z drawn from the prior."""
    return {"prior_samples.png": prior_samples(inputs.model, inputs.params.report.samples_grid,
                                               inputs.generator())}, {}


def reconstructions_section(inputs: Inputs) -> Part:
    """Test images, one per class in turn (each picked at random within its class), and their decodings."""
    r, classes = inputs.params.report, inputs.classes
    images, labels = inputs.images("test")
    rng = np.random.default_rng(r.seed)
    picks = []
    for i in range(r.reconstructions):
        candidates = np.flatnonzero(labels == i % len(classes))
        picks.append(rng.choice(candidates) if len(candidates) else rng.integers(len(labels)))
    figure, recon = reconstructions(inputs.model, images[picks], labels[picks], classes, inputs.likelihood,
                                    inputs.generator())
    return {"reconstructions.png": figure}, {"recon": recon}


def latent_walk_section(inputs: Inputs) -> Part:
    """A straight walk between the class means of report.walk_digits: a strip and a GIF."""
    r, classes = inputs.params.report, inputs.classes
    mu, labels = inputs.mu("train")
    source = inputs.path("embeddings_dir") / "train.parquet"
    means = class_means(mu, labels, r.walk_digits, classes, str(source))
    names = [classes[d] for d in r.walk_digits]
    strip, gif, frames = latent_walk(inputs.model, means, names, r.walk_steps, r.walk_frame_ms)
    return {"latent_walk.png": strip, "latent_walk.gif": gif}, {"names": names, "frames": frames}


def training_curves_section(inputs: Inputs) -> Part:
    """Loss, reconstruction and KL per epoch, train against test."""
    return {"training_curves.png": plot_training_curves(inputs.history)}, {}


def kl_per_dimension_section(inputs: Inputs) -> Part:
    """The evaluate stage's KL per dimension and its count of active units: one definition, its own."""
    e = inputs.evaluation
    dims = [str(j) for j in range(e["latent_dim"])]
    kl = np.array([e["kl_per_dim"][j] for j in dims])
    threshold = inputs.params.evaluate.active_threshold
    active = np.array([e["mu_variance"][j] > threshold for j in dims])
    return {"kl_per_dimension.png": plot_kl_per_dimension(kl, active)}, {
        "kl_total": float(kl.sum()), "active_units": e["active_units"], "latent_dim": e["latent_dim"],
        "threshold": threshold, "test_images": e["test_images"],
    }


def evaluation_section(inputs: Inputs) -> Part:
    """The evaluate stage's figures, the map's trustworthiness (the latent_map stage's) and the
    literature table beside them."""
    return {}, {"evaluation": inputs.evaluation, "map": inputs.map_metrics, "literature": inputs.literature}


@dataclass(frozen=True)
class Section:
    id: str                               # the HTML id and link target; its template is report/<id>.html.j2
    title: str                            # its heading and its link in the navigation
    build: Callable[[Inputs], Part]


# The page, in order: its navigation, its numbering, the tests and the README's list follow this.
SECTIONS = [
    Section("summary", "Summary", summary_section),
    Section("latent-map", "Latent map", latent_map_section),
    Section("prior-samples", "Prior samples", prior_samples_section),
    Section("reconstructions", "Reconstructions", reconstructions_section),
    Section("latent-walk", "Latent walk", latent_walk_section),
    Section("training-curves", "Training curves", training_curves_section),
    Section("kl-per-dimension", "KL per latent dimension", kl_per_dimension_section),
    Section("evaluation", "Evaluation", evaluation_section),
]


# ---- the stage ------------------------------------------------------------------------------

def build_sections(inputs: Inputs, sections: list[Section] = SECTIONS) -> tuple[dict[str, bytes], list[dict]]:
    """Every section's figures, all together, and what the page template needs of each."""
    figures, parts = {}, []
    for number, section in enumerate(sections, 1):
        log.info("%d. %s", number, section.title)
        own, context = section.build(inputs)
        if figures.keys() & own.keys():
            raise ValueError(f"section {section.id} makes {sorted(figures.keys() & own.keys())}, "
                             "already made by an earlier section")
        figures.update(own)
        context["images"] = {name: data_uri(name, data) for name, data in own.items()}
        parts.append({"id": section.id, "title": section.title, "number": number,
                      "template": f"report/{section.id}.html.j2", "context": context})
    return figures, parts


def render(inputs: Inputs, parts: list[dict]) -> str:
    return pages.environment("vae_pipeline.report").get_template("report.html.j2").render(
        sections=parts, params=inputs.params, dataset=inputs.dataset, classes=inputs.classes,
        config=inputs.config, likelihood=inputs.likelihood, metrics=inputs.metrics, git=inputs.git,
        image_size=IMAGE_SIZE, image_pixels=IMAGE_PIXELS)


def write_figures(folder, figures: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        (folder / name).write_bytes(data)


def run(params: Pipeline | dict) -> dict:
    params = Pipeline.of(params)
    inputs = Inputs(params)
    figures, parts = build_sections(inputs)
    html = render(inputs, parts)
    path, figures_dir = inputs.path("report"), inputs.path("figures_dir")
    # The page and its figures change together; the figures folder is replaced whole, so a figure
    # of an earlier run (latent_plane.png of a 2-D model) does not linger.
    with replace_together(path, figures_dir) as (new_page, new_figures):
        write_figures(new_figures, figures)
        new_page.write_text(html, encoding="utf-8")
    log.info("%s: %.1f MB, %d figures in %s", path, len(html) / 1e6, len(figures), figures_dir)
    # The report travels with the run that trained the model it shows, and so does the map's figure
    # (the latent_map stage logs nothing to MLflow).
    store.attach_to_training_run(params, metrics={f"map_{k}": v for k, v in inputs.map_metrics.items()},
                                 artifacts=[path, figures_dir], artifact_dir="report")
    return {"report": path, "figures": [figures_dir / name for name in figures]}


if __name__ == "__main__":
    from vae_pipeline.errors import main
    from vae_pipeline.params import load_params

    main(lambda: run(load_params()))
