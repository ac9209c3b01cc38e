"""A trained VAE on disk: <model_dir>/vae.safetensors (weights) and vae.json (its config).

Tensors and JSON only, never pickle: loading a model runs no code from the files.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vae_pipeline.files import PipelineError, atomic_path, stage_output, write_json
from vae_pipeline.model import VAE


def save_model(model: VAE, model_dir: Path, extra_config: dict | None = None) -> None:
    """Weights as safetensors plus the config (and `extra_config`) as JSON."""
    model_dir = Path(model_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(model_dir / "vae.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(model_dir / "vae.json", {**model.config, **(extra_config or {})})


def load_model(model_dir: Path, device: str | torch.device = "cpu") -> tuple[VAE, dict]:
    """The model saved by `save_model`, in eval mode, and its config."""
    model_dir = Path(model_dir)
    weights, config_path = model_dir / "vae.safetensors", model_dir / "vae.json"
    for path in (weights, config_path):
        stage_output(path, "train")
    try:
        config = json.loads(config_path.read_text())
        model = VAE.from_config(config)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise PipelineError(f"{config_path}: not a model config ({type(e).__name__}: {e}); "
                            "rerun the train stage (dvc repro train)") from None
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors raises its own types for corrupt files
        raise PipelineError(f"{weights}: not a valid safetensors file ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise PipelineError(f"{weights}: weights do not match {config_path.name} "
                            f"({str(e).splitlines()[0]}); rerun the train stage (dvc repro train)") from None
    return model.to(device).eval(), config
