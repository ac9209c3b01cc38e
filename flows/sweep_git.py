"""The sweep in git and DVC: the commit its points run, pushed where they clone it, and their
experiments brought back into the project afterwards (`dvc exp show` lists them).

Credentials for the stack's git server travel through the environment, as the workers send
them (flows/sweep_point.py git_auth_env): never on a command line or in a URL.
"""
import os
import subprocess
import sys
from pathlib import Path

import yaml

import flows.sweep_point
from flows.dvc_runner import stage_env
from flows.sweep_args import OPERATING
from vae_pipeline.environment import SECRET_VALUES, STACK_GIT_PASSWORD, STACK_GIT_USER
from vae_pipeline.errors import PipelineError, redact_uri
from vae_pipeline.params import PARAMS_FILE, Paths
from vae_pipeline.provenance import git_provenance

PARAMS = PARAMS_FILE.name                 # params.yaml, as git names it in the project


def dvc(project: Path, *args: str) -> str:
    """Run `dvc <args>` in `project`; its output, or PipelineError naming the command."""
    found = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                           env=stage_env({}))
    if found.returncode != 0:
        raise PipelineError(f"{project}: `dvc {' '.join(args)}` failed: {found.stderr.strip()[-1500:]}")
    return found.stdout.strip()


def sweep_commit(project: Path, paths: Paths) -> str:
    """The commit every point runs: the project's HEAD, refused when a tracked input differs from it
    (the points would silently run other code or params than the workspace holds). params.yaml
    differing only in its operating sections does not count: the points get those from the sweep."""
    git = git_provenance(paths, project)
    if git["dirty"] is None:
        raise PipelineError(f"{project}: a sweep runs a git commit, but {git['commit']}; commit the project first")
    changes = [path for path in git["changes"] if path != PARAMS or stage_sections_changed(project)]
    if changes:
        named = [f"{PARAMS} ({', '.join(stage_sections_changed(project))})" if path == PARAMS else path
                 for path in changes]
        raise PipelineError(f"{project}: uncommitted changes to {', '.join(named)}; the sweep runs commit "
                            f"{git['commit'][:12]} on its workers: `git commit` (or `git stash`) them first")
    return git["commit"]


def stage_sections_changed(project: Path) -> list[str]:
    """The sections of params.yaml that differ from HEAD's and are not operating sections (the stages'),
    or ["unreadable"] when either side is no mapping."""
    shown = subprocess.run(["git", "show", f"HEAD:{PARAMS}"], cwd=project, capture_output=True, text=True)
    try:
        head = yaml.safe_load(shown.stdout) if shown.returncode == 0 else {}
        now = yaml.safe_load((project / PARAMS).read_text())
    except (OSError, yaml.YAMLError):
        return ["unreadable"]
    if not isinstance(head, dict) or not isinstance(now, dict):
        return ["unreadable"]
    return sorted(section for section in {*head, *now}
                  if section not in OPERATING and head.get(section) != now.get(section))


def git_env(url: str) -> dict:
    """This process's environment plus git's basic auth for `url`, from the stack's variables."""
    return {**os.environ, **flows.sweep_point.git_auth_env(url, os.environ.get(STACK_GIT_USER),
                                                             os.environ.get(STACK_GIT_PASSWORD))}


def scrubbed(text: str, env: dict) -> str:
    """`text` without the values of the secret variables of `env`."""
    return flows.sweep_point.scrub(text, flows.sweep_point.secrets_of(list(SECRET_VALUES), env))


def push_commit(project: Path, git_url: str, commit: str, branch: str, logger) -> None:
    """Put the sweep's commit on the stack's git server as `branch` (credentials through the
    environment, as the workers send them: never on a command line)."""
    env = git_env(git_url)
    logger.info("pushing commit %s to %s as %s", commit[:12], redact_uri(git_url), branch)
    pushed = subprocess.run(["git", "push", "-q", "--force", git_url, f"{commit}:refs/heads/{branch}"],
                            cwd=project, env=env, capture_output=True, text=True)
    if pushed.returncode != 0:
        message = scrubbed(pushed.stderr.strip(), env)
        raise PipelineError(f"git push of commit {commit[:12]} to {redact_uri(git_url)} failed: {message}")


def pull_experiments(project: Path, where: dict, commit: str, names: list[str], logger) -> None:
    """Bring the points' experiments into the project, so `dvc exp show` lists them: their refs
    (DVC's refs/exps/<commit[:2]>/<commit[2:]>/<name>) fetched from the stack's git by git itself, which
    takes the credentials from the environment (`dvc exp pull` would need them in the URL, on the
    command line or in the project's git config). Local points pushed straight into the project."""
    if not where["push"] or not names:
        return
    refs = [f"refs/exps/{commit[:2]}/{commit[2:]}/{name}" for name in names]
    env = git_env(where["git_url"])
    fetched = subprocess.run(["git", "fetch", "-q", "--force", where["git_url"], *(f"{ref}:{ref}" for ref in refs)],
                             cwd=project, env=env, capture_output=True, text=True)
    if fetched.returncode != 0:
        message = scrubbed(fetched.stderr.strip(), env)
        logger.warning("fetching the experiments from %s failed (they stay there): %s",
                       redact_uri(where["git_url"]), message)
