"""Reading Planetoid's raw files, which are pickles, without letting them run code or forge memory.

An allow-list of globals is not enough on its own: with only `numpy.ndarray`, `numpy.dtype` and
`list`, a pickle can build an object array over its own bytes (forged pointers) and iterate it, or
a CSR matrix whose indices point outside its data. So this unpickler (the pure-Python one, whose
opcodes can be overridden) also restricts what the allowed globals may do:

- callables: only ndarray reconstruction (`_reconstruct` of a plain ndarray), `dtype` of a
  non-object type, `defaultdict(list)` and `list`; a class is never called on raw data;
- BUILD (setting state): only on ndarrays (non-object dtype, bytes payload), on dtypes whose state
  is their canonical one, and on CSR matrices; INST / OBJ (protocol 0 / 1 class calls) are refused;
- NEWOBJ: only `csr_matrix`, and every CSR matrix is format-checked (indices within bounds) before
  the caller sees it.

Anything else raises `pickle.UnpicklingError`.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from typing import Any, BinaryIO

import numpy as np


def _dtype(*args: Any) -> np.dtype[Any]:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing dtype {dtype}: Planetoid arrays hold numbers, not objects")
    return dtype


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to reconstruct {subtype!r}: only plain numpy arrays")
    return np.ndarray.__new__(np.ndarray, (0,), _dtype(dtype))


def _defaultdict(factory: Any = None, *args: Any) -> defaultdict[Any, Any]:
    if factory not in (list, _list) or args:
        raise pickle.UnpicklingError("refusing defaultdict: Planetoid's graph is a defaultdict(list)")
    return defaultdict(list)


def _list(items: Any = ()) -> list[Any]:
    if isinstance(items, np.ndarray) and items.dtype.hasobject:
        raise pickle.UnpicklingError("refusing list() over an object array")
    return list(items)


def _csr_class() -> type:
    from scipy.sparse import csr_matrix

    return csr_matrix


def _globals() -> dict[tuple[str, str], Any]:
    csr = _csr_class()
    return {
        ("numpy", "ndarray"): np.ndarray,  # only ever an argument of _reconstruct: calling it is refused
        ("numpy", "dtype"): _dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("collections", "defaultdict"): _defaultdict,
        ("builtins", "list"): _list, ("__builtin__", "list"): _list,
        ("scipy.sparse.csr", "csr_matrix"): csr, ("scipy.sparse._csr", "csr_matrix"): csr,
        ("scipy.sparse", "csr_matrix"): csr,
    }


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """pickle's pure-Python unpickler with the restrictions of the module docstring."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: BinaryIO, encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self.allowed = _globals()
        self.csr = _csr_class()
        self.callables = {_dtype, _reconstruct, _defaultdict, _list}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: Planetoid files hold only arrays, a "
                                         "sparse matrix and an adjacency dict")
        return self.allowed[module, name]

    def load_reduce(self) -> None:
        if self.stack[-2] not in self.callables:
            raise pickle.UnpicklingError(f"refusing to call {self.stack[-2]!r} while unpickling")
        super().load_reduce()

    def load_newobj(self) -> None:
        if self.stack[-2] is not self.csr:
            raise pickle.UnpicklingError(f"refusing to create {self.stack[-2]!r} while unpickling")
        super().load_newobj()

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            if state != inst.__reduce__()[2]:
                raise pickle.UnpicklingError(f"refusing a non-canonical state for dtype {inst}")
            self.stack.pop()  # the canonical state is what the dtype already has
            return
        if isinstance(inst, np.ndarray):
            ok = isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype) \
                and not state[2].hasobject and isinstance(state[4], bytes | bytearray | str)
            if not ok:
                raise pickle.UnpicklingError("refusing an array state that is not plain numbers in a byte string")
        elif not isinstance(inst, self.csr) or not isinstance(state, dict):
            raise pickle.UnpicklingError(f"refusing to set the state of {type(inst).__name__}")
        super().load_build()

    def refuse(self) -> None:
        raise pickle.UnpicklingError("refusing protocol 0/1 class instantiation")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.BUILD[0]] = load_build
    for _opcode in (pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX):
        dispatch[_opcode[0]] = refuse
    del _opcode

    def load(self) -> Any:
        return checked(super().load(), self.csr)


def checked(obj: Any, csr: type) -> Any:
    """`obj`, after a CSR matrix's structure is checked (indices within bounds, indptr monotone)."""
    if isinstance(obj, csr):
        try:
            obj.check_format(full_check=True)
        except (ValueError, TypeError, AttributeError) as exc:
            raise pickle.UnpicklingError(f"malformed sparse matrix: {exc}") from None
    return obj


class RestrictedPickle:
    """Stands in for the `pickle` module inside PyG's Planetoid reader (its only use is `load`)."""

    @staticmethod
    def load(file: BinaryIO, encoding: str = "ASCII") -> Any:
        return RestrictedUnpickler(file, encoding=encoding).load()
