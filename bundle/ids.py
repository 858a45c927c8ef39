"""External node ids: the one rule for what an id is, shared by the job, the service and its clients.

A bundle keys its nodes either by int64 (any unique integers) or by strings (account ids, UUIDs):
1 to MAX_CHARS characters, unique, with no control character (NUL included: numpy's fixed-width
unicode drops trailing NULs, so "a\\0" and "a" would be one key) and no lone surrogate (it has no
UTF-8 form, so it could not travel in JSON). On disk string ids are a little-endian fixed-width
unicode array (`<U{w}`, w <= MAX_CHARS); object arrays (pickles) are never written nor read.

`IdIndex` resolves external ids to internal node indices; `to_array` turns ids from a request or a
file into the array it takes, refusing the other kind.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

IdType = Literal["int64", "string"]
ID_TYPES: tuple[IdType, ...] = get_args(IdType)
MAX_CHARS = 256
NodeKey = int | str  # one external id as a client sends it
# C0 and C1 control characters (NUL included) and lone surrogates.
BAD_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
I64 = npt.NDArray[np.int64]


class IdError(ValueError):
    """Ids that break the rule above, or ids of the other kind; the message names the first problem."""


def expected(id_type: IdType) -> str:
    """How the contract spells the dtype of `id_type` ids, for messages."""
    return "int64" if id_type == "int64" else f"<U1 .. <U{MAX_CHARS} (fixed-width unicode)"


def dtype_fits(dtype: np.dtype[Any], id_type: IdType) -> bool:
    """Whether a node_ids array of `dtype` is what a bundle of `id_type` stores."""
    if id_type == "int64":
        return bool(dtype == np.dtype(np.int64))
    width = dtype.itemsize // 4
    return dtype.kind == "U" and 1 <= width <= MAX_CHARS and dtype == np.dtype(f"<U{width}")


def id_type_of(ids: npt.NDArray[Any]) -> IdType:
    """The kind of an id array: int64 or a little-endian unicode array; anything else is IdError."""
    for id_type in ID_TYPES:
        if dtype_fits(ids.dtype, id_type):
            return id_type
    raise IdError(f"node ids must be {expected('int64')} or {expected('string')}, not {ids.dtype}")


def string_problem(ids: npt.NDArray[np.str_]) -> str | None:
    """What is wrong with a unicode id array [N] (first offender, by index), or None. Vectorised over
    the UTF-32 code points: a million ids take milliseconds."""
    n, width = len(ids), ids.dtype.itemsize // 4
    if n == 0 or width == 0:
        return None if n == 0 else "node id at index 0 is empty"
    points = np.ascontiguousarray(ids).view(np.uint32).reshape(n, width)
    used = points != 0
    length = np.where(used.any(axis=1), width - np.argmax(used[:, ::-1], axis=1), 0)
    bad = ((points < 0x20) | ((points >= 0x7F) & (points <= 0x9F)) | ((points >= 0xD800) & (points <= 0xDFFF))
           | (points > 0x10FFFF)) & (np.arange(width) < length[:, None])
    checks = (("is empty", length == 0), (f"is longer than {MAX_CHARS} characters", length > MAX_CHARS),
              ("holds a control character (NUL included) or a lone surrogate", bad.any(axis=1)))
    for what, hit in checks:
        if hit.any():
            i = int(np.argmax(hit))
            return f"node id at index {i} ({str(ids[i])[:40]!r}) {what}"
    return None


def check(ids: npt.NDArray[Any]) -> IdType:
    """Check an id array [N] against the rule -> its kind; IdError naming the first problem."""
    id_type = id_type_of(ids)
    if ids.ndim != 1:
        raise IdError(f"node ids must be one-dimensional, not {list(ids.shape)}")
    problem = string_problem(ids) if id_type == "string" else None
    if problem is not None:
        raise IdError(problem)
    ordered = np.sort(ids)  # sort + neighbours: np.unique takes 7x as long on a million strings
    if (ordered[1:] == ordered[:-1]).any():
        raise IdError("node ids are not unique")
    return id_type


def key_problem(key: object, id_type: IdType) -> str | None:
    """What is wrong with one id a client sent, for a bundle of `id_type` (None: fine)."""
    if id_type == "int64":
        ok = type(key) is int and -(2**63) <= key < 2**63
        return None if ok else "this bundle's node ids are integers (int64): send JSON integers"
    if type(key) is not str:
        return "this bundle's node ids are strings: send JSON strings"
    if not 1 <= len(key) <= MAX_CHARS or BAD_CHAR.search(key):
        return f"a string node id has 1 to {MAX_CHARS} characters, none of them a control character"
    return None


def to_array(keys: Sequence[NodeKey], id_type: IdType) -> npt.NDArray[Any]:
    """Ids from a request or a file -> the array IdIndex.lookup takes; IdError on ids of the other kind
    or breaking the rule (checked in one pass over the joined text, so long lists stay cheap)."""
    if id_type == "int64":
        if not all(type(k) is int or isinstance(k, np.integer) for k in keys):
            raise IdError(key_problem("", id_type))
        try:
            return np.asarray(keys, dtype=np.int64)
        except OverflowError:
            raise IdError("node ids must fit int64") from None
    if not all(type(k) is str for k in keys):
        raise IdError(key_problem(0, id_type))
    texts: list[str] = list(keys)  # type: ignore[arg-type]  # checked just above
    if texts and (BAD_CHAR.search("".join(texts)) or not 1 <= min(map(len, texts)) <= max(map(len, texts))
                  <= MAX_CHARS):
        raise IdError(key_problem("", id_type))
    return np.array(texts, dtype=f"<U{max(map(len, texts), default=1)}")


class IdIndex:
    """External ids [N] (checked: bundle.files.GraphArrays.check) -> internal indices. Dense int ids
    (0..N-1 in order, what the job writes for graphs without ids of their own) need no search; other
    ids a binary search over a sorted copy (no per-id Python objects: a dict of a million strings
    would cost ~100 MB)."""

    def __init__(self, ids: npt.NDArray[Any]) -> None:
        self.ids = ids
        self.id_type = id_type_of(ids)
        self._identity = self.id_type == "int64" and bool(np.array_equal(ids, np.arange(len(ids))))
        self._order: I64 = np.argsort(ids, kind="stable").astype(np.int64)
        self._sorted = ids[self._order]

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, keys: npt.NDArray[Any]) -> tuple[I64, npt.NDArray[Any]]:
        """External ids [b] (to_array's output) -> (internal indices [b], -1 where unknown; the unknown
        ids, unique)."""
        n = len(self.ids)
        if self._identity:
            idx = np.where((keys >= 0) & (keys < n), keys, -1)
        else:
            pos = np.minimum(np.searchsorted(self._sorted, keys), n - 1)
            idx = np.where(self._sorted[pos] == keys, self._order[pos], -1)
        return idx.astype(np.int64), np.unique(keys[idx < 0])
