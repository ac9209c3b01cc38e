"""The data of the report's interactive parts: the latent map's points and the latent explorer.

The map: every point, compact (uint16 coordinates, base64), and a sprite sheet of the images
shown on hover. The explorer: the μ of the selectable points, the KL per dimension (which
sliders to show), and the decoder itself, packed for the page's JavaScript.

The packed decoder: the same decoding in numpy to check the packing.

The report's latent explorer decodes latent vectors in the browser
(vae_pipeline/report/templates/decoder.js). It gets the decoder as a list of dense layers,
ReLU between them and a sigmoid after the last, exactly as `VAE.decode` computes:
each weight matrix (out x in, row-major) as little-endian float16, half the bytes of
float32, and each bias as float32, both base64. `pack_decoder` decodes check vectors
with the packed weights and keeps float16 only where every pixel stays within
TOLERANCE of PyTorch's float32 decode; otherwise it packs float32 weights.
"""
import base64

import numpy as np
import pandas as pd
import torch
from torch import nn

from vae_pipeline.ml.data import IMAGE_SIZE
from vae_pipeline.report.figures import COLOURS, grey_image, png_bytes, tile_grid

SPRITE_COLUMNS = 50    # the hover images are tiled 50 to a row in one PNG
MAX_SLIDERS = 16       # the explorer's sliders: the latent dimensions with the most KL, at most this many
DECODER_CHECKS = 500   # latent vectors drawn to check the page's packed decoder against PyTorch's
TOLERANCE = 2 / 255     # the largest difference from PyTorch's decode allowed for any pixel
WEIGHT_TYPES = {"float16": "<f2", "float32": "<f4"}   # tried in this order


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


# ---- the decoder, packed ---------------------------------------------------------------------

def decoder_layers(model) -> list[nn.Linear]:
    """The decoder's linear layers, checked to be Linear, ReLU, Linear, ..., Linear."""
    modules = list(model.decoder)
    linear, relu = modules[0::2], modules[1::2]
    if not all(isinstance(m, nn.Linear) for m in linear) or not all(isinstance(m, nn.ReLU) for m in relu):
        raise ValueError(f"the decoder is not Linear layers with ReLU between them: {model.decoder}")
    return linear


def pack_layers(layers: list[nn.Linear], weight_type: str) -> list[dict]:
    packed = []
    for layer in layers:
        weight = layer.weight.detach().cpu().numpy()
        packed.append({
            "in": int(weight.shape[1]), "out": int(weight.shape[0]), "weightType": weight_type,
            "weight": base64.b64encode(weight.astype(WEIGHT_TYPES[weight_type]).tobytes()).decode(),
            "bias": base64.b64encode(layer.bias.detach().cpu().numpy().astype("<f4").tobytes()).decode(),
        })
    return packed


def unpack_layers(packed: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight (out, in), bias (out,)) of each layer, as float32, as the page reads them."""
    layers = []
    for layer in packed["layers"]:
        weight = np.frombuffer(base64.b64decode(layer["weight"]), WEIGHT_TYPES[layer["weightType"]])
        bias = np.frombuffer(base64.b64decode(layer["bias"]), "<f4")
        layers.append((weight.astype(np.float32).reshape(layer["out"], layer["in"]), bias.astype(np.float32)))
    return layers


def decode_packed(packed: dict, z: np.ndarray) -> np.ndarray:
    """What decoder.js computes: pixel values in [0, 1], (N, 784), for latent vectors z (N, latent_dim)."""
    x = np.asarray(z, np.float64)
    layers = unpack_layers(packed)
    for i, (weight, bias) in enumerate(layers):
        x = x @ weight.T.astype(np.float64) + bias
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return 1 / (1 + np.exp(-x))


@torch.no_grad()
def pack_decoder(model, check_z: np.ndarray) -> dict:
    """The decoder in the most compact of WEIGHT_TYPES that decodes every check vector within TOLERANCE.

    The result also says how far from PyTorch it is on those vectors (`maxError`, `checked`).
    """
    layers = decoder_layers(model)
    reference = model.decode(torch.as_tensor(check_z, dtype=torch.float32)).numpy()
    for weight_type in WEIGHT_TYPES:
        packed = {"layers": pack_layers(layers, weight_type), "hidden": "relu", "output": "sigmoid"}
        error = float(np.abs(decode_packed(packed, check_z) - reference).max(initial=0.0))
        if error <= TOLERANCE:
            break
    return {**packed, "maxError": error, "checked": int(len(check_z))}
