"""files.replace_together (a stage's outputs change together or not at all) and atomic_path."""
import os
import subprocess
import sys

import pytest

from vae_pipeline.files import replace_together, write_json


def old_set(folder):
    """An earlier run's outputs: a file and a folder of two files."""
    (folder / "figures").mkdir(parents=True)
    (folder / "figures" / "a.png").write_text("old a")
    (folder / "figures" / "stale.png").write_text("old stale")
    (folder / "index.html").write_text("old page")
    return folder / "index.html", folder / "figures"


def contents(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_new_set_moves_in_whole_when_the_block_ends(tmp_path):
    page, figures = old_set(tmp_path)
    with replace_together(page, figures) as (new_page, new_figures):
        assert new_page.name == page.name and new_figures.name == figures.name   # their own names
        assert page.read_text() == "old page"        # nothing moves before the block ends
        new_figures.mkdir()
        (new_figures / "a.png").write_text("new a")
        new_page.write_text("new page")
    # The folder is replaced whole: the old run's stale.png does not linger; no staging is left.
    assert contents(tmp_path) == {"figures/a.png": "new a", "index.html": "new page"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "index.html"]


def test_an_error_in_the_block_leaves_the_old_set_whole(tmp_path):
    page, figures = old_set(tmp_path)
    before = contents(tmp_path)
    with pytest.raises(RuntimeError, match="registration failed"):
        with replace_together(page, figures) as (new_page, new_figures):
            new_page.write_text("new page")
            raise RuntimeError("registration failed")
    assert contents(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "index.html"]


def test_an_output_left_unwritten_moves_nothing(tmp_path):
    page, figures = old_set(tmp_path)
    before = contents(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with replace_together(page, figures) as (new_page, _):
            new_page.write_text("new page")          # the figures were forgotten
    assert contents(tmp_path) == before


def test_new_outputs_need_no_old_ones(tmp_path):
    with replace_together(tmp_path / "a" / "x.json", tmp_path / "b.json") as (x, b):
        x.write_text("x")
        b.write_text("b")
    assert contents(tmp_path) == {"a/x.json": "x", "b.json": "b"}


def write_staged(folder):
    with replace_together(folder / "eval.json") as (new,):
        new.write_text("{}")


@pytest.mark.parametrize("write, leftover", [
    (lambda folder: write_json(folder / "eval.json", {}), ".eval.json.tmp-{pid}"),   # atomic_path's
    (write_staged, ".eval.json.staged-{pid}"),                                       # replace_together's
])
def test_a_killed_writers_leftovers_are_removed_by_the_next_write(tmp_path, write, leftover):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left_by_the_dead = tmp_path / leftover.format(pid=dead.pid)
    of_a_live_writer = tmp_path / leftover.format(pid=os.getppid())
    for path in (left_by_the_dead, of_a_live_writer):
        path.mkdir()
        (path / "eval.json").write_text("half")
    write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([of_a_live_writer.name, "eval.json"])
