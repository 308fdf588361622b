"""A key of everything that determines what a module tree computes, for re-proving when any of it changes.

:func:`state_key` is compared before each certificate with the key the bound was proven under; a different key
means the bound is proven again (or refused). It covers, by any route of change:

* **tensor contents** - every parameter, buffer and tensor attribute (of any name, private ones included, and
  inside lists, tuples and dicts) by a BLAKE2b digest of its bytes (:func:`tensor_digest`), with its dtype,
  shape and strides: an edit through ``.data``, a permutation, a re-registration as a plain attribute;
* **every other attribute** of every module (``vars(module)``): numbers by their exact ``repr``, numpy scalars
  and arrays by their bytes, containers element by element (:func:`canonical`), so an in-place edit of a list
  or a numpy scalar changes the key;
* **the code** - the class of every module, the identity of every entry of every class dictionary along its
  MRO (read through ``type``'s descriptors, :mod:`lsrs.pristine`) and of the functions of the namespaces the
  proofs were registered against; every forward hook, per module and global; the training flag.

The library's orthogonal layers (``CayleyConv2d``, ``OrthogonalLinear``) run a cached operator, computed from
``weight`` and ``scale`` and rebuilt only when one of them changes storage or version. What runs is that
operator, so in a layer that runs it (``eval()``, caching, frozen) these two parameters are keyed as the layer
keys its cache (storage and version: an edit through ``.data`` leaves both the cached operator that runs and
its proof unchanged) and the cached operators by identity, storage and version, not content: hashing them would
cost more than the forward pass that reads them. Their bias, which the forward reads directly, is digested.
"""

from __future__ import annotations

import hashlib
import sys
import types
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module

from lsrs.layers import CayleyConv2d
from lsrs.lipschitz_layers import OrthogonalLinear
from lsrs.pristine import _FORWARD_REGISTRIES, _NAMESPACES, ALWAYS_CLASSES, class_dict, true_mro

__all__ = ["canonical", "state_key", "tensor_digest"]

_CACHES = {CayleyConv2d: frozenset({"_cache", "_cache64"}), OrthogonalLinear: frozenset({"_cache"})}
_OPERATOR_PARAMS = frozenset({"weight", "scale"})  # what the orthogonal layers build their cached operator from
_STRUCTURE = frozenset({"_parameters", "_buffers", "_modules"})
_MAX_DEPTH = 8


def tensor_digest(t: Tensor) -> tuple:
    """``(type, dtype, shape, strides, BLAKE2b of the bytes)`` of ``t``'s values (copied to the CPU if needed)."""
    head = (type(t).__name__, str(t.dtype), tuple(t.shape), tuple(t.stride()) if t.layout == torch.strided else ())
    with torch.no_grad():
        v = t.detach()
        if v.layout != torch.strided or v.is_quantized:
            return (*head, repr(v.to_dense().tolist() if v.layout != torch.strided else v.dequantize().tolist()))
        v = v.resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
        raw = v.view(torch.uint8) if v.numel() else v.to(torch.uint8)
        return (*head, hashlib.blake2b(raw.numpy(), digest_size=16).digest())


def _cache_key(value: object) -> object:
    """Identity, storage and version of the tensors of a library cache (see the module docstring)."""
    if isinstance(value, Tensor):
        return ("cache", id(value), value.data_ptr(), value._version, str(value.dtype), tuple(value.shape))
    if isinstance(value, dict):
        return tuple((repr(k), _cache_key(v)) for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return tuple(_cache_key(v) for v in value)
    return repr(value)


def canonical(value: object, depth: int = 0, path: frozenset[int] = frozenset()) -> object:
    """A comparable value that changes whenever ``value``'s content does (exact for numbers, bytes for numpy,
    :func:`tensor_digest` for tensors, element by element for containers, identity for code)."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return (type(value).__name__, repr(value))
    if isinstance(value, Tensor):
        return tensor_digest(value)
    if isinstance(value, np.generic):
        return ("np", value.dtype.str, value.tobytes())
    if isinstance(value, np.ndarray):
        return ("nd", value.dtype.str, value.shape, hashlib.blake2b(np.ascontiguousarray(value).tobytes(),
                                                                    digest_size=16).digest())
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return ("torch", repr(value))
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
        return ("code", id(value), getattr(value, "__qualname__", ""))
    if id(value) in path or depth >= _MAX_DEPTH:
        return ("ref", id(value))
    inner = path | {id(value)}
    if isinstance(value, (list, tuple)):  # torch.Size and namedtuples included
        return (type(value).__qualname__, tuple(canonical(v, depth + 1, inner) for v in value))
    if isinstance(value, (set, frozenset)):
        return (type(value).__qualname__, tuple(sorted(repr(canonical(v, depth + 1, inner)) for v in value)))
    if isinstance(value, dict):
        return (type(value).__qualname__, tuple((canonical(k, depth + 1, inner), canonical(v, depth + 1, inner))
                                                for k, v in value.items()))
    if isinstance(value, nn.Module):
        return ("module", id(value), _module_entry(value, depth + 1, inner))
    state = getattr(value, "__dict__", None)
    slots = [s for k in true_mro(type(value)) for s in class_dict(k).get("__slots__", ())]
    return ("object", id(type(value)), id(value),
            canonical(dict(state), depth + 1, inner) if isinstance(state, dict) else None,
            tuple((s, canonical(getattr(value, s, None), depth + 1, inner)) for s in slots if isinstance(s, str)))


def _runs_cached_operator(m: nn.Module) -> bool:
    """Whether ``m`` is a library layer whose forward runs its cached operator (not ``weight`` itself)."""
    if m.training or not isinstance(m, tuple(_CACHES)) or any(p.requires_grad for p in m.parameters()):
        return False
    return not isinstance(m, CayleyConv2d) or m.cache is True


def _module_entry(m: nn.Module, depth: int = 0, path: frozenset[int] = frozenset()) -> tuple:
    """One module's own state: class, mode, hooks, every attribute; parameters and buffers by content (the
    operator parameters of a layer that runs its cached operator: as its cache keys them)."""
    caches = next((names for cls, names in _CACHES.items() if isinstance(m, cls)), frozenset())
    attrs = []
    for k, v in vars(m).items():
        if k in _STRUCTURE:
            continue
        attrs.append((k, _cache_key(v) if k in caches else canonical(v, depth, path)))
    by_storage = _OPERATOR_PARAMS if _runs_cached_operator(m) else frozenset()
    tensors = tuple((k, None if t is None else _cache_key(t) if k in by_storage else tensor_digest(t))
                    for k, t in (*m._parameters.items(), *m._buffers.items()))
    children = tuple((k, id(c)) for k, c in m._modules.items())
    return (id(type(m)), m.training, tuple(attrs), tensors, children)


def _code_key(classes: Iterable[type]) -> tuple:
    """Identity of every entry of every class dictionary along the MROs of ``classes``, of their metaclasses, and
    of the functions of the namespaces the proofs were registered against."""
    seen: dict[type, tuple] = {}
    for cls in classes:
        for k in true_mro(cls):
            if k not in seen and k is not object:
                seen[k] = (id(k), id(type(k)), tuple((name, id(v)) for name, v in class_dict(k).items()))
    spaces = tuple((name, tuple(id(vars_.get(key)) for key in ref))
                   for name, ref in _NAMESPACES.items() if (vars_ := _namespace(name)) is not None)
    return tuple(seen.values()), spaces


def _namespace(name: str) -> dict | None:
    mod = sys.modules.get(name)
    return None if mod is None else vars(mod)


def state_key(module: nn.Module) -> tuple:
    """The key of everything that determines what ``module`` computes (see the module docstring)."""
    entries = tuple((name, id(m), _module_entry(m)) for name, m in module.named_modules())
    hooks = tuple(tuple(id(h) for h in getattr(_torch_module, name, {}).values()) for name in _FORWARD_REGISTRIES)
    return entries, hooks, _code_key({type(m) for m in module.modules()} | set(ALWAYS_CLASSES))
