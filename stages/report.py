"""Stage report: one self-contained HTML page about the trained VAE, plus its figures as PNGs.

The page is a list of sections, SECTIONS at the bottom of this file: each has an id, a
title and a function that returns its figures (file name -> PNG or GIF bytes) and the
values its template shows. That one list makes the page's navigation, its numbering and
its order; its section templates are vae_pipeline/templates/report/<id>.html.j2, put
together by vae_pipeline/templates/report.html.j2 (Jinja2). To add a section: write its
function, its template, and add it to SECTIONS (and to the list in the README).

Every image is embedded in the page as base64 and the page's CSS and JavaScript are
inline, so the file opens offline in any browser and can be attached anywhere as a
single artifact. The same inputs give the same bytes: nothing on the page or in a
figure depends on the time of the run, and every random draw has its seed (report.seed).
"""
import base64
import importlib.metadata
import io
import json
import logging
import platform
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd
import torch
from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.figure import Figure
from PIL import Image

from vae_pipeline import tracking
from vae_pipeline.artifacts import (latent_map_rows, read_eval_metrics, read_history, read_latent_map,
                                    read_literature, read_train_metrics)
from vae_pipeline.datasets import FILES, IMAGE_PIXELS, IMAGE_SIZE, class_names, expected_checksums, raw_dir
from vae_pipeline.embeddings import read_mu
from vae_pipeline.files import PipelineError, project_path, replace_together, sha256_file
from vae_pipeline.idx import read_split
from vae_pipeline.model import reconstruction_loss
from vae_pipeline.model_files import load_model
from vae_pipeline.packed_decoder import pack_decoder
from vae_pipeline.provenance import git_provenance

log = logging.getLogger("report")

# matplotlib's tab10: the map's colours, in the PNGs and in the page's JavaScript alike.
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
SPRITE_COLUMNS = 50    # the hover images are tiled 50 to a row in one PNG
MANIFOLD_GRID = 15     # a 2-D latent space: the decoder over a 15 x 15 grid of the plane
MAX_SLIDERS = 16       # the explorer's sliders: the latent dimensions with the most KL, at most this many
DECODER_CHECKS = 500   # latent vectors drawn to check the page's packed decoder against PyTorch's
MEDIA_TYPES = {".png": "image/png", ".gif": "image/gif"}


# ---- images ---------------------------------------------------------------------------------

def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk: the bytes then depend on the picture, not on matplotlib's version.
    fig.savefig(buffer, format="png", dpi=130, bbox_inches="tight", facecolor="white",
                metadata={"Software": None})
    return buffer.getvalue()


def tile_grid(images: np.ndarray, columns: int, pad: int = 2, background: float = 1.0) -> np.ndarray:
    """(N, h, w) images in [0, 1] tiled in rows of `columns`, `pad` pixels apart."""
    rows = -(-len(images) // columns)
    h, w = images.shape[1:]
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad), background, np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = image
    return grid


def grey_image(array: np.ndarray, scale: int = 1) -> Image.Image:
    """A [0, 1] array as a greyscale image, enlarged `scale` times with crisp pixels."""
    image = Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8), mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def clean_axes(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(alpha=0.25)


def data_uri(name: str, data: bytes) -> str:
    """A figure as a data: URI, its media type from its file name."""
    kind = MEDIA_TYPES[name[name.rindex("."):]]
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def script_json(value) -> str:
    """`value` as JSON for a <script type="application/json"> element: a "</" in it must not close the element."""
    return json.dumps(value).replace("</", "<\\/")


@torch.no_grad()
def decode(model, z: torch.Tensor) -> np.ndarray:
    return model.decode(z).reshape(-1, IMAGE_SIZE, IMAGE_SIZE).numpy()


# ---- the figures ----------------------------------------------------------------------------

def plot_latent_map(table: pd.DataFrame, classes: list[str], title: str) -> bytes:
    fig = Figure(figsize=(8, 7))
    ax = fig.subplots()
    size = 0.6 if len(table) > 20_000 else 3
    for c, name in enumerate(classes):
        part = table[table["label"] == c]
        ax.scatter(part["x"], part["y"], s=size, color=COLOURS[c % 10], alpha=0.6, linewidths=0,
                   label=name, rasterized=True)
        if len(part):
            ax.annotate(name, (part["x"].median(), part["y"].median()), ha="center", va="center",
                        fontsize=11, weight="bold", color="#222",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.75})
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=6 / size ** 0.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return figure_png(fig)


def latent_manifold(model, n: int) -> bytes:
    """The decoder over a 2-D latent plane: an n x n grid at the N(0, 1) quantiles 5 %..95 %."""
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    z = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2)
    return png_bytes(grey_image(tile_grid(decode(model, z), n), scale=2))


def map_data(table: pd.DataFrame, images: np.ndarray, classes: list[str], hover_points: int,
             seed: int) -> tuple[dict, bytes | None]:
    """The points of the interactive map, compact, and a sprite sheet of the hoverable ones' images.

    Points are shuffled (no class is drawn on top of all others); the first `hover`
    of them are the ones whose image is in the sprite sheet, in the same order.
    x, y are scaled by one factor into [0, 1] (aspect kept) and stored as uint16.
    """
    order = np.random.default_rng(seed).permutation(len(table))
    xy = table[["x", "y"]].to_numpy(np.float64)[order]
    labels = table["label"].to_numpy()[order].astype(np.uint8)
    lo = xy.min(0)
    span = float((xy.max(0) - lo).max()) or 1.0
    q = np.round((xy - lo) / span * 65535).astype("<u2")
    hover = min(hover_points, len(table))
    sprite = None
    if hover:
        sprite = png_bytes(grey_image(tile_grid(images[table["index"].to_numpy()[order[:hover]]] / 255,
                                                SPRITE_COLUMNS, pad=0, background=0.0)))
    centres = [[float(np.median(q[labels == c, 0])) / 65535, float(np.median(q[labels == c, 1])) / 65535]
               if np.any(labels == c) else None for c in range(len(classes))]
    data = {
        "n": int(len(table)), "hover": int(hover), "spriteColumns": SPRITE_COLUMNS, "imageSize": IMAGE_SIZE,
        "xy": base64.b64encode(q.tobytes()).decode(), "labels": base64.b64encode(labels.tobytes()).decode(),
        "rows": base64.b64encode(table["index"].to_numpy()[order[:hover]].astype("<u4").tobytes()).decode(),
        "classes": classes, "colours": [COLOURS[c % 10] for c in range(len(classes))], "centres": centres,
        "extent": [1.0, float((xy[:, 1].max() - lo[1]) / span)] if len(xy) else [1.0, 1.0],
    }
    return data, sprite


def page_decoder(model, mu: np.ndarray, generator: torch.Generator) -> dict:
    """The decoder packed for the page's JavaScript, checked on the map's μ and on wide prior draws."""
    draws = 1.5 * torch.randn(DECODER_CHECKS, model.config["latent_dim"], generator=generator).numpy()
    return pack_decoder(model, np.concatenate([mu, draws]))


def explorer_data(mu: np.ndarray, kl_per_dim: np.ndarray, walk_steps: int, frame_ms: int) -> dict:
    """What the page's latent explorer needs besides the decoder: the μ of the map's selectable points.

    `mu` holds the μ of the map's hover points, in the map's order (row k is map point k);
    the page decodes them, the straight walks between them and the sliders' z itself.
    """
    # Every slider (and a 2-D plane) spans ±reach: the prior's ±3 σ, wider when some μ lies outside it.
    reach = max(3.0, float(np.ceil(np.abs(mu).max(initial=0.0) * 2) / 2))
    return {
        "latentDim": int(mu.shape[1]), "mu": base64.b64encode(np.ascontiguousarray(mu, "<f4").tobytes()).decode(),
        "kl": [float(v) for v in kl_per_dim], "reach": reach,
        # The dimensions in order of KL, most first: the sliders shown, in this order.
        "sliders": [int(j) for j in np.argsort(-kl_per_dim, kind="stable")[:MAX_SLIDERS]],
        "walkSteps": walk_steps, "frameMs": frame_ms,
    }


def prior_samples(model, n: int, generator: torch.Generator) -> bytes:
    z = torch.randn(n * n, model.config["latent_dim"], generator=generator)
    return png_bytes(grey_image(tile_grid(decode(model, z), n), scale=2))


def reconstructions(model, images: np.ndarray, labels: np.ndarray, classes: list[str], likelihood: str,
                    generator: torch.Generator) -> tuple[bytes, dict]:
    """Originals, decoded sampled z and decoded z = mu in three rows, each image with its error."""
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z_sampled = mu + torch.randn(mu.shape, generator=generator) * torch.exp(0.5 * logvar)
        rows = {"sampled": z_sampled, "mu": mu}
        errors = {k: [reconstruction_loss(model.decode_logits(z[i:i + 1]), x[i:i + 1], likelihood).item()
                      for i in range(len(x))] for k, z in rows.items()}
        decoded = {k: decode(model, z) for k, z in rows.items()}
    error_name = "BCE" if likelihood == "bernoulli" else "SSE"
    n = len(images)
    fig = Figure(figsize=(0.9 * n + 1.6, 3.9))
    axes = fig.subplots(3, n, squeeze=False)
    rows = [("original", images / 255, [classes[c] for c in labels]),
            (f"decoded\nsampled z\n(mean {np.mean(errors['sampled']):.1f})", decoded["sampled"],
             [f"{e:.0f}" for e in errors["sampled"]]),
            (f"decoded\nz = μ\n(mean {np.mean(errors['mu']):.1f})", decoded["mu"], [f"{e:.0f}" for e in errors["mu"]])]
    for r, (name, row_images, notes) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(row_images[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(notes[i], fontsize=9, color="#444" if r else "#111", labelpad=2)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9.5, labelpad=8)
    fig.suptitle(f"under each reconstruction: its {error_name} (nats)", fontsize=9, color="#555", y=0.02)
    fig.subplots_adjust(wspace=0.08, hspace=0.35)
    summary = {"error_name": error_name, "n": n,
               "mean_sampled": float(np.mean(errors["sampled"])), "mean_mu": float(np.mean(errors["mu"]))}
    return figure_png(fig), summary


def class_means(mu: np.ndarray, labels: np.ndarray, digits: list[int], classes: list[str],
                source: str) -> np.ndarray:
    means = []
    for d in digits:
        if d >= len(classes) or not np.any(labels == d):
            raise PipelineError(f"params.yaml: report.walk_digits has {d}, but {source} holds no image "
                                f"of class {d} (classes 0..{len(classes) - 1})")
        means.append(mu[labels == d].mean(0))
    return np.stack(means)


def latent_walk(model, means: np.ndarray, names: list[str], steps: int,
                frame_ms: int) -> tuple[bytes, bytes, int]:
    """Decode straight lines between consecutive class means: a strip (a row per leg) and a GIF."""
    legs = []
    for a, b in zip(means, means[1:]):
        t = np.linspace(0, 1, steps + 1, dtype=np.float32)[:, None]
        legs.append(decode(model, torch.from_numpy((1 - t) * a + t * b)))
    fig = Figure(figsize=(0.62 * (steps + 1) + 1.2, 0.75 * len(legs) + 0.2))
    axes = fig.subplots(len(legs), 1, squeeze=False)[:, 0]
    for ax, leg, start, end in zip(axes, legs, names, names[1:]):
        ax.imshow(tile_grid(leg, steps + 1, pad=2), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(f"{start} → {end}", rotation=0, ha="right", va="center", fontsize=11)
    fig.subplots_adjust(hspace=0.05)
    strip = figure_png(fig)
    # The GIF: every leg without repeating the shared class mean; it lingers on each class mean.
    frames = [legs[0][0]] + [image for leg in legs for image in leg[1:]]
    durations = [frame_ms * (4 if i % steps == 0 else 1) for i in range(len(frames))]
    pictures = [grey_image(f, scale=4) for f in frames]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=durations,
                     loop=0)
    return strip, buffer.getvalue(), len(frames)


def plot_training_curves(history: pd.DataFrame) -> bytes:
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    for ax, (key, title) in zip(axes, [("loss", "loss = reconstruction + β·KL"),
                                       ("recon", "reconstruction"), ("kl", "KL divergence")]):
        ax.plot(history["epoch"], history[f"train_{key}"], "o-", ms=3, label="train", color="#1f77b4")
        ax.plot(history["epoch"], history[f"test_{key}"], "s--", ms=3, label="test", color="#d62728")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        clean_axes(ax)
    axes[0].set_ylabel("nats per image")
    axes[0].legend(frameon=False)
    fig.tight_layout()
    return figure_png(fig)


def plot_kl_per_dimension(kl: np.ndarray, active: np.ndarray) -> bytes:
    """A bar per latent dimension, blue where the dimension is active, grey where it is not."""
    d = len(kl)
    fig = Figure(figsize=(min(12, max(4.5, 0.45 * d + 2)), 3.4))
    ax = fig.subplots()
    bars = ax.bar(np.arange(d), kl, color=["#1f77b4" if a else "#bbbbbb" for a in active])
    if d <= 32:
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
        ax.set_xticks(np.arange(d), [f"z{j}" for j in range(d)])
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("mean KL (nats per image)")
    clean_axes(ax)
    return figure_png(fig)


# ---- what the sections read -----------------------------------------------------------------

class Inputs:
    """The params, the model and the earlier stages' outputs, each output read once, on first use.

    A section reads only what it shows (the walk needs no evaluation, the evaluation no
    latent map), so a new section costs only what it draws. Every output is read checked
    (vae_pipeline.artifacts): against the data set's labels, the model's latent width and
    each other, so a damaged one stops the report with its name and the stage to rerun.
    """

    def __init__(self, params: dict):
        self.params = params
        self.dataset = params["data"]["dataset"]
        self.classes = class_names(params)
        self.model, self.config = load_model(project_path(params["paths"]["model_dir"]), "cpu")
        self.likelihood = self.config["likelihood"]
        self.split_images = {}
        self.split_mu = {}

    def path(self, key: str):
        return project_path(self.params["paths"][key])

    def mu(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The embed stage's μ (N, latent_dim) of `split` and their labels, read once, checked against
        the data set's labels of the split and the model's latent width."""
        if split not in self.split_mu:
            self.split_mu[split] = read_mu(self.path("embeddings_dir") / f"{split}.parquet", split,
                                           self.images(split)[1], self.config["latent_dim"])
        return self.split_mu[split]

    @cached_property
    def latent_map(self) -> pd.DataFrame:
        split, subsample = self.params["latent_map"]["split"], self.params["latent_map"]["subsample"]
        labels = self.images(split)[1]
        return read_latent_map(self.path("latent_map"), split, labels, latent_map_rows(len(labels), subsample))

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
        return git_provenance(self.params)

    def images(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The IDX images and labels of `split`, read once."""
        if split not in self.split_images:
            self.split_images[split] = read_split(raw_dir(self.params), split, len(self.classes))
        return self.split_images[split]

    def generator(self) -> torch.Generator:
        """A fresh torch generator seeded with report.seed: each section draws the same whatever ran before."""
        return torch.Generator().manual_seed(self.params["report"]["seed"])


# ---- the sections: each returns its figures (file name -> bytes) and its template's values ---

Part = tuple[dict[str, bytes], dict]


def summary_section(inputs: Inputs) -> Part:
    """The headline numbers, the data and the model, and where they came from."""
    expected = expected_checksums(inputs.params)
    checksums = []
    for name in FILES:
        actual = sha256_file(raw_dir(inputs.params) / name)
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
    params, classes, dataset = inputs.params, inputs.classes, inputs.dataset
    table = inputs.latent_map
    split = params["latent_map"]["split"]
    log.info("latent map of %d points", len(table))
    figures = {"latent_map.png": plot_latent_map(table, classes,
                                                 f"UMAP of μ, {dataset} {split} ({len(table):,} images)")}
    interactive, sprite = map_data(table, inputs.images(split)[0], classes, params["report"]["hover_points"],
                                   params["report"]["seed"])
    interactive["split"] = split
    # The explorer selects the map's hover points: their μ, in the map's order.
    hover_rows = np.frombuffer(base64.b64decode(interactive["rows"]), "<u4")
    hover_mu = inputs.mu(split)[0][hover_rows]
    e, r = inputs.evaluation, params["report"]
    kl = np.array([e["kl_per_dim"][str(j)] for j in range(e["latent_dim"])])
    explorer = explorer_data(hover_mu, kl, r["walk_steps"], r["walk_frame_ms"])
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
    return {"prior_samples.png": prior_samples(inputs.model, inputs.params["report"]["samples_grid"],
                                               inputs.generator())}, {}


def reconstructions_section(inputs: Inputs) -> Part:
    """Test images, one per class in turn (each picked at random within its class), and their decodings."""
    r, classes = inputs.params["report"], inputs.classes
    images, labels = inputs.images("test")
    rng = np.random.default_rng(r["seed"])
    picks = []
    for i in range(r["reconstructions"]):
        candidates = np.flatnonzero(labels == i % len(classes))
        picks.append(rng.choice(candidates) if len(candidates) else rng.integers(len(labels)))
    figure, recon = reconstructions(inputs.model, images[picks], labels[picks], classes, inputs.likelihood,
                                    inputs.generator())
    return {"reconstructions.png": figure}, {"recon": recon}


def latent_walk_section(inputs: Inputs) -> Part:
    """A straight walk between the class means of report.walk_digits: a strip and a GIF."""
    r, classes = inputs.params["report"], inputs.classes
    mu, labels = inputs.mu("train")
    source = project_path(inputs.params["paths"]["embeddings_dir"]) / "train.parquet"
    means = class_means(mu, labels, r["walk_digits"], classes, str(source))
    names = [classes[d] for d in r["walk_digits"]]
    strip, gif, frames = latent_walk(inputs.model, means, names, r["walk_steps"], r["walk_frame_ms"])
    return {"latent_walk.png": strip, "latent_walk.gif": gif}, {"names": names, "frames": frames}


def training_curves_section(inputs: Inputs) -> Part:
    """Loss, reconstruction and KL per epoch, train against test."""
    return {"training_curves.png": plot_training_curves(inputs.history)}, {}


def kl_per_dimension_section(inputs: Inputs) -> Part:
    """The evaluate stage's KL per dimension and its count of active units: one definition, its own."""
    e = inputs.evaluation
    dims = [str(j) for j in range(e["latent_dim"])]
    kl = np.array([e["kl_per_dim"][j] for j in dims])
    threshold = inputs.params["evaluate"]["active_threshold"]
    active = np.array([e["mu_variance"][j] > threshold for j in dims])
    return {"kl_per_dimension.png": plot_kl_per_dimension(kl, active)}, {
        "kl_total": float(kl.sum()), "active_units": e["active_units"], "latent_dim": e["latent_dim"],
        "threshold": threshold, "test_images": e["test_images"],
    }


def evaluation_section(inputs: Inputs) -> Part:
    """The evaluate stage's figures and the literature table beside them."""
    return {}, {"evaluation": inputs.evaluation, "literature": inputs.literature}


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
    env = Environment(loader=PackageLoader("vae_pipeline", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(
        sections=parts, params=inputs.params, dataset=inputs.dataset, classes=inputs.classes,
        config=inputs.config, likelihood=inputs.likelihood, metrics=inputs.metrics, git=inputs.git,
        image_size=IMAGE_SIZE, image_pixels=IMAGE_PIXELS)


def write_figures(folder, figures: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        (folder / name).write_bytes(data)


def run(params: dict) -> dict:
    paths = params["paths"]
    inputs = Inputs(params)
    figures, parts = build_sections(inputs)
    html = render(inputs, parts)
    path, figures_dir = project_path(paths["report"]), project_path(paths["figures_dir"])
    # The page and its figures change together; the figures folder is replaced whole, so a figure
    # of an earlier run (latent_plane.png of a 2-D model) does not linger.
    with replace_together(path, figures_dir) as (new_page, new_figures):
        write_figures(new_figures, figures)
        new_page.write_text(html, encoding="utf-8")
    log.info("%s: %.1f MB, %d figures in %s", path, len(html) / 1e6, len(figures), figures_dir)
    # The report travels with the run that trained the model it shows.
    tracking.attach_to_training_run(params, artifacts=[path, figures_dir], artifact_dir="report")
    return {"report": path, "figures": [figures_dir / name for name in figures]}


if __name__ == "__main__":
    from vae_pipeline.cli import main
    main(run)
