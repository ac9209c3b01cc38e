"""params.yaml as the stages read it: one typed, checked model per section, the rules of its keys, and the loader.

One place for every knob: a stage calls `load_params()` and reads `params.train.beta`; a function
that needs one section takes that section (`tracking_uri(params.mlflow, params.paths)`). Each
section is a pydantic model (Paths to Evaluate, below): strict (no coercion: "15" is no integer,
nor is true), closed (no unknown key) and frozen: a changed config is a copy, `model_copy(update=...)`
or a dict checked again by `validate` / `Pipeline.of`. Every wrong type or value, missing or unknown
key is named in one message, a line each: the key, its value, what is allowed:

    params.yaml: invalid params:
      'train.lr' is -0.1; allowed: a number > 0
      unknown key 'train.learning_rate' (allowed: latent_dim, hidden_dims, ...)

The "allowed" text is the field's rule (integer(), number(), ... below), which also holds the
pydantic type checking it; vae_pipeline/outputs.py checks the stages' JSON files with the same rules.

By concern: Pipeline here holds the sections the stages read (their code deps in dvc.yaml include
this file); the operating settings that no stage reads (prefect, sweep, retrain, stack) are in
vae_pipeline/settings.py, which the flows and commands load: a change to a port rule reruns no stage.
"""
import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT

PARAMS_FILE = ROOT / "params.yaml"
STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)


# ---- the rules of the keys: the words of every message about a key, and its pydantic type ---------

class Rule:
    """A field's rule: `allowed`, the words every message about it uses, and `annotation`, the
    pydantic type that checks it. Written in a field as `Annotated[int, integer(1)]`: the type
    there is for the reader, the rule's annotation is what pydantic checks."""

    def __init__(self, allowed: str, annotation):
        self.allowed, self.annotation = allowed, annotation

    @cached_property
    def adapter(self) -> TypeAdapter:
        return TypeAdapter(self.annotation, config=ConfigDict(strict=True))

    def __get_pydantic_core_schema__(self, source, handler):
        return handler.generate_schema(self.annotation)

    def check(self, value) -> bool:
        """Whether `value` keeps the rule (for files checked key by key: vae.json, the metrics JSON)."""
        try:
            self.adapter.validate_python(value)
        except ValidationError:
            return False
        return True


def integer(lo=None, hi=None) -> Rule:
    bounds = " and ".join(s for s in (lo is not None and f">= {lo}", hi is not None and f"<= {hi}") if s)
    return Rule(f"an integer {bounds}".strip(), Annotated[int, Field(ge=lo, le=hi)])


def number(lo=None, above=None) -> Rule:
    """An int or a float, kept as given (1 stays 1: it is logged and written as it was read)."""
    bound = f" >= {lo}" if lo is not None else f" > {above}" if above is not None else ""
    limits = Field(ge=lo, gt=above)
    return Rule(f"a number{bound}", Union[Annotated[int, limits], Annotated[float, limits]])


def choice(*values) -> Rule:
    return Rule(f"one of {', '.join(map(str, values))}", Literal[values])


def text() -> Rule:
    return Rule("a string", Annotated[str, Field(min_length=1)])


def address() -> Rule:
    """One IP address a server can bind: not the unspecified (wildcard) address, which binds every network."""
    def bindable(value: str) -> str:
        if ipaddress.ip_address(value).is_unspecified:   # a ValueError for no address at all
            raise ValueError("a wildcard address")
        return value
    return Rule("one IP address (not a wildcard address)", Annotated[str, AfterValidator(bindable)])


def boolean() -> Rule:
    return Rule("true or false", bool)


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.allowed}", Optional[rule.annotation])


def list_of(rule: Rule, min_len=1) -> Rule:
    return Rule(f"a list of at least {min_len} items, each {rule.allowed}",
                Annotated[list[rule.annotation], Field(min_length=min_len)])


def mapping_of(rule: Rule) -> Rule:
    return Rule(f"a mapping of names to {rule.allowed}", dict[str, rule.annotation])


# ---- a section, and the config of sections ----------------------------------------------------

class Section(BaseModel):
    """One section of params.yaml: strict, closed, frozen. Also readable as a mapping, section["beta"]
    (VAE.from_config reads a Train section and vae.json's dict alike)."""
    model_config = STRICT

    @classmethod
    def rule(cls, key: str) -> Rule:
        return next(m for m in cls.model_fields[key].metadata if isinstance(m, Rule))

    def __getitem__(self, key: str):
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        return type(self).model_fields.keys()


class Config(BaseModel):
    """Sections by name, each typed: `params.train`."""
    model_config = STRICT

    @classmethod
    def of(cls, params):
        """`params` as this config: a dict is checked; a config of another kind is checked as its dict."""
        if isinstance(params, cls):
            return params
        return validate(params.model_dump() if isinstance(params, Config) else params, cls)


def validate(params, model: "type[Config] | None" = None, source: str = "params.yaml") -> Config:
    """`params` (sections as read from YAML) as the typed `model` (Pipeline unless named), else a
    PipelineError naming every key that is wrong, missing or unknown, and what is allowed.

    A Config that forbids extra keys (vae_pipeline.settings) is every section there is: any
    other is an unknown section. Otherwise the sections outside it are left to their loader."""
    model = model or Pipeline
    if not isinstance(params, dict):
        raise PipelineError(f"{source}: expected a mapping of sections, got {type(params).__name__}")
    if model.model_config.get("extra") != "forbid":
        params = {section: values for section, values in params.items() if section in model.model_fields}
    try:
        return model.model_validate(params)
    except ValidationError as error:
        problems = sorted({problem(model, params, e) for e in error.errors()})
        raise PipelineError(f"{source}: invalid params:\n  " + "\n  ".join(problems)) from None


def problem(model: type[Config], params: dict, error: dict) -> str:
    """One of pydantic's errors in the project's words: the key, what is wrong, what is allowed."""
    section, key = error["loc"][0], error["loc"][1] if len(error["loc"]) > 1 else None
    unknown = error["type"] in ("extra_forbidden", "invalid_key")
    if key is None:
        return (f"unknown section '{section}' (allowed: {', '.join(model.model_fields)})" if unknown
                else f"missing section '{section}'")    # absent, or not a mapping of keys
    rules = model.model_fields[section].annotation
    if unknown:
        return f"unknown key '{section}.{key}' (allowed: {', '.join(rules.model_fields)})"
    if error["type"] == "missing" and len(error["loc"]) == 2:
        return f"missing key '{section}.{key}' ({rules.rule(key).allowed})"
    return f"'{section}.{key}' is {params[section][key]!r}; allowed: {rules.rule(key).allowed}"


# ---- the sections the stages read -------------------------------------------------------------

# Params that change how fast a stage runs, never what it writes (MKL's strict mode: the same
# numbers on any thread count, vae_pipeline/ml/model.py): a sweep point's `dvc exp run` command
# leaves them out, and `make exps` (commands/exps.py) does not show them.
SPEED_ONLY = ("train.threads",)


class Paths(Section):
    """Every file the stages write, named once: dvc.yaml reads these too."""
    raw_dir: Annotated[str, text()]               # downloads land in <raw_dir>/<dataset>/
    model_dir: Annotated[str, text()]             # vae.safetensors + vae.json
    run_record: Annotated[str, text()]            # model hash -> its MLflow run (tracking/store.py; no DVC output)
    tracking_store: Annotated[str, text()]        # the embedded MLflow store (SQLite) and its artifacts, when no
    tracking_artifacts: Annotated[str, text()]    # server is named; these three lie in the project's home
    checkpoint_dir: Annotated[str, text()]        # per-epoch training checkpoints (not a DVC output)
    numba_cache: Annotated[str, text()]           # UMAP's compiled code, in the project's home (not an output)
    train_metrics: Annotated[str, text()]         # the train stage's headline figures (DVC metrics)
    train_detail: Annotated[str, text()]          # ... and the rest (vae_pipeline/outputs.py TRAIN_DETAIL)
    train_history: Annotated[str, text()]
    embeddings_dir: Annotated[str, text()]        # train.parquet + test.parquet
    compare_report: Annotated[str, text()]        # commands/compare.py: runs of the MLflow experiment side by side

    latent_map: Annotated[str, text()]            # UMAP of mu: x, y, label, index
    map_metrics: Annotated[str, text()]           # ... and its trustworthiness
    report: Annotated[str, text()]                # the self-contained HTML report
    figures_dir: Annotated[str, text()]           # the report's figures as PNG files

    sweep_report: Annotated[str, text()]
    sweep_results: Annotated[str, text()]
    champion: Annotated[str, text()]              # flows/retrain.py: the champion gate's decision

    eval_metrics: Annotated[str, text()]          # the evaluate stage's headline figures (DVC metrics)
    eval_detail: Annotated[str, text()]           # ... and its detail (vae_pipeline/outputs.py EVAL_DETAIL)
    literature: Annotated[str, text()]


class Data(Section):
    dataset: Annotated[str, choice("mnist", "fashion-mnist")]
    sources: Annotated[list[str] | None, optional(list_of(text()))]          # null: the dataset's own list
    sha256: Annotated[dict[str, str] | None, optional(mapping_of(text()))]   # null: the pinned checksums
    connect_timeout: Annotated[float, number(above=0)]
    binarize: Annotated[str, choice("none", "static", "dynamic")]
    binarize_seed: Annotated[int, integer(0)]


class Train(Section):
    latent_dim: Annotated[int, integer(1, 1024)]
    hidden_dims: Annotated[list[int], list_of(integer(1, 100_000))]
    batch_size: Annotated[int, integer(1)]
    epochs: Annotated[int, integer(1)]
    lr: Annotated[float, number(above=0)]
    beta: Annotated[float, number(lo=0)]
    likelihood: Annotated[str, choice("bernoulli", "gaussian")]
    seed: Annotated[int, integer(0)]
    device: Annotated[str, choice("auto", "cpu", "cuda")]
    threads: Annotated[int, integer(0)]                          # 0: the idle cores, at least 1
    eval_batch_size: Annotated[int, integer(1)]
    precision: Annotated[str, choice("fp32", "bf16", "auto")]   # matmuls in training; auto: bf16 where native

    kl_warmup_epochs: Annotated[int, integer(0)]
    activation: Annotated[str, choice("relu", "tanh", "elu", "softplus")]   # between layers (ml/model.py)
    objective: Annotated[str, choice("elbo", "iwae")]            # iwae: Burda et al.'s bound over iwae_k draws
    iwae_k: Annotated[int, integer(1, 10_000)]                   # draws of z per image (elbo: their mean)
    lr_schedule: Annotated[str, choice("none", "burda", "cosine")]   # over train.epochs (ml/training.py)
    max_minutes: Annotated[float | None, optional(number(above=0))]  # time budget; null: train.epochs alone
    # Held out of the training images for early stopping (never the test set); 0: none.
    validation_split: Annotated[float, Rule("a number >= 0 and <= 0.5", Union[
        Annotated[int, Field(ge=0, le=0)], Annotated[float, Field(ge=0, le=0.5)]])]
    patience: Annotated[int | None, Rule("null, or an integer >= 1 when train.validation_split > 0",
                                         Optional[Annotated[int, Field(ge=1)]])]

    @field_validator("patience")
    def patience_needs_held_out_images(cls, value, info: ValidationInfo):
        if value is not None and not info.data.get("validation_split"):
            raise ValueError("early stopping needs a validation split")
        return value


class Embed(Section):
    batch_size: Annotated[int, integer(1)]


class MLflow(Section):
    tracking_uri: Annotated[str | None, optional(text())]        # null: env MLFLOW_TRACKING_URI, else sqlite
    experiment_name: Annotated[str, text()]
    model_name: Annotated[str, text()]                           # the registered model (the decoder)
    connect_timeout: Annotated[float, number(above=0)]
    compare_max_runs: Annotated[int, integer(1)]
    system_metrics_interval: Annotated[float | None, optional(number(above=0))]   # null: no system metrics


class LatentMap(Section):
    split: Annotated[str, choice("train", "test")]
    subsample: Annotated[int | None, optional(integer(2))]       # null: every row of the split
    n_neighbors: Annotated[int, integer(2)]
    min_dist: Annotated[float, number(lo=0)]
    metric: Annotated[str, choice("euclidean", "manhattan", "chebyshev", "cosine", "correlation")]
    neighbours: Annotated[str, choice("exact", "nndescent")]     # exact: scikit-learn; nndescent: UMAP's own
    random_state: Annotated[int | None, optional(integer(0))]    # null: not reproducible, uses every core
    n_epochs: Annotated[int | None, optional(integer(1))]        # layout epochs; null: UMAP's own choice
    trustworthiness_samples: Annotated[int, integer(0)]          # 0: not measured
    trustworthiness_neighbors: Annotated[int, integer(1)]


class Report(Section):
    seed: Annotated[int, integer(0)]
    samples_grid: Annotated[int, integer(1, 40)]                 # prior samples: an N x N grid
    reconstructions: Annotated[int, integer(1, 100)]
    walk_digits: Annotated[list[int], list_of(integer(0, 9), min_len=2)]
    walk_steps: Annotated[int, integer(1, 100)]                  # images per leg, from one class mean to the next
    walk_frame_ms: Annotated[int, integer(10, 10_000)]           # GIF frame time
    hover_points: Annotated[int, integer(0, 20_000)]             # map points that show their image on hover


class Serve(Section):
    port: Annotated[int, integer(1, 65535)]
    max_batch: Annotated[int, integer(1)]                        # rows per request


class Evaluate(Section):
    iwae_samples: Annotated[int, integer(1)]
    batch_size: Annotated[int, integer(1)]
    seed: Annotated[int, integer(0)]
    active_threshold: Annotated[float, number(lo=0)]
    knn_neighbors: Annotated[int, integer(1)]


class Pipeline(Config):
    """The sections the stages read; params.yaml's others are vae_pipeline/settings.py's."""
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    paths: Paths
    data: Data
    train: Train
    embed: Embed
    mlflow: MLflow
    latent_map: LatentMap
    report: Report
    serve: Serve
    evaluate: Evaluate


# ---- reading params.yaml -----------------------------------------------------------------------

def read_params(path: Path | None = None) -> tuple[dict, str]:
    """params.yaml (the project's, or `path`) as read, unchecked, and its name for messages."""
    path = Path(path or PARAMS_FILE)
    try:
        params = yaml.safe_load(path.read_text())
    except OSError as e:
        raise PipelineError(f"{path}: cannot read params ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML: {e}") from None
    return params, str(path)


def load_params(path: Path | None = None) -> Pipeline:
    """Read params.yaml (the project's, or `path`) and check the sections the stages read."""
    params, source = read_params(path)
    return validate(params, Pipeline, source)
