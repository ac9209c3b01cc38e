"""Every shell block of README.md and docs/ is run by a test (tests/doc_blocks.py RUN_BY) or says why not."""
import pytest

from tests.doc_blocks import RUN_BY, Block, blocks, documented_files
from vae_pipeline.files import ROOT


def test_every_block_is_run_or_says_why_not():
    covered = {name for files in RUN_BY.values() for name in files}
    assert covered <= {str(p.relative_to(ROOT)) for p in documented_files()}, "RUN_BY names a non-doc file"
    for test in RUN_BY:
        assert (ROOT / test).exists(), f"tests/doc_blocks.py RUN_BY names {test}, which is missing"
        assert f'RUN_BY["{test}"]' in (ROOT / test).read_text(), f"{test} does not run its RUN_BY files"
    for path in documented_files():
        for block in blocks(path):
            block.check_markers()
            name = str(path.relative_to(ROOT))
            assert name in covered or block.not_run, (
                f"{block.where}: no test runs the blocks of {name}; add it to tests/doc_blocks.py RUN_BY "
                f"or mark the block <!-- docs-test: not run: REASON -->")


@pytest.mark.parametrize("markers, lines", [
    ([], "a\nb"),
    (["skip `make test`: the suite itself"], "make run"),
])
def test_skip_leaves_the_named_lines_out(markers, lines):
    block = Block("README.md", 1, "make run\nmake test  # all\n" if markers else "a\nb\n", markers)
    assert block.script(1) == lines


def test_a_background_line_is_awaited_and_a_continued_line_stays_whole():
    block = Block("x.md", 3, "make serve  # until Ctrl-C\ncurl -s URL \\\n  -d '{}'\n",
                  ["background `make serve` until http://127.0.0.1:5002/ping"])
    script = block.script(1)
    assert "make serve  # until Ctrl-C\n} >.docs-test/1-0.log 2>&1 &" in script
    assert "ready http://127.0.0.1:5002/ping .docs-test/1-0.log" in script
    assert script.endswith("curl -s URL \\\n  -d '{}'")


def test_a_marker_must_name_a_line_of_its_block():
    with pytest.raises(AssertionError, match="names `make serve`"):
        Block("x.md", 3, "make run\n", ["skip `make serve`: no"]).check_markers()
    with pytest.raises(AssertionError, match="unknown marker"):
        Block("x.md", 3, "make run\n", ["maybe later"]).check_markers()
