"""The article's VAE and its loss (Kingma & Welling 2014; as in pytorch/examples vae/main.py), where it
runs, and its files.

Encoder 784 -> hidden -> (mu, log sigma^2); decoder latent -> hidden -> 784; `activation` between
layers (ReLU, the article's; train.activation).
The decoder returns logits: the loss uses them directly (numerically stable
BCE), and `decode` applies the sigmoid to give pixel values in [0, 1].

Where torch runs: the device, how many CPU threads, and whether matmuls run in bfloat16.

On disk, <model_dir>/vae.safetensors (weights) and vae.json (its config): tensors and JSON only, never
pickle: loading a model runs no code from the files.

Loading checks both files before it allocates anything: the config against the rules of
params.yaml's train section; the weights' header against the config. A safetensors file is
8 bytes (the header's length, little-endian), a JSON header naming each tensor's dtype,
shape and byte range, then the bytes. The header is read alone and every tensor in it
compared with what the config implies (the model built on PyTorch's "meta" device: shapes,
no memory), so a damaged or mismatched file, or one whose header claims terabytes, is
refused before a byte of weights is read. Then the weights must be finite.

Around it: ml/evaluation.py (log p(x|z) in nats, the IWAE estimate), tracking/registry.py (the decoder in MLflow).
"""
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vae_pipeline.errors import PipelineError, damaged_output, stage_output
from vae_pipeline.files import atomic_path, write_json
from vae_pipeline.ml.data import IMAGE_PIXELS
from vae_pipeline.params import Train

log = logging.getLogger("device")

# The gaussian likelihood is N(x; decoder mean, 1/2) per pixel: -log p(x|z) is then the squared
# error plus a constant. Training minimises the squared error alone (the constant has no
# gradient); the evaluation adds the constant for a proper density (evaluation.log_likelihood).
GAUSSIAN_VARIANCE = 0.5


# train.activation's choices (a test checks it). Weightless: the weights' names are the same for each.
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus}


def mlp(sizes: list[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers with `activation` between them (none after the last)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    def __init__(self, *, latent_dim: int, hidden_dims: list[int], activation: str = "relu"):
        super().__init__()
        hidden = list(hidden_dims)
        self.config = {"latent_dim": latent_dim, "hidden_dims": hidden}
        if activation != "relu":   # vae.json names it only when not the default: a default model's file is as before
            self.config["activation"] = activation
        self.encoder = nn.Sequential(mlp([IMAGE_PIXELS, *hidden], activation), ACTIVATIONS[activation]())
        self.to_mu = nn.Linear(hidden[-1], latent_dim)
        self.to_logvar = nn.Linear(hidden[-1], latent_dim)
        self.decoder = mlp([latent_dim, *reversed(hidden), IMAGE_PIXELS], activation)

    @classmethod
    def from_config(cls, config: "Train | dict") -> "VAE":
        """The VAE of a config holding latent_dim, hidden_dims and perhaps activation (relu when absent):
        params.yaml's train section, or vae.json."""
        activation = config["activation"] if "activation" in config.keys() else "relu"
        return cls(latent_dim=config["latent_dim"], hidden_dims=config["hidden_dims"], activation=activation)

    def encode(self, x):
        h = self.encoder(x.view(-1, IMAGE_PIXELS))
        return self.to_mu(h), self.to_logvar(h)

    def decode_logits(self, z):
        return self.decoder(z)

    def decode(self, z):
        """Pixel values in [0, 1], shape (N, 784)."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x, sample: bool = True, generator=None):
        """Logits of the reconstruction, mu and logvar. `sample=False` decodes z = mu."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator) if sample else mu
        return self.decode_logits(z), mu, logvar


class SummedBCEWithLogits(torch.autograd.Function):
    """F.binary_cross_entropy_with_logits(logits, x, reduction="sum"), twice as fast on the CPU.

    BCE with logits is softplus(l) - x*l, and softplus(l) = relu(l) - log(sigmoid(|l|)).
    torch computes softplus with log1p, which its CPU kernels do not vectorise (2.4 ms
    for one batch's 100,352 pixels, 15% of a float32 training step on one thread);
    sigmoid and log are vectorised (0.1 and 0.35 ms). The value is the same
    up to float rounding (below 1e-7 per pixel); the gradient is the exact one,
    sigmoid(l) - x, written out so the backward pass is one sigmoid.

    Summed per image first, then over the batch: one .sum() over a whole batch is a
    parallel reduction whose rounding follows the thread count (train.threads 0 takes
    the idle cores), and the loss figures in train.json would differ from rerun to rerun.
    """

    @staticmethod
    def forward(ctx, logits, x):
        ctx.save_for_backward(logits, x)
        return (F.relu(logits) - x * logits - torch.log(torch.sigmoid(logits.abs()))).sum(-1).sum()

    @staticmethod
    def backward(ctx, grad):
        logits, x = ctx.saved_tensors
        grad_x = -grad * logits if ctx.needs_input_grad[1] else None
        return grad * (torch.sigmoid(logits) - x), grad_x


def reparameterize(mu, logvar, generator=None):
    """z = mu + sigma * eps with eps ~ N(0, I): sampling that gradients can pass through."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)


def kl_divergence(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, I)) in closed form, per sample and latent dimension."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)


def reconstruction_loss(logits, x, likelihood: str):
    """-log p(x|z) up to a constant, summed over pixels and batch, in float32:
    BCE (bernoulli) or squared error / (2 GAUSSIAN_VARIANCE) (gaussian)."""
    x = x.view(-1, IMAGE_PIXELS)
    logits = logits.float()  # under bf16 autocast the decoder's logits are bf16: sum in float32
    if likelihood == "bernoulli":
        return SummedBCEWithLogits.apply(logits, x)
    # Per image first, then the batch (as the fast BCE): one whole-batch sum would round by thread count.
    squared_error = F.mse_loss(torch.sigmoid(logits), x, reduction="none").sum(-1).sum()
    return squared_error / (2 * GAUSSIAN_VARIANCE)


def vae_loss(logits, x, mu, logvar, beta: float, likelihood: str):
    """(loss, reconstruction, kl), each summed over the batch: loss = recon + beta * KL."""
    recon = reconstruction_loss(logits, x, likelihood)
    kl = kl_divergence(mu.float(), logvar.float()).sum()
    return recon + beta * kl, recon, kl


def k_draw_loss(model, x, beta: float, likelihood: str, objective: str, k: int, bf16: bool = False):
    """(loss, reconstruction, kl) summed over the batch, from k draws z_1..z_k ~ q(z|x) per image.

    iwae: -log (1/k) sum_i w_i, log w_i = log p(x|z_i) + beta (log p(z_i) - log q(z_i|x)): Burda et al.'s
    bound at beta 1 (a KL warm-up scales the prior's term). elbo: the k draws' mean of recon + beta KL.
    Reported as vae_loss reports them: recon the draws' mean, kl the closed form.
    """
    x = x.view(-1, IMAGE_PIXELS)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        mu, logvar = model.encode(x)
        eps = torch.randn((k, *mu.shape), device=x.device)               # float32, also under bf16 autocast
        z = mu + eps * torch.exp(0.5 * logvar)                                    # (k, images, latent)
        logits = model.decode_logits(z).float()
    mu, logvar, z, eps = mu.float(), logvar.float(), z.float(), eps.float()
    recon = ((F.relu(logits) - x * logits - torch.log(torch.sigmoid(logits.abs()))).sum(-1)  # BCE per image, draw
             if likelihood == "bernoulli" else (torch.sigmoid(logits) - x).pow(2).sum(-1) / (2 * GAUSSIAN_VARIANCE))
    kl = kl_divergence(mu, logvar).sum()
    if objective == "elbo":
        return recon.mean(0).sum() + beta * kl, recon.mean(0).sum(), kl
    # log p(z) - log q(z|x); the 2 pi terms cancel.
    log_prior_ratio = -0.5 * (z.pow(2) - eps.pow(2) - logvar).sum(-1)              # (k, images)
    log_weights = -recon + beta * log_prior_ratio
    loss = -(torch.logsumexp(log_weights, dim=0) - math.log(k)).sum()
    return loss, recon.mean(0).sum(), kl


# ---- where it runs ----------------------------------------------------------------------------

def setup_torch(device: str, threads: int) -> torch.device:
    """Pick the device (`auto`: CUDA when present) and set torch's CPU thread count.

    threads 0 means the cores that are idle now, at least one. More threads than
    free cores makes torch far slower, not faster: each of the ~30 parallel
    regions of a training step waits for the thread that another process has
    pushed off its core (on this 2-core machine, with other work running, an
    epoch took 23-190 s on 2 threads against 5-8 s on 1).
    """
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads or idle_cores(cores))
    if device == "cuda" and not torch.cuda.is_available():
        raise PipelineError("params.yaml: train.device is 'cuda' but no CUDA device is available "
                            "(use 'auto' or 'cpu')")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def idle_cores(cores: int, seconds: float = 0.25) -> int:
    """How many of `cores` are idle, from the machine's CPU time in /proc/stat over `seconds`."""
    def idle_and_total():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]  # the "cpu" line: all CPUs summed
        return ticks[3] + ticks[4], sum(ticks)                   # idle + iowait, all
    try:
        idle_before, total_before = idle_and_total()
        time.sleep(seconds)
        idle_after, total_after = idle_and_total()
    except (OSError, ValueError, IndexError):  # not Linux: trust the affinity mask
        return cores
    idle = (idle_after - idle_before) / max(total_after - total_before, 1) * (os.cpu_count() or cores)
    chosen = max(1, min(cores, int(idle + 0.2)))  # a core 80% idle counts as free
    log.info("train.threads 0: %.1f of %d cores idle, using %d thread%s", idle, cores, chosen,
             "s" * (chosen > 1))
    return chosen


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether training runs its matmuls in bfloat16 (train.precision).

    auto: yes where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on,
    and CPUs with AVX512-BF16 or AMX (torch's own checks; private, hence the guard).
    """
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:
        return False


# ---- on disk: vae.safetensors + vae.json -------------------------------------------------------

WEIGHTS_FILE, CONFIG_FILE = "vae.safetensors", "vae.json"
# The config keys a model is rebuilt from, and their rules: those of params.yaml `train`.
CONFIG_RULES = {key: Train.rule(key) for key in ("latent_dim", "hidden_dims", "likelihood")}
OPTIONAL_CONFIG_RULES = {"activation": Train.rule("activation")}     # absent: the default (relu)
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
    for key, rule in {**CONFIG_RULES, **OPTIONAL_CONFIG_RULES}.items():
        if key not in config and key in CONFIG_RULES:
            raise damaged_output(config_path, f"not a model config (missing key '{key}': {rule.allowed})", "train")
        if key in config and not rule.check(config[key]):
            raise damaged_output(config_path, f"not a model config ('{key}' is {str(config[key])[:60]}; "
                                 f"allowed: {rule.allowed})", "train")
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
