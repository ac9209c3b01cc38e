"""The environment variables the project sets or reads between its parts: each name defined once.

The flows, the stack, the benchmarks and the tests import them from here. Two readers cannot
import the project and get the names another way: flows/sweep_point.py (shipped to Dask workers
by value) gets them in its recipe from flows/sweep.py, and the Makefile exports TELEMETRY_OFF
itself (tests/unit/test_facts_once.py checks that its exports equal these).
"""

# Quiet and offline: no telemetry from DVC, MLflow or Prefect, in every process the project starts.
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",    # also the only switch that stops the Prefect server's heartbeat
    "DVC_NO_ANALYTICS": "1",
}

# What the team stack gives its clients (stack/settings.py client_env writes them into .stack/env
# and a worker kit's env; the sweep and the stack's git service read them).
STACK_GIT_URL = "VAE_STACK_GIT_URL"                 # the stack's git repository over HTTP
STACK_GIT_USER = "VAE_STACK_GIT_USER"               # its Basic auth user ...
STACK_GIT_PASSWORD = "VAE_STACK_GIT_PASSWORD"       # ... and password
STACK_DASK_ADDRESS = "VAE_STACK_DASK_ADDRESS"       # the stack's Dask scheduler (tls://host:port)
STACK_KIT = "VAE_STACK_KIT"                         # a worker kit's env: the kit's folder, where it was written
# Set by `source .stack/env` (its path): errors then name the stack and the way back (deactivate_stack).
STACK_ENV = "VAE_STACK_ENV"
STACK_LEAVE = "deactivate_stack"                    # the shell function .stack/env defines: unset what it set

# Variables whose values are secrets: no output line of a sweep point may show them.
SECRET_VALUES = (STACK_GIT_PASSWORD, "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING")
