"""One libFuzzer process for one target: ``python fuzz/worker.py TARGET [libFuzzer flags]``.

run.py starts it with the flags and parses what libFuzzer prints; run it by hand only to pass
libFuzzer flags run.py does not know (e.g. ``-runs=1 crash-FILE`` to replay a crash).
"""

from __future__ import annotations

import resource
import sys

import atheris
import mutators

# sealer's modules must be imported inside this block to get coverage instrumentation; the
# harness (targets) and the libraries are left out: their edges are not what is searched.
with atheris.instrument_imports(include=["sealer"]):
    import targets

# The JSON targets mutate by value half of the time (mutators.py); the event log is binary.
MUTATORS = {
    "token": mutators.mutate_json,
    "approval": mutators.mutate_json,
    "luks_header": mutators.mutate_luks_header,
}

# On top of libFuzzer's -rss_limit_mb (which samples resident memory once a second), cap the
# address space: a parser that believes a 4 GiB length field and allocates it gets a
# MemoryError at once, which is a crash like any other, even if the pages are never touched.
ADDRESS_SPACE_HEADROOM = 2 * 1024**3


def _limit_address_space() -> None:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[0])
    current = pages * resource.getpagesize()
    limit = current + ADDRESS_SPACE_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: worker.py {{{','.join(targets.TARGETS)}}} [libFuzzer flags]")
    target = targets.TARGETS[sys.argv[1]]
    _limit_address_space()

    def test_one_input(data: bytes) -> None:
        targets.one_input(target, data)

    mutator = MUTATORS.get(target.name)
    if mutator is None:
        atheris.Setup([sys.argv[0], *sys.argv[2:]], test_one_input)
    else:

        def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
            return mutator(data, max_size, seed, atheris.Mutate)

        atheris.Setup([sys.argv[0], *sys.argv[2:]], test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
