"""A sweep across machines, for real on one machine: two worker hosts that share nothing with the
project but the network.

The test makes a bridge `vaetbr0` (10.213.0.1/24) and two network namespaces on it, vaeth1
(10.213.0.11) and vaeth2 (10.213.0.12), each with a veth pair and no other route. The team stack
(stack/) runs in a fresh copy of the project with `stack.host: 10.213.0.1`. Each worker host is a
`dask worker` in its network namespace AND its own mount and UTS namespaces, where the project,
the checkout and the pytest folders are hidden under empty tmpfs mounts: it has only the venv
(bind-mounted at /mnt/vaet/venv, its editable link to the checkout dangling), the worker kit
(`python -m stack worker-kit`) and the stack's address. A four-point sweep (2 beta x 2 latent
sizes, 5 epochs, tiny data) runs on them; once host 1 has finished a point, in the middle of its
next one every process of host 1 is killed. (The local Dask path of the same code is
tests/pipeline/test_flows.py's two-point sweep.)

Root only (ip netns, mount): elsewhere skipped, saying why. Everything made is removed in
`finally` blocks, whatever happens.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, make_project, pipeline_env, run_in, set_params
from vae_pipeline.files import ROOT

pytestmark = pytest.mark.slow

BRIDGE, BRIDGE_ADDRESS = "vaetbr0", "10.213.0.1"
MACHINES = {"vaeth1": "10.213.0.11", "vaeth2": "10.213.0.12"}
# The test stack's ports (this test's range, 15500-15599); SeaweedFS takes 15510 and the 8 above.
PORTS = {"postgres_port": 15501, "s3_port": 15502, "mlflow_port": 15503, "prefect_port": 15504,
         "git_port": 15505, "dask_port": 15506, "seaweed_port": 15510}
VENV = Path(sys.prefix).resolve()            # the venv running the tests (its real folder): the workers' too
# Five epochs: a point's MLflow run stays RUNNING for a few seconds, long enough to be caught and killed.
GRID = {"beta": [1, 4], "latent_dim": [2, 3], "epochs": 5, "threads": 1, "n_workers": 2}


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run the test (None: it can)."""
    if os.geteuid() != 0:
        return "needs root: the test makes network and mount namespaces (ip netns, unshare --mount)"
    if not (shutil.which("ip") and shutil.which("unshare")):
        return "needs `ip` (iproute2) and `unshare` (util-linux)"
    probe = f"vaetprobe{os.getpid()}"      # each pytest worker its own (a shared name: "File exists")
    made = sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


def netns_pids(name: str) -> list[int]:
    found = sh("ip", "netns", "pids", name, check=False)
    return [int(pid) for pid in found.stdout.split()] if found.returncode == 0 else []


def kill_host(name: str) -> list[int]:
    """SIGKILL every process of the namespace host (`ip netns pids NAME | xargs kill -9`)."""
    pids = netns_pids(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def remove_network() -> None:
    """Delete the namespaces (after killing what runs in them), the veths and the bridge, if present."""
    for index, name in enumerate(MACHINES, 1):
        kill_host(name)
        sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", f"vaet{index}h", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


@contextlib.contextmanager
def host_network():
    """The bridge and the two namespace hosts on it; all of it removed afterwards."""
    remove_network()                                       # what an earlier, killed run left
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for index, (name, address) in enumerate(MACHINES.items(), 1):
            outside, inside = f"vaet{index}h", f"vaet{index}n"
            sh("ip", "netns", "add", name)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", name)
            sh("ip", "link", "set", outside, "master", BRIDGE, "up")
            for cmd in (["ip", "addr", "add", f"{address}/24", "dev", inside], ["ip", "link", "set", inside, "up"],
                        ["ip", "link", "set", "lo", "up"]):
                sh("ip", "netns", "exec", name, *cmd)
        yield
    finally:
        remove_network()


# A worker host: hostname, private mounts, the venv and kit under /mnt/vaet, everything else of the
# project hidden; then a Dask worker for the stack's scheduler, run from the venv by `python -m`
# (the entry points' shebangs name the checkout's venv path, hidden here).
WORKER_SCRIPT = """
set -e
hostname "$VAET_NAME"
mount -t tmpfs -o mode=755 vaet-host /mnt
mkdir -p /mnt/vaet/venv /mnt/vaet/home /mnt/vaet/tmp
mount --bind "$VAET_VENV" /mnt/vaet/venv
for hidden in $VAET_HIDE; do mount -t tmpfs -o mode=755 vaet-hidden "$hidden"; done
set -a; . "$VAET_KIT/env"; set +a
export PATH=/mnt/vaet/venv/bin:/usr/local/bin:/usr/bin:/bin HOME=/mnt/vaet/home TMPDIR=/mnt/vaet/tmp
export PREFECT_HOME=/mnt/vaet/home/.prefect DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true
cd /mnt/vaet/home
exec /mnt/vaet/venv/bin/python -m distributed.cli.dask_worker "$VAE_STACK_DASK_ADDRESS" \
    --name "$VAET_NAME" --nworkers 1 --nthreads 1 --no-dashboard
"""


def start_worker(name: str, kit: Path, hide: list[Path], log: Path) -> subprocess.Popen:
    env = {"VAET_NAME": name, "VAET_VENV": str(VENV), "VAET_KIT": str(kit),
           "VAET_HIDE": " ".join(str(p) for p in hide), "PATH": os.environ["PATH"]}
    with open(log, "ab") as out:
        return subprocess.Popen(["ip", "netns", "exec", name, "unshare", "--mount", "--uts", "--propagation",
                                 "private", "sh", "-c", WORKER_SCRIPT], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def outermost(paths: list[Path]) -> list[Path]:
    """The folders to hide: each given one, less those inside another (a tmpfs over a folder hides
    what is below it, and a mount point below it would no longer exist)."""
    paths = sorted({Path(p).resolve() for p in paths})
    return [p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths)]


def in_host(name: str, hide: list[Path], command: str) -> subprocess.CompletedProcess:
    """Run a shell command as the worker host sees the world (its namespaces, the venv at
    /mnt/vaet/venv, the project hidden)."""
    script = (f"mount -t tmpfs vaet-host /mnt; mkdir -p /mnt/vaet/venv; mount --bind {VENV} /mnt/vaet/venv; "
              + "".join(f"mount -t tmpfs vaet-hidden {p}; " for p in hide) + command)
    return sh("ip", "netns", "exec", name, "unshare", "--mount", "--propagation", "private", "sh", "-c",
              script, check=False)


def wait_for_workers(project: Path, env: dict, count: int, timeout: float = 240) -> list[str]:
    """The addresses of the scheduler's workers, once `count` have joined."""
    probe = ("import sys; from distributed import Client\n"
             "c = Client(sys.argv[1], timeout='20s')\n"
             f"c.wait_for_workers({count}, timeout={timeout})\n"
             "print(' '.join(sorted(c.scheduler_info()['workers'])))\nc.close()\n")
    return run_in(project, "python", "-c", probe, env["VAE_STACK_DASK_ADDRESS"], env=env,
                  timeout=int(timeout) + 60).stdout.split()


def mlflow_client(env: dict):
    import mlflow

    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
    return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])


def attempts(client, experiment_id: str, host: str, status: str) -> list:
    """The MLflow runs of the sweep points tried on `host` whose status is `status` (RUNNING: now)."""
    return client.search_runs([experiment_id], filter_string=f"tags.`sweep.attempt.host` = '{host}' "
                              f"and attributes.status = '{status}'", max_results=5)


def start_sweep(project: Path, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([str(VENV_BIN / "python"), "-m", "flows.sweep"], cwd=project,
                                env={**pipeline_env(), **env}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def configure(project: Path, **sections) -> None:
    set_params(project, **sections)
    run_in(project, "git", "commit", "-qam", "sweep test settings")


@pytest.mark.reliability
@pytest.mark.xdist_group("team-stack")      # never two stacks at once (tests/conftest.py)
def test_a_sweep_on_two_namespaced_hosts_survives_a_killed_worker(tiny_source, tmp_path, reliability):
    from stack import postgres
    from stack.settings import Stack, read_env_file

    unavailable = namespaces_unavailable()      # asked here, by the one worker that runs the test
    if unavailable:
        pytest.skip(unavailable)
    try:
        postgres.bin_dir()
    except Exception as e:
        pytest.skip(str(e))
    # Not under pytest's tmp folder (mode 700): the stack's PostgreSQL runs as `postgres` when root starts it.
    base = Path(tempfile.mkdtemp(prefix="vaet-sweep-"))
    base.chmod(0o755)
    kit = Path(tempfile.mkdtemp(prefix="vaet-kit-"))      # outside every hidden folder
    project = make_project(base / "p", tiny_source)
    (base / "p").chmod(0o755)
    configure(project, stack={**PORTS, "host": BRIDGE_ADDRESS}, sweep={**GRID, "scheduler": "stack"})
    hide = outermost([base, Path(tiny_source[0]).parent, tmp_path, ROOT, VENV.parent])
    logs = tmp_path / "logs"
    logs.mkdir()
    workers, sweep = [], None
    with host_network():
        try:
            run_in(project, "python", "-m", "stack", "up", timeout=900)
            stack = Stack.from_params(project)
            env = {**read_env_file(stack.env_file), "PREFECT_HOME": str(project / ".prefect")}
            run_in(project, "python", "-m", "stack", "worker-kit", str(kit))
            # What a worker host sees: no project, no checkout; the stack only by its address.
            seen = in_host("vaeth1", hide, f"find {project} {ROOT} -mindepth 1 | wc -l; ip route; "
                           "/mnt/vaet/venv/bin/python -c 'import vae_pipeline' 2>&1 | tail -1").stdout.splitlines()
            assert seen[0] == "0" and seen[-1] == "ModuleNotFoundError: No module named 'vae_pipeline'", seen
            assert [line.split()[0] for line in seen[1:-1]] == ["10.213.0.0/24"], seen     # no other route
            workers = [start_worker(name, kit, hide, logs / f"{name}.log") for name in MACHINES]
            joined = wait_for_workers(project, env, len(MACHINES))
            assert sorted(address.split("://")[1].rsplit(":", 1)[0] for address in joined) == sorted(MACHINES.values())

            started = time.monotonic()
            sweep = start_sweep(project, env, logs / "sweep.log")
            client = mlflow_client(env)
            experiment = None
            victim = None
            while victim is None and sweep.poll() is None and time.monotonic() - started < 600:
                experiment = experiment or client.get_experiment_by_name("vae-pipeline")
                # Host 1's second point: both hosts have then done one, and host 2 must finish the rest.
                if experiment and attempts(client, experiment.experiment_id, "vaeth1", "FINISHED"):
                    victim = next(iter(attempts(client, experiment.experiment_id, "vaeth1", "RUNNING")), None)
                time.sleep(0.5)
            assert victim is not None, (logs / "sweep.log").read_text()[-3000:]
            time.sleep(0.5)                                 # in the middle of its training, well before its end
            killed_at, killed_wall = time.monotonic(), time.time()
            killed = kill_host("vaeth1")
            sweep.wait(timeout=900)
            seconds = time.monotonic() - started
            output = (logs / "sweep.log").read_text()
            assert sweep.returncode == 0, output[-4000:]
            # What the stack holds is checked before it stops.
            results = json.loads((project / "reports/sweep.json").read_text())
            points = results["points"]
            # Every point exactly once, each made by a namespace host (its hostname and its address).
            assert sorted((p["beta"], p["latent_dim"]) for p in points) == [(1, 2), (1, 3), (4, 2), (4, 3)]
            assert results["failed"] == []
            assert {p["host"] for p in points} <= set(MACHINES)
            assert {p["address"] for p in points} <= set(MACHINES.values())
            assert all(MACHINES[p["host"]] == p["address"] for p in points)
            assert {p["host"] for p in points} == set(MACHINES)          # both hosts did points
            # The killed attempt's run FAILED; the parent has four FINISHED children, one per point.
            killed_run = client.get_run(victim.info.run_id)
            assert killed_run.info.status == "FAILED"
            assert victim.info.run_id not in {p["mlflow_run_id"] for p in points}
            parent = results["mlflow_parent_run_id"]
            children = client.search_runs([experiment.experiment_id],
                                          filter_string=f"tags.mlflow.parentRunId = '{parent}'")
            finished = [r for r in children if r.info.status == "FINISHED"]
            assert sorted(r.info.run_id for r in finished) == sorted(p["mlflow_run_id"] for p in points)
            assert [r.info.run_id for r in children if r.info.status != "FINISHED"] == [victim.info.run_id]
            assert client.get_run(parent).data.metrics["points_done"] == 4
            # `dvc exp show` in the project lists the four points.
            shown = json.loads(run_in(project, "dvc", "exp", "show", "--json").stdout)
            names = {exp["name"] for rev in shown for exp in rev.get("experiments") or [] if exp.get("name")}
            assert {p["exp_name"] for p in points} <= names
            # The Prefect flow run carries the table of the points.
            table = prefect_table(env, results["prefect_flow_run_id"])
            assert sorted((row["beta"], row["latent_dim"]) for row in table) == [(1, 2), (1, 3), (4, 2), (4, 3)]
        finally:
            for worker in workers:
                stop(worker)
            if sweep is not None:
                stop(sweep)
            for name in MACHINES:
                kill_host(name)
            run_in(project, "python", "-m", "stack", "down", check=False)
            shutil.rmtree(kit, ignore_errors=True)

    shutil.rmtree(base, ignore_errors=True)
    # Recovery: from the kill to the end of the killed point's second attempt, on the other host.
    again = next(p for p in points if f"beta={p['beta']:g} latent={p['latent_dim']}" == victim.data.tags["sweep.point"])
    recovery = again["started"] + again["seconds"] - killed_wall
    figures = (f"4 points on 2 namespaced hosts, host 1 killed (pids {killed}) {killed_at - started:.0f} s in: "
               f"sweep {seconds:.0f} s; the killed point done again on {again['host']} {recovery:.0f} s after the "
               "kill; "
               f"per point " +
               ", ".join(f"β={p['beta']:g} z={p['latent_dim']} on {p['host']} {p['seconds']:.0f} s "
                         f"(checkout {p['checkout_s']:.0f}, exp run {p['exp_run_s']:.0f}, push {p['push_s']:.0f})"
                         for p in sorted(points, key=lambda p: p["started"])))
    print(figures)
    reliability("fault", "a worker host killed in the middle of a sweep point (4 points, 2 namespaced hosts)",
                f"every point once, the killed attempt's MLflow run FAILED; {seconds:.0f} s in all")


def prefect_table(env: dict, flow_run_id: str) -> list[dict]:
    """The flow run's `sweep-points` table artifact, read from the stack's Prefect API."""
    script = ("import json, sys\nfrom prefect import get_client\n"
              "from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, "
              "FlowRunFilterId\n"
              "with get_client(sync_client=True) as c:\n"
              "    found = c.read_artifacts("
              "artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=['sweep-points'])),"
              " flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[sys.argv[1]])))\n"
              "data = found[0].data\nprint(data if isinstance(data, str) else json.dumps(data))\n")
    text = run_in(ROOT, "python", "-c", script, flow_run_id, env=env).stdout
    table = json.loads(text)
    return json.loads(table) if isinstance(table, str) else table
