"""A trained VAE on disk: <model_dir>/vae.safetensors (weights) and vae.json (its config).

Tensors and JSON only, never pickle: loading a model runs no code from the files.

Loading checks both files before it allocates anything: the config against the rules of
params.yaml's train section; the weights' header against the config. A safetensors file is
8 bytes (the header's length, little-endian), a JSON header naming each tensor's dtype,
shape and byte range, then the bytes. The header is read alone and every tensor in it
compared with what the config implies (the model built on PyTorch's "meta" device: shapes,
no memory), so a damaged or mismatched file, or one whose header claims terabytes, is
refused before a byte of weights is read. Then the weights must be finite.
"""
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vae_pipeline.files import atomic_path, damaged_output, stage_output, write_json
from vae_pipeline.model import VAE
from vae_pipeline.params import SCHEMA

WEIGHTS_FILE, CONFIG_FILE = "vae.safetensors", "vae.json"
# The config keys a model is rebuilt from, and their rules: those of params.yaml `train`.
CONFIG_RULES = {key: SCHEMA["train"][key] for key in ("latent_dim", "hidden_dims", "likelihood")}
# safetensors' names of the dtypes a model may be saved in.
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
# safetensors itself refuses a larger header.
MAX_HEADER_BYTES = 100_000_000


def save_model(model: VAE, model_dir: Path, extra_config: dict | None = None) -> None:
    """Weights as safetensors plus the config (and `extra_config`) as JSON."""
    model_dir = Path(model_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(model_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    write_json(model_dir / CONFIG_FILE, {**model.config, **(extra_config or {})})


def read_config(config_path: Path) -> dict:
    """vae.json, checked: latent_dim, hidden_dims and likelihood as params.yaml allows them."""
    try:
        config = json.loads(config_path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise damaged_output(config_path, f"not a model config ({type(e).__name__}: {e})", "train") from None
    if not isinstance(config, dict):
        raise damaged_output(config_path, f"not a model config (holds {type(config).__name__}, expected a "
                             "JSON object)", "train")
    for key, (allowed, check) in CONFIG_RULES.items():
        if key not in config:
            raise damaged_output(config_path, f"not a model config (missing key '{key}': {allowed})", "train")
        if not check(config[key]):
            raise damaged_output(config_path, f"not a model config ('{key}' is {str(config[key])[:60]}; "
                                 f"allowed: {allowed})", "train")
    return config


def expected_tensors(config: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Each tensor's shape and dtype in the weights of a model of `config`, without allocating them."""
    with torch.device("meta"):
        model = VAE.from_config(config)
    return {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in model.state_dict().items()}


def check_weights_header(weights: Path, expected: dict, config_name: str) -> None:
    """The safetensors header of `weights` names exactly the `expected` tensors, with their
    shapes and dtypes, each in its own byte range inside the file."""
    size = weights.stat().st_size
    with open(weights, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise damaged_output(weights, f"not a valid safetensors file ({size} bytes, shorter than the "
                                 "8-byte header length)", "train")
        length = int.from_bytes(head, "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise damaged_output(weights, f"not a valid safetensors file (its header length is {length} "
                                 f"bytes, in a file of {size} bytes; the limit is {MAX_HEADER_BYTES})", "train")
        try:
            header = json.loads(f.read(length))
        except (ValueError, RecursionError) as e:
            raise damaged_output(weights, f"not a valid safetensors file (header: {type(e).__name__}: "
                                 f"{str(e)[:100]})", "train") from None
    if not isinstance(header, dict):
        raise damaged_output(weights, "not a valid safetensors file (its header is not a JSON object)", "train")
    mismatch = f"weights do not match {config_name}"
    names = header.keys() - {"__metadata__"}
    if names != expected.keys():
        missing, extra = sorted(expected.keys() - names), sorted(names - expected.keys())
        raise damaged_output(weights, f"{mismatch} (missing tensors: {', '.join(missing) or 'none'}; "
                             f"unexpected: {', '.join(extra)[:200] or 'none'})", "train")
    data_bytes = size - 8 - length
    for name, (shape, dtype) in expected.items():
        entry = header[name]
        if not isinstance(entry, dict):
            raise damaged_output(weights, f"not a valid safetensors file (tensor {name}: no dtype, shape and "
                                 "offsets)", "train")
        found_shape, found_dtype = entry.get("shape"), entry.get("dtype")
        if found_shape != list(shape) or found_dtype != SAFETENSORS_DTYPES[dtype]:
            raise damaged_output(weights, f"{mismatch} ({name} is {str(found_dtype)[:20]} "
                                 f"{str(found_shape)[:60]} in the file, {config_name} implies "
                                 f"{SAFETENSORS_DTYPES[dtype]} {list(shape)})", "train")
        offsets = entry.get("data_offsets")
        nbytes = math.prod(shape) * dtype.itemsize
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] and offsets[1] - offsets[0] == nbytes and offsets[1] <= data_bytes):
            raise damaged_output(weights, f"not a valid safetensors file (tensor {name}: byte range "
                                 f"{str(offsets)[:60]} for {nbytes} bytes, in {data_bytes} bytes of data)",
                                 "train")


def load_model(model_dir: Path, device: str | torch.device = "cpu") -> tuple[VAE, dict]:
    """The model saved by `save_model`, in eval mode, and its config; both files checked first."""
    model_dir = Path(model_dir)
    weights, config_path = model_dir / WEIGHTS_FILE, model_dir / CONFIG_FILE
    for path in (weights, config_path):
        stage_output(path, "train")
    config = read_config(config_path)
    check_weights_header(weights, expected_tensors(config), config_path.name)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own types for what the header check does not cover
        raise damaged_output(weights, f"not a valid safetensors file ({e})", "train") from None
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise damaged_output(weights, f"tensor {name} holds NaN or infinite values", "train")
    model = VAE.from_config(config)
    model.load_state_dict(state)   # the header check made sure every name and shape fits
    return model.to(device).eval(), config
