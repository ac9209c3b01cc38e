"""params.yaml as the stages read it: the rules of every section a stage reads, and the loader.

One place for every knob: a stage calls `load_params()` and reads
`params["train"]["beta"]`. A wrong type, an out-of-range value or an unknown
key stops the stage with a message naming the key and what is allowed.

By concern: PIPELINE here holds the sections the stages read (their code deps in dvc.yaml
include this file); the operating settings that no stage reads (prefect, sweep, retrain,
stack) have their rules in vae_pipeline/settings.py, which the flows and commands load,
so a change to a port rule reruns no stage.
"""
from pathlib import Path

import yaml

from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT

PARAMS_FILE = ROOT / "params.yaml"


# A rule is (description of what is allowed, function value -> bool).
def integer(lo=None, hi=None):
    bounds = " and ".join(s for s in (lo is not None and f">= {lo}", hi is not None and f"<= {hi}") if s)
    return (f"an integer {bounds}".strip(),
            lambda v: isinstance(v, int) and not isinstance(v, bool)
            and (lo is None or v >= lo) and (hi is None or v <= hi))


def number(lo=None, above=None):
    bound = f" >= {lo}" if lo is not None else f" > {above}" if above is not None else ""
    return (f"a number{bound}",
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
            and (lo is None or v >= lo) and (above is None or v > above))


def choice(*values):
    return (f"one of {', '.join(map(str, values))}", lambda v: v in values)


def text():
    return ("a string", lambda v: isinstance(v, str) and v != "")


def address():
    """One IP address a server can bind: not the unspecified (wildcard) address, which binds every network."""
    import ipaddress

    def ok(v):
        try:
            return not ipaddress.ip_address(v).is_unspecified
        except (TypeError, ValueError):
            return False
    return ("one IP address (not a wildcard address)", ok)


def boolean():
    return ("true or false", lambda v: isinstance(v, bool))


def optional(rule):
    return (f"null or {rule[0]}", lambda v: v is None or rule[1](v))


def list_of(rule, min_len=1):
    return (f"a list of at least {min_len} items, each {rule[0]}",
            lambda v: isinstance(v, list) and len(v) >= min_len and all(rule[1](x) for x in v))


def mapping_of(rule):
    return (f"a mapping of names to {rule[0]}",
            lambda v: isinstance(v, dict) and all(isinstance(k, str) and rule[1](x) for k, x in v.items()))


# Params that change how fast a stage runs, never what it writes (MKL's strict mode: the same
# numbers on any thread count, vae_pipeline/cli.py): a sweep point's `dvc exp run` command
# leaves them out, and `make exps` (commands/exps.py) does not show them.
SPEED_ONLY = ("train.threads",)

PIPELINE = {
    "paths": {
        # Every file the stages write, named once: dvc.yaml reads these too.
        "raw_dir": text(),            # downloads land in <raw_dir>/<dataset>/
        "model_dir": text(),          # vae.safetensors + vae.json
        "run_record": text(),         # model hash -> its MLflow run (tracking/record.py; not a DVC output)
        "tracking_store": text(),     # the embedded MLflow store (SQLite) and its artifacts, when no server is
        "tracking_artifacts": text(), # named; these three lie in the project's home (files.project_home)
        "checkpoint_dir": text(),     # per-epoch training checkpoints (not a DVC output)
        "train_metrics": text(),      # the train stage's headline figures (DVC metrics)
        "train_detail": text(),       # ... and the rest (vae_pipeline.artifacts TRAIN_DETAIL)
        "train_history": text(),
        "embeddings_dir": text(),     # train.parquet + test.parquet
        "compare_report": text(),     # commands/compare.py: runs of the MLflow experiment side by side

        "latent_map": text(),         # UMAP of mu: x, y, label, index
        "report": text(),             # the self-contained HTML report
        "figures_dir": text(),        # the report's figures as PNG files

        "sweep_report": text(),
        "sweep_results": text(),
        "champion": text(),           # flows/retrain.py: the champion gate's decision

        "eval_metrics": text(),       # the evaluate stage's headline figures (DVC metrics)
        "eval_detail": text(),        # ... and its detail (vae_pipeline.artifacts EVAL_DETAIL)
        "literature": text(),
    },
    "data": {
        "dataset": choice("mnist", "fashion-mnist"),
        "sources": optional(list_of(text())),          # null: the dataset's own list
        "sha256": optional(mapping_of(text())),        # null: the pinned checksums
        "connect_timeout": number(above=0),
        "binarize": choice("none", "static", "dynamic"),
        "binarize_seed": integer(0),
    },
    "train": {
        "latent_dim": integer(1, 1024),
        "hidden_dims": list_of(integer(1, 100_000)),
        "batch_size": integer(1),
        "epochs": integer(1),
        "lr": number(above=0),
        "beta": number(lo=0),
        "likelihood": choice("bernoulli", "gaussian"),
        "seed": integer(0),
        "device": choice("auto", "cpu", "cuda"),
        "threads": integer(0),                         # 0: the idle cores, at least 1
        "eval_batch_size": integer(1),
        "precision": choice("fp32", "bf16", "auto"),   # matmuls in training; auto: bf16 where native

        "kl_warmup_epochs": integer(0),
    },
    "embed": {
        "batch_size": integer(1),
    },
    "mlflow": {
        "tracking_uri": optional(text()),              # null: env MLFLOW_TRACKING_URI, else sqlite in the repo
        "experiment_name": text(),
        "model_name": text(),                          # the registered model (the decoder)
        "connect_timeout": number(above=0),
        "compare_max_runs": integer(1),
        "system_metrics_interval": optional(number(above=0)),   # null: no system metrics
    },
    "latent_map": {
        "split": choice("train", "test"),
        "subsample": optional(integer(2)),             # null: every row of the split
        "n_neighbors": integer(2),
        "min_dist": number(lo=0),
        "metric": choice("euclidean", "manhattan", "chebyshev", "cosine", "correlation"),
        "neighbours": choice("exact", "nndescent"),    # exact: scikit-learn; nndescent: UMAP's own search
        "random_state": optional(integer(0)),         # null: not reproducible, uses every core
    },
    "report": {
        "seed": integer(0),
        "samples_grid": integer(1, 40),                # prior samples: an N x N grid
        "reconstructions": integer(1, 100),
        "walk_digits": list_of(integer(0, 9), min_len=2),
        "walk_steps": integer(1, 100),                 # images per leg, from one class mean to the next
        "walk_frame_ms": integer(10, 10_000),          # GIF frame time
        "hover_points": integer(0, 20_000),            # map points that show their image on hover
    },
    "serve": {
        "port": integer(1, 65535),
        "max_batch": integer(1),                       # rows per request
    },
    "evaluate": {
        "iwae_samples": integer(1),
        "batch_size": integer(1),
        "seed": integer(0),
        "active_threshold": number(lo=0),
        "knn_neighbors": integer(1),
        "trustworthiness_samples": integer(0),
        "trustworthiness_neighbors": integer(1),
    },
}


def validate(params: dict, schema: dict = PIPELINE, source: str = "params.yaml", whole: bool = False) -> dict:
    """Return `params` if every section of `schema` and its keys match, else raise PipelineError.

    Sections outside `schema` are left to their own loader, unless `whole`: then `schema` is
    every section there is (vae_pipeline.settings), and any other is an unknown section."""
    if not isinstance(params, dict):
        raise PipelineError(f"{source}: expected a mapping of sections, got {type(params).__name__}")
    errors = []
    for section in (params.keys() - schema.keys()) if whole else ():
        errors.append(f"unknown section '{section}' (allowed: {', '.join(schema)})")
    for section, rules in schema.items():
        values = params.get(section)
        if not isinstance(values, dict):
            errors.append(f"missing section '{section}'")
            continue
        for key in values.keys() - rules.keys():
            errors.append(f"unknown key '{section}.{key}' (allowed: {', '.join(rules)})")
        for key, (allowed, check) in rules.items():
            if key not in values:
                errors.append(f"missing key '{section}.{key}' ({allowed})")
            elif not check(values[key]):
                errors.append(f"'{section}.{key}' is {values[key]!r}; allowed: {allowed}")
    if errors:
        raise PipelineError(f"{source}: invalid params:\n  " + "\n  ".join(sorted(errors)))
    return params


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


def load_params(path: Path | None = None) -> dict:
    """Read params.yaml (the project's, or `path`) and check the sections the stages read."""
    params, source = read_params(path)
    return validate(params, PIPELINE, source)
