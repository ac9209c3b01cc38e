"""The thin entry point every `python -m stages.NAME` shares."""
import logging
import sys

from vae_pipeline.files import PipelineError
from vae_pipeline.params import load_params


def main(run) -> None:
    """Load and validate params.yaml, call `run(params)`; a PipelineError exits 2 with its message."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("numba", "matplotlib", "PIL", "urllib3", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(load_params())
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
