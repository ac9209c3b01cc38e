"""The report's figures: PNG and GIF bytes made from the model and the earlier stages' outputs.

Each function returns the bytes of one picture (or a few); stages/report.py puts them into
the page's sections. Same inputs, same bytes: no figure depends on the time of the run
(PNG metadata left out), and every random draw comes from a generator the caller seeds.
"""
import io

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image

from vae_pipeline.errors import PipelineError
from vae_pipeline.ml.data import IMAGE_SIZE
from vae_pipeline.ml.model import reconstruction_loss

# matplotlib's tab10: the map's colours, in the PNGs and in the page's JavaScript alike.
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MANIFOLD_GRID = 15     # a 2-D latent space: the decoder over a 15 x 15 grid of the plane


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
