"""The project's one error path: the error type, its messages, secrets kept out, the exit code.

A problem the user can fix (bad input, a damaged file, an unreachable server, a write
that fails) is raised as PipelineError("<file or key>: <what is wrong>; <what to do>").
Every entry point (`python -m stages.NAME`, the commands, the flows) ends in `exit_code`:
the message on stderr as `error: ...`, credentials masked, exit 2, no traceback.

Secrets: a tracking URI such as `https://alice:s3cret@mlflow.example.org` or
`postgresql://mlflow:pw@db/mlflow` carries its password in plain text. Anything the project
prints or writes that may hold such a URI goes through `redact_uri`; `main` also passes
every log line through it.
"""
import atexit
import contextlib
import logging
import os
import re
import sys
import threading
from pathlib import Path


class PipelineError(Exception):
    """A problem the user can fix (bad input, bad params, unreachable source).

    Entry points print its message and exit 2, without a traceback.
    """


def stage_output(path: Path, stage: str) -> Path:
    """`path`, written by `stage`; when it is missing, a PipelineError that says which stage to run."""
    if not path.exists():
        raise PipelineError(f"{path}: missing; run the {stage} stage first (dvc repro {stage})")
    return path


def damaged_output(path: Path, what: str, stage: str) -> PipelineError:
    """The error for `path`, written by `stage`, found damaged: the file, what is wrong, the stage to rerun."""
    return PipelineError(f"{path}: {what}; rerun the {stage} stage (dvc repro {stage})")


# scheme://userinfo@ : the userinfo runs to the last "@" before the host's end (/, ?, # or space).
USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/?#]*)@")
# ?token=... &password=... : query parameters whose name says they hold a secret.
SECRET_QUERY = re.compile(r"(?P<name>[?&][^=&\s#]*(?:pass|pwd|token|secret|key|signature|sig)[^=&\s#]*=)"
                          r"[^&\s#]*", re.IGNORECASE)
MASK = "***"


def mask_userinfo(match: re.Match) -> str:
    user, colon, _password = match["userinfo"].partition(":")
    # Keep the user name when a password follows it (it helps debugging); a lone
    # user part may itself be a token (https://TOKEN@host), so it is masked.
    kept = f"{user}:{MASK}" if colon else MASK
    return f"{match['scheme']}{kept}@"


def redact_uri(text: str) -> str:
    """`text` (a URI, or a message holding URIs) with passwords, tokens and secret query values masked."""
    text = USERINFO.sub(mask_userinfo, str(text))
    return SECRET_QUERY.sub(lambda m: m["name"] + MASK, text)


def in_one_line(e: BaseException) -> str:
    """An exception as a message quotes it: its type and the first line of its text (200 characters at most)."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


@contextlib.contextmanager
def failing_as(what: str, then: str):
    """Inside it, an error that is not a PipelineError becomes one: "<what> failed (<the error>); <then>".
    For calls into a library whose own errors (MLflow's, SQLAlchemy's, HTTP's, the disk's) say neither
    what the pipeline was doing nor what the user should do."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as e:
        raise PipelineError(f"{what} failed ({in_one_line(e)}); {then}") from None


def redact_log_record(record: logging.LogRecord) -> bool:
    """A logging filter: rewrite the record's message with secrets masked, and keep it."""
    message = record.getMessage()
    redacted = redact_uri(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    return True


def exit_code(command) -> int:
    """Call `command()`: its int result is the exit code (None: 0). A PipelineError prints
    `error: <message>` (credentials masked) and gives 2, without a traceback; so does an
    OSError of a write (no space left, no permission), naming the file."""
    try:
        result = command()
    except PipelineError as e:
        print(f"error: {redact_uri(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno is None:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {redact_uri(where + (e.strerror or str(e)))}; free space or fix the permissions, "
              "then rerun", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def main(command) -> None:
    """The entry of `python -m stages.NAME` and the commands: logging set up, then `command()` under
    exit_code; exits with its code. A stage passes `lambda: run(load_params())`."""
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
    code = exit_code(lambda: command() and None)
    quick_exit(code)


def quick_exit(code: int) -> None:
    """Exit with `code` as Python would, less its teardown of every module and object.

    A stage's process has imported torch, MLflow, pandas or UMAP: freeing all that at exit took
    0.5-1 s a process on the quiet 2-core machine, 1-3.5 s on a busy one (os._exit: 0.05 s), for
    every stage DVC runs, each on the pipeline's critical path. Everything Python's own exit does
    that matters still happens, in its order: thread pools are told to end and the other
    (non-daemon) threads are waited for, the atexit handlers run (logging's flush among them),
    stdout and stderr are flushed. Every output is already closed and renamed into place.
    """
    if sys.getprofile() or sys.gettrace():       # a profiler, debugger or coverage: they write at exit
        sys.exit(code)
    threading._shutdown()     # Python's own first step at exit: thread pools told to end, threads joined
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):     # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)
