"""What the fuzz tests share: hypothesis settings, byte-level damage and the report row.

A fuzz test feeds a reader damaged files and sorts what comes back: a valid result
(checked to be well-formed) or the project's PipelineError naming the file; any other
exception fails the test. Each records one row in the reliability table.
"""
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from vae_pipeline.errors import PipelineError

# deadline=None: the machine is shared and loaded, a slow example is not a failure.
FUZZ = settings(max_examples=300, deadline=None)
# At least this many examples per kind of file a stage reads (the artifacts' fuzz tests).
EXAMPLES = 500
FUZZ_ARTIFACTS = settings(max_examples=EXAMPLES, deadline=None)

# One change to a file's bytes: (kind, position or count, byte value).
mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 50), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.just(0)),
)


def mutate(data: bytes, mutations) -> bytes:
    data = bytearray(data)
    for kind, position, value in mutations:
        if kind == "append":
            data += bytes([value]) * position
        elif not data:
            continue
        elif kind == "flip":
            data[position % len(data)] ^= value
        elif kind == "set":
            data[position % len(data)] = value
        elif kind == "truncate":
            del data[position % len(data):]
        elif kind == "delete":
            del data[position % len(data)]
    return bytes(data)


def attempt(read, path, counts: Counter):
    """read()'s result, or None when it raised a PipelineError naming `path`; counted in `counts`.

    Any other exception propagates and fails the test.
    """
    try:
        result = read()
    except PipelineError as e:
        assert str(path) in str(e), f"the error must name the file: {e}"
        counts["refused"] += 1
        return None
    counts["read"] += 1
    return result


def outcome_row(counts: Counter) -> str:
    return f"{counts['read']} read as valid data, {counts['refused']} PipelineError, 0 other exceptions"


def fuzz_reader(damages, write, read, path, check_valid) -> Counter:
    """EXAMPLES examples: write(damage) for each `damages` drawn, then read(); its result must
    pass check_valid, or it must raise a PipelineError naming `path`. Returns the counts."""
    counts = Counter()

    @FUZZ_ARTIFACTS
    @given(damage=damages)
    def example(damage):
        write(damage)
        found = attempt(read, path, counts)
        if found is not None:
            check_valid(found)

    example()
    assert sum(counts.values()) >= EXAMPLES
    return counts
