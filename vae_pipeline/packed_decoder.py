"""The VAE's decoder packed for a web page, and the same decoding in numpy to check the packing.

The report's latent explorer decodes latent vectors in the browser
(vae_pipeline/templates/decoder.js). It gets the decoder as a list of dense layers,
ReLU between them and a sigmoid after the last, exactly as `VAE.decode` computes:
each weight matrix (out x in, row-major) as little-endian float16, half the bytes of
float32, and each bias as float32, both base64. `pack_decoder` decodes check vectors
with the packed weights and keeps float16 only where every pixel stays within
TOLERANCE of PyTorch's float32 decode; otherwise it packs float32 weights.
"""
import base64

import numpy as np
import torch
from torch import nn

TOLERANCE = 2 / 255     # the largest difference from PyTorch's decode allowed for any pixel
WEIGHT_TYPES = {"float16": "<f2", "float32": "<f4"}   # tried in this order


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
