"""`make clean`: print every output named in params.yaml `paths`, one a line (the Makefile removes them).

`python -m commands.clean` prints them; each is checked to lie inside the project first.
"""
import sys
from pathlib import Path

from vae_pipeline.errors import PipelineError, exit_code
from vae_pipeline.files import ROOT
from vae_pipeline.params import Paths
from vae_pipeline.settings import load_settings

# The paths `make clean` keeps: the downloaded data (fetching it again needs the network; DVC's
# cache holds it too), the MLflow store with its artifacts, the run record (its bookkeeping), and
# UMAP's compiled code (no output: a cache of numba's).
KEPT_BY_CLEAN = ("raw_dir", "run_record", "tracking_store", "tracking_artifacts", "numba_cache")


def outputs(paths: Paths, root: Path = ROOT) -> list[str]:
    """Every path of params `paths` that `make clean` removes, each checked to lie inside the project."""
    found = []
    for key, path in paths.model_dump().items():
        if key in KEPT_BY_CLEAN:
            continue
        resolved = (root / path).resolve()
        if resolved == root.resolve() or not resolved.is_relative_to(root.resolve()):
            raise PipelineError(f"params.yaml: paths.{key} is {path!r}, outside the project or the project "
                                "itself; `make clean` removes only what lies inside it")
        found.append(path)
    return found


if __name__ == "__main__":
    sys.exit(exit_code(lambda: print("\n".join(outputs(load_settings().paths)))))
