"""The run record: which MLflow run trained each model, so later stages, `make serve` and retrains find it.

params.yaml paths.run_record maps the hash of a model's files to the record of the run that
trained them. It is kept out of the model folder: a run id is new on every training, so inside
models/ it would give identical weights a new hash in dvc.lock and rerun everything downstream.
It is no DVC output either (git-ignored, like the tracking store). Keyed by the model's hash, it
also names the right run when DVC restores an earlier model from its run cache, or when
`dvc exp apply` brings in the model of an experiment that ran in a temporary copy.

It lives in the project's home (files.project_home), beside the tracking store, not in the
checkout that trains: a temporary copy of `dvc exp run --temp` or of the queue is deleted when
its experiment ends, and a worktree's model is the main checkout's after a merge. Records are
only ever added, under a lock on the record's folder: two queued experiments finishing at once
both keep theirs.
"""
import hashlib
import json
from pathlib import Path

from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT, home_path, locked, project_path, sha256_file, write_json


def model_key(model_dir: Path) -> str:
    """The SHA-256 of a model folder: of each file's name and SHA-256, in name order."""
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file())
    listing = "".join(f"{p.relative_to(model_dir)}\0{sha256_file(p)}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def record_path(params: dict, root: Path = ROOT) -> Path:
    """paths.run_record, in the home of the project at `root`."""
    return home_path(params["paths"]["run_record"], root)


def run_records(params: dict, root: Path = ROOT) -> dict[str, dict]:
    """paths.run_record: {model_key: the record of the run that trained that model}; {} when missing."""
    path = record_path(params, root)
    if not path.exists():
        return {}
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PipelineError(f"{path}: unreadable run record ({e}); delete it (later stages then "
                            "attach nothing to MLflow until the next training)") from None
    if not isinstance(records, dict):
        raise PipelineError(f"{path}: expected a JSON object of run records; delete it")
    return records


def record_training_run(params: dict, record: dict) -> None:
    """Add `record` as the run that trained the model now in paths.model_dir (a staged folder, when
    the train stage has not moved it in yet: the record of a model that never moves in harms nothing)."""
    key = model_key(project_path(params["paths"]["model_dir"]))
    path = record_path(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent):
        write_json(path, {**run_records(params), key: record})


def training_run(params: dict, root: Path = ROOT) -> dict | None:
    """The run that trained the model now in paths.model_dir (of the project at `root`), or None."""
    model_dir = Path(root) / params["paths"]["model_dir"]
    if not model_dir.is_dir():
        return None
    return run_records(params, root).get(model_key(model_dir))
