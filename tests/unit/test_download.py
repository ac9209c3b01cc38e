import io
import tarfile

import pytest

from stages import download
from tests.conftest import tiny_params
from vae_pipeline.errors import PipelineError
from vae_pipeline.ml.data import FILES


def params_for(tmp_path, sources, checksums):
    params = tiny_params(tmp_path, checksums)
    params["paths"]["raw_dir"] = str(tmp_path / "raw")
    params["data"]["sources"] = sources
    return params


def test_files_arrive_verified_from_the_first_working_source(tmp_path, tiny_source):
    folder, checksums = tiny_source
    params = params_for(tmp_path, ["http://127.0.0.1:9/", f"file://{folder}"], checksums)
    target = download.run(params)
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    # A second run finds everything verified and fetches nothing.
    params["data"]["sources"] = ["file:///nonexistent/"]
    assert download.run(params) == target


def test_flipped_byte_is_refused_and_nothing_is_left(tmp_path, tiny_source):
    folder, checksums = tiny_source
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in FILES:
        data = bytearray((folder / name).read_bytes())
        if name == "t10k-labels-idx1-ubyte":
            data[20] ^= 0x01
        (bad / name).write_bytes(bytes(data))
    params = params_for(tmp_path, [f"file://{bad}"], checksums)
    with pytest.raises(PipelineError, match="t10k-labels-idx1-ubyte has sha256 [0-9a-f]+, expected"):
        download.run(params)
    raw = tmp_path / "raw"
    assert not any(raw.rglob("*")), "nothing may be left in raw_dir"
    assert not list(tmp_path.glob(".download-*"))


def test_every_failed_source_is_listed(tmp_path, tiny_source):
    _, checksums = tiny_source
    params = params_for(tmp_path, ["http://127.0.0.1:9/", "file:///nonexistent/"], checksums)
    with pytest.raises(PipelineError) as error:
        download.run(params)
    assert "http://127.0.0.1:9/:" in str(error.value)
    assert "file:///nonexistent/: neither train-images-idx3-ubyte" in str(error.value)


def test_unknown_source_kind_is_a_params_error(tmp_path, tiny_source):
    _, checksums = tiny_source
    with pytest.raises(PipelineError, match="unknown source 'ftp://x'"):
        download.run(params_for(tmp_path, ["ftp://x"], checksums))


def test_archive_extraction_takes_only_the_named_regular_files(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        def add(name, data=b"x", kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("../escape", b"evil")
        add("/tmp/absolute-escape", b"evil")
        add("package/data/link", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add("package/data/wanted", b"good")
    buffer.seek(0)
    target = tmp_path / "target"
    target.mkdir()
    with tarfile.open(fileobj=buffer, mode="r:gz") as archive:
        download.extract_members(archive, {"package/data/wanted": target / "wanted"})
    assert (target / "wanted").read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["target", "wanted"]
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:gz") as archive, pytest.raises(FileNotFoundError):
        download.extract_members(archive, {"package/data/link": target / "link"})
    assert not (target / "link").exists()


def test_deb_extraction_takes_the_gzipped_idx_files(tmp_path, tiny_source):
    """The apt source's unpacking, on a tiny .deb built here the way Debian's dataset-fashion-mnist is laid out."""
    import gzip
    import shutil
    import subprocess

    from vae_pipeline.ml.data import DATASETS

    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (the apt: source needs it too)")
    folder, checksums = tiny_source
    apt_dir = DATASETS["fashion-mnist"]["apt_dir"]
    package = tmp_path / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN/control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\n"
        "Maintainer: test <test@localhost>\nDescription: tiny fixture\n")
    (package / apt_dir).mkdir(parents=True)
    for name in FILES:
        (package / apt_dir / f"{name}.gz").write_bytes(gzip.compress((folder / name).read_bytes()))
    (package / "usr/share/doc").mkdir(parents=True)
    (package / "usr/share/doc/README").write_text("not wanted")
    deb = tmp_path / "dataset-fashion-mnist_0.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(package), str(deb)],
                   check=True, capture_output=True)

    workdir = tmp_path / "work"
    workdir.mkdir()
    download.extract_deb(deb, FILES, workdir, apt_dir)
    assert sorted(p.name for p in workdir.iterdir()) == sorted(FILES)
    for name in FILES:
        assert download.sha256_file(workdir / name) == checksums[name]
    with pytest.raises(FileNotFoundError, match="archive lacks"):
        download.extract_deb(deb, ["not-in-the-package"], workdir, apt_dir)
