"""Stage report: one self-contained HTML page about the trained VAE, plus its figures as PNGs.

Eight sections: summary, latent map, prior samples, reconstructions, latent
walk, training curves, KL per latent dimension, and the evaluate stage's figures
beside published ones. Every image is embedded in the
page as base64 and the page's CSS and JavaScript are inline, so the file opens
offline in any browser and can be attached anywhere as a single artifact.
The page is rendered from vae_pipeline/templates/report.html.j2 (Jinja2).
"""
import base64
import datetime
import importlib.metadata
import io
import json
import logging
import platform

import numpy as np
import pandas as pd
import torch
from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.figure import Figure
from PIL import Image

from vae_pipeline import tracking
from vae_pipeline.datasets import DATASETS, FILES, expected_checksums, raw_dir
from vae_pipeline.files import PipelineError, atomic_path, project_path, sha256_file, stage_output
from vae_pipeline.idx import read_split
from vae_pipeline.model import load_model, reconstruction_loss
from vae_pipeline.provenance import git_provenance

log = logging.getLogger("report")

# matplotlib's tab10: the map's colours, in the PNGs and in the page's JavaScript alike.
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
SPRITE_COLUMNS = 50    # the hover images are tiled 50 to a row in one PNG


# ---- images ---------------------------------------------------------------------------------

def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def tile_grid(images: np.ndarray, columns: int, pad: int = 2, background: float = 1.0) -> np.ndarray:
    """(N, 28, 28) images in [0, 1] tiled in rows of `columns`, `pad` pixels apart."""
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


@torch.no_grad()
def decode(model, z: torch.Tensor) -> np.ndarray:
    return model.decode(z).reshape(-1, 28, 28).numpy()


# ---- the sections ---------------------------------------------------------------------------

def data_checksums(params: dict) -> list[dict]:
    expected = expected_checksums(params)
    rows = []
    for name in FILES:
        actual = sha256_file(raw_dir(params) / name)
        rows.append({"file": name, "sha256": actual, "verified": actual == expected.get(name)})
    return rows


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


def latent_manifold(model, n: int = 15) -> bytes:
    """The decoder over a 2-D latent plane: an n x n grid at the N(0, 1) quantiles 5 %..95 %."""
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    z = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2)
    return png_bytes(grey_image(tile_grid(decode(model, z), n), scale=2))


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


def plot_kl_per_dimension(kl: np.ndarray, unused_below: float) -> bytes:
    d = len(kl)
    fig = Figure(figsize=(min(12, max(4.5, 0.45 * d + 2)), 3.4))
    ax = fig.subplots()
    colours = ["#1f77b4" if v >= unused_below else "#bbbbbb" for v in kl]
    bars = ax.bar(np.arange(d), kl, color=colours)
    if d <= 32:
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
        ax.set_xticks(np.arange(d), [f"z{j}" for j in range(d)])
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("mean KL (nats per image)")
    clean_axes(ax)
    return figure_png(fig)


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
        "n": int(len(table)), "hover": int(hover), "spriteColumns": SPRITE_COLUMNS,
        "xy": base64.b64encode(q.tobytes()).decode(), "labels": base64.b64encode(labels.tobytes()).decode(),
        "rows": base64.b64encode(table["index"].to_numpy()[order[:hover]].astype("<u4").tobytes()).decode(),
        "classes": classes, "colours": [COLOURS[c % 10] for c in range(len(classes))], "centres": centres,
        "extent": [1.0, float((xy[:, 1].max() - lo[1]) / span)] if len(xy) else [1.0, 1.0],
    }
    return data, sprite


# ---- the stage ------------------------------------------------------------------------------

def read_output(path, stage: str):
    """An earlier stage's output: a DataFrame from .csv or .parquet, the object in a .json file."""
    stage_output(path, stage)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def run(params: dict) -> dict:
    r, paths, t = params["report"], params["paths"], params["train"]
    dataset = params["data"]["dataset"]
    classes = DATASETS[dataset]["classes"]
    model, config = load_model(project_path(paths["model_dir"]), "cpu")
    likelihood = config.get("likelihood", t["likelihood"])
    generator = torch.Generator().manual_seed(r["seed"])
    rng = np.random.default_rng(r["seed"])

    embeddings = project_path(paths["embeddings_dir"])
    train = read_output(embeddings / "train.parquet", "embed")
    test = read_output(embeddings / "test.parquet", "embed")
    mu_cols = [c for c in train.columns if c.startswith("mu_")]
    logvar_cols = [c for c in train.columns if c.startswith("logvar_")]
    latent_map = read_output(project_path(paths["latent_map"]), "latent_map")
    history = read_output(project_path(paths["train_history"]), "train")
    metrics = read_output(project_path(paths["train_metrics"]), "train")
    evaluation = read_output(project_path(paths["eval_metrics"]), "evaluate")
    literature = read_output(project_path(paths["literature"]), "evaluate")

    figures = {}   # file name -> PNG or GIF bytes
    log.info("latent map of %d points", len(latent_map))
    map_split = params["latent_map"]["split"]
    map_images, _ = read_split(raw_dir(params), map_split)
    title = f"UMAP of μ, {dataset} {map_split} ({len(latent_map):,} images)"
    figures["latent_map.png"] = plot_latent_map(latent_map, classes, title)
    interactive, sprite = map_data(latent_map, map_images, classes, r["hover_points"], r["seed"])
    interactive["split"] = map_split
    if config["latent_dim"] == 2:
        plane = pd.DataFrame({"x": train["mu_0"], "y": train["mu_1"], "label": train["label"]})
        figures["latent_plane.png"] = plot_latent_map(plane, classes, f"μ itself: the 2-D latent plane ({dataset} train)")
        figures["latent_manifold.png"] = latent_manifold(model)

    log.info("prior samples, reconstructions, walk")
    figures["prior_samples.png"] = prior_samples(model, r["samples_grid"], generator)
    test_images, test_labels = read_split(raw_dir(params), "test")
    # One test image per class in turn (0, 1, 2, ...), each picked at random within its class.
    picks = []
    for i in range(r["reconstructions"]):
        candidates = np.flatnonzero(test_labels == i % len(classes))
        picks.append(rng.choice(candidates) if len(candidates) else rng.integers(len(test_labels)))
    figures["reconstructions.png"], recon = reconstructions(model, test_images[picks], test_labels[picks],
                                                            classes, likelihood, generator)
    means = class_means(train[mu_cols].to_numpy(np.float32), train["label"].to_numpy(), r["walk_digits"],
                        classes, f"{embeddings / 'train.parquet'}")
    walk_names = [classes[d] for d in r["walk_digits"]]
    figures["latent_walk.png"], figures["latent_walk.gif"], walk_frames = latent_walk(
        model, means, walk_names, r["walk_steps"], r["walk_frame_ms"])
    figures["training_curves.png"] = plot_training_curves(history)
    mu_test, logvar_test = test[mu_cols].to_numpy(np.float64), test[logvar_cols].to_numpy(np.float64)
    kl = (0.5 * (mu_test ** 2 + np.exp(logvar_test) - logvar_test - 1)).mean(0)
    unused_below = 0.01
    figures["kl_per_dimension.png"] = plot_kl_per_dimension(kl, unused_below)

    figures_dir = project_path(paths["figures_dir"])
    figures_dir.mkdir(parents=True, exist_ok=True)
    for stale in figures_dir.iterdir():   # e.g. latent_plane.png of an earlier 2-D model
        if stale.name not in figures:
            stale.unlink()
    for name, data in figures.items():
        with atomic_path(figures_dir / name) as tmp:
            tmp.write_bytes(data)

    context = {
        "dataset": dataset, "classes": classes, "n_train": len(train), "n_test": len(test),
        "train": t, "latent_map_params": params["latent_map"], "report": r, "config": config,
        "likelihood": likelihood, "metrics": metrics, "history_rows": len(history),
        "evaluation": evaluation, "literature": literature, "evaluate_params": params["evaluate"],
        "recon": recon, "walk_names": walk_names, "walk_frames": walk_frames,
        "kl": [float(v) for v in kl], "kl_total": float(kl.sum()), "unused_below": unused_below,
        "active_dims": int((kl >= unused_below).sum()),
        "images": {name.replace(".", "_"): data_uri(data, "image/gif" if name.endswith(".gif") else "image/png")
                   for name, data in figures.items()},
        "map_json": json.dumps(interactive).replace("</", "<\\/"),
        "sprite": data_uri(sprite) if sprite else None, "map_split": map_split, "colours": COLOURS,
        "n_map": interactive["n"], "n_hover": interactive["hover"],
        "git": git_provenance(params), "checksums": data_checksums(params),
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "umap-learn": importlib.metadata.version("umap-learn")},
    }
    env = Environment(loader=PackageLoader("vae_pipeline", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    html = env.get_template("report.html.j2").render(**context)
    path = project_path(paths["report"])
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    log.info("%s: %.1f MB, %d figures in %s", path, len(html) / 1e6, len(figures), figures_dir)
    # The report travels with the run that trained the model it shows.
    tracking.attach_to_training_run(params, artifacts=[path, figures_dir], artifact_dir="report")
    return {"report": path, "figures": [figures_dir / name for name in figures]}


if __name__ == "__main__":
    from vae_pipeline.cli import main
    main(run)
