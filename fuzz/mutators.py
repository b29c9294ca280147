"""A JSON-aware mutation for libFuzzer: change one value of the document, keep it JSON.

Byte-level mutations break JSON syntax almost every time, so most executions of the JSON
targets would end in the decoder. Half of the mutations here decode the input, replace,
delete or byte-mutate one value somewhere in it (the hostile values are those that broke
parsers before: huge numbers and digit strings, negative handles, lone surrogates, deep
nesting) and encode it again; the other half are libFuzzer's own, which keep finding
syntax-level trouble. No atheris import: worker.py passes libFuzzer's mutator in.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

ByteMutator = Callable[[bytes, int], bytes]  # atheris.Mutate(data, max_size)

HOSTILE: tuple[Any, ...] = (
    10**4000, -(10**4000), -1, 2**32, 2**64, 0, True, None, "", "-1", "0x-1", "9" * 5000,
    "\ud800", "\x00", "٣", 1.5, float("inf"), [], {}, [[[[[]]]]], {"": []},
)


def mutate_json(data: bytes, max_size: int, seed: int, byte_mutate: ByteMutator) -> bytes:
    """``data`` mutated once, by value when it is JSON, else by libFuzzer."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return byte_mutate(data, max_size)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return byte_mutate(data, max_size)
    doc = _mutate_value(doc, rng, byte_mutate)
    try:
        out = json.dumps(doc).encode()
    except (ValueError, RecursionError):  # a NaN is fine; only pathological nesting fails
        return byte_mutate(data, max_size)
    return out if len(out) <= max_size else byte_mutate(data, max_size)


def mutate_luks_header(data: bytes, max_size: int, seed: int, byte_mutate: ByteMutator) -> bytes:
    """The JSON area of an on-disk header (after its 4 KiB binary part) mutated as JSON."""
    binary, area = data[:4096], data[4096:].split(b"\0", 1)[0]
    if len(binary) < 4096 or not area:
        return byte_mutate(data, max_size)
    return binary + mutate_json(area, max(max_size - 4096, 0), seed, byte_mutate)


def _mutate_value(doc: Any, rng: random.Random, byte_mutate: ByteMutator) -> Any:
    """``doc`` with one value changed: the root itself, or one inside it."""
    containers = list(_containers(doc))
    if not containers or rng.random() < 0.05:
        return _new_value(doc, rng, byte_mutate)
    node = rng.choice(containers)
    keys: list[Any] = list(node) if isinstance(node, dict) else list(range(len(node)))
    if not keys or rng.random() < 0.15:
        value = _new_value(None, rng, byte_mutate)
        if isinstance(node, dict):
            node[rng.choice(["x", "type", "version", *map(str, node)])] = value
        else:
            node.insert(rng.randint(0, len(node)), value)
        return doc
    key = rng.choice(keys)
    if rng.random() < 0.2:
        del node[key]
    else:
        node[key] = _new_value(node[key], rng, byte_mutate)
    return doc


def _containers(doc: Any) -> list[Any]:
    found: list[Any] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            found.append(node)
            stack.extend(node)
    return found


def _new_value(old: Any, rng: random.Random, byte_mutate: ByteMutator) -> Any:
    """A hostile value, or ``old`` slightly changed (a string's bytes, a number's value)."""
    if isinstance(old, str) and rng.random() < 0.6:
        mutated = byte_mutate(old.encode("utf-8", "surrogatepass"), len(old) * 2 + 16)
        return mutated.decode("utf-8", "replace")
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.6:
        return old + rng.choice([-1, 1, -(2**31), 2**31, 2**32])
    return copy.deepcopy(rng.choice(HOSTILE))  # the document may be mutated further
