"""The thin entry point every `python -m stages.NAME` shares."""
import logging
import os
import sys

from vae_pipeline.files import PipelineError
from vae_pipeline.params import load_params
from vae_pipeline.redact import redact_log_record, redact_uri


def exit_code(command) -> int:
    """Call `command()`: its int result is the exit code (None: 0); a PipelineError prints
    `error: <message>` (credentials masked) and gives 2, without a traceback."""
    try:
        result = command()
    except PipelineError as e:
        print(f"error: {redact_uri(str(e))}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def main(run) -> None:
    """Load and validate params.yaml, call `run(params)`; a PipelineError exits 2 with its message."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact_log_record)   # no credentials from a URI in any log line
    for noisy in ("numba", "matplotlib", "PIL", "urllib3", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The same numbers however many threads a stage gets (train.threads 0 follows the load): in
    # MKL's strict reproducibility mode a matrix product does not depend on the thread count
    # (without it, two fp32 epochs on 1 and on 2 threads end with 9 of 10 weight tensors
    # different, by up to 1e-7). MKL reads the setting at its first call, after this line.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    code = exit_code(lambda: run(load_params()) and None)
    if code:
        sys.exit(code)
