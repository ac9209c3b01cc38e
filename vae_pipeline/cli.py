"""The thin entry point every `python -m stages.NAME` shares."""
import logging
import sys

from vae_pipeline.files import PipelineError
from vae_pipeline.params import load_params
from vae_pipeline.redact import redact_log_record, redact_uri


def main(run) -> None:
    """Load and validate params.yaml, call `run(params)`; a PipelineError exits 2 with its message."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact_log_record)   # no credentials from a URI in any log line
    for noisy in ("numba", "matplotlib", "PIL", "urllib3", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(load_params())
    except PipelineError as e:
        print(f"error: {redact_uri(str(e))}", file=sys.stderr)
        sys.exit(2)
