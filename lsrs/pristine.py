"""What counts as the proven function: a module runs exactly the code its class's proof was registered for.

A proof (:mod:`lsrs.proofs`) is a statement about a class's ``forward`` and the helpers it calls. It covers an
instance only when what the instance runs *is* that code:

* **reference code** - when a proof is registered (at import time for the library's; on first use for a
  class's own ``lipschitz_proof``) the dictionary of every class of the proven class's MRO is remembered, with
  the module namespaces those classes are defined in (and ``torch``'s operators, ``torch.nn.functional``,
  ``torch.fft``, ``torch.linalg``, ``torch.Tensor``'s methods); a class whose dictionary
  or namespace no longer holds the same objects (a patched ``forward``, ``_call_impl``, ``_conv_forward``, a
  replaced ``F``) is refused. Attributes that cannot change what a built module computes (``__init__``, the
  documentation, ``__slotnames__`` that Python adds on the first copy, the ``__setstate__`` that ``torch.compile``
  wraps) are tolerated: they run only when a module is built or copied, and the private copy is checked after
  copying;
* **no custom metaclass** - every class of the MRO must be an instance of ``type`` itself (a metaclass can
  report a different ``__mro__`` or ``__dict__``); the MRO and the dictionaries are read through ``type``'s own
  descriptors, never through attributes a class could override;
* **nothing on the instance** - no callable instance attribute (a per-instance ``forward``, a compiled call
  path ``_compiled_call_impl`` as set by ``module.compile()``), no forward hook on the module, and the global
  forward-hook registries of ``torch.nn.modules.module`` empty.

Each check returns the reason as one line (or None); :func:`lsrs.proofs.first_unproven` turns it into a
refusal naming the module.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping

import torch
import torch.fft
import torch.linalg
import torch.nn.functional
from torch import nn
from torch.nn.modules import module as _torch_module

__all__ = ["INERT", "class_dict", "global_hook_refusal", "instance_refusal", "metaclass_refusal", "reference_refusal",
           "remember", "true_mro"]

_MRO = type.__dict__["__mro__"].__get__
_DICT = type.__dict__["__dict__"].__get__
_ALLOWED_META = frozenset({type})
INERT = frozenset({
    "__module__", "__qualname__", "__doc__", "__init__", "__annotations__", "__dict__", "__weakref__",
    "__firstlineno__", "__static_attributes__", "__orig_bases__", "__parameters__", "__slotnames__", "extra_repr",
})  # class attributes that cannot change what an instance computes once built
# run only when a module is built or copied (the copy is checked after copying); torch.compile wraps nn.Module's
# __init__ / __setstate__ and tags the class with ___needs_generation_tag_patch
_TOLERATED = INERT | {"__setstate__", "__getstate__", "___needs_generation_tag_patch", "__abstractmethods__",
                      "_abc_impl"}
_REFERENCE: dict[type, dict[str, object]] = {}
_NAMESPACES: dict[str, dict[str, object]] = {}
_TAINTED: dict[type, str] = {}
_MISSING = object()
_FORWARD_REGISTRIES = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_with_kwargs",
                       "_global_forward_hooks_always_called")


def true_mro(cls: type) -> tuple[type, ...]:
    """``cls.__mro__`` as the interpreter uses it, read through ``type``'s own descriptor."""
    return _MRO(cls)


def class_dict(cls: type) -> Mapping[str, object]:
    """``cls.__dict__`` read through ``type``'s own descriptor."""
    return _DICT(cls)


def _root(name: object) -> str:
    return str(name).split(".")[0]


def _function_of(value: object) -> object:
    """The function behind a class attribute (unwrapping static/class methods and properties)."""
    if isinstance(value, (staticmethod, classmethod)):
        return value.__func__
    if isinstance(value, property):
        return value.fget
    return value


def remember(cls: type, *, any_metaclass: bool = False) -> None:
    """Remember the reference code of ``cls``: the dictionary of every class of its MRO (``object`` excepted)
    and their modules' namespaces. A class whose functions were defined outside its own package when first
    seen (a patch made before the library was imported) is remembered as tainted. ``any_metaclass``: torch's
    own classes with torch's metaclass (``torch.Tensor``)."""
    if not any_metaclass and metaclass_refusal(cls) is not None:
        return  # refused at every use anyway
    for k in true_mro(cls):
        if k is object or k in _REFERENCE:
            continue
        own = dict(class_dict(k))
        _REFERENCE[k] = own
        foreign = [name for name, v in own.items() if isinstance(_function_of(v), types.FunctionType)
                   and _root(getattr(_function_of(v), "__module__", "")) != _root(k.__module__)]
        if foreign and _root(k.__module__) in ("torch", "lsrs"):
            _TAINTED[k] = foreign[0]
        _remember_namespace(k.__module__)


def _remember_namespace(name: str) -> None:
    """Remember the functions of the library's and torch's module ``name`` (a user's namespace, e.g. a notebook's
    ``__main__``, is the user's: its proofs are recorded as theirs)."""
    mod = sys.modules.get(name)
    if mod is None or name in _NAMESPACES or _root(name) not in ("torch", "lsrs"):
        return
    ops_only = name == "torch"  # its operators (C builtins); wrappers such as torch.manual_seed compute nothing
    _NAMESPACES[name] = {k: v for k, v in vars(mod).items()
                         if (isinstance(v, types.BuiltinFunctionType) if ops_only
                             else callable(v) or isinstance(v, types.ModuleType))}


def metaclass_refusal(cls: type) -> str | None:
    """Why ``cls`` cannot be trusted to report its own MRO (a custom metaclass), or None."""
    for k in true_mro(cls):
        meta = type(k)
        if meta not in _ALLOWED_META:
            return f"its class {k.__qualname__} has the custom metaclass {meta.__qualname__}"
    return None


def _changed_key(now: Mapping[str, object], ref: dict[str, object]) -> str | None:
    """The first attribute (outside ``_TOLERATED``) that differs between a class dictionary and its reference."""
    for name, value in ref.items():
        if name not in _TOLERATED and now.get(name, _MISSING) is not value:
            return name
    extra = set(now) - set(ref) - _TOLERATED
    return min(extra) if extra else None


def reference_refusal(proven_cls: type) -> str | None:
    """Why the classes of ``proven_cls``'s MRO (or their modules' functions) are no longer the code its proof
    was registered for, or None."""
    for k in true_mro(proven_cls):
        if k is object:
            continue
        ref = _REFERENCE.get(k)
        if ref is None:
            return f"{k.__qualname__} was not seen when its proof was registered"
        if k in _TAINTED:
            return f"{k.__qualname__}.{_TAINTED[k]} was replaced before the library was imported"
        changed = _changed_key(class_dict(k), ref)
        if changed is not None:
            return f"{k.__qualname__}.{changed} is not the code its proof was registered for (a class patch)"
    for k in ALWAYS_CLASSES:
        changed = _changed_key(class_dict(k), _REFERENCE[k])
        if changed is not None:
            return f"{k.__qualname__}.{changed} is not the method the proofs were registered with"
    for name in (*ALWAYS_NAMESPACES, *(k.__module__ for k in true_mro(proven_cls) if k is not object)):
        changed = _namespace_change(name)
        if changed is not None:
            return f"{name}.{changed} is not the function its proof was registered for"
    return None


def _namespace_change(name: str) -> str | None:
    ref = _NAMESPACES.get(name)
    mod = sys.modules.get(name)
    if ref is None or mod is None:
        return None
    now = vars(mod)
    for key, value in ref.items():
        if now.get(key, _MISSING) is not value:
            return key
    return None


def instance_refusal(module: nn.Module) -> str | None:
    """Why the instance ``module`` may run something other than its class's code (a callable instance
    attribute, a compiled call path, a forward hook), or None."""
    for key, value in vars(module).items():
        if key == "_compiled_call_impl" and value is None:
            continue
        if callable(value):
            what = "a compiled call path (module.compile())" if key == "_compiled_call_impl" else "a callable"
            return f"the instance holds {what} in {key!r}"
    if module._forward_hooks or module._forward_pre_hooks:
        return "a forward hook can change what it computes"
    return None


def global_hook_refusal() -> str | None:
    """Why a global forward hook (``nn.modules.module.register_module_forward_hook``) may change what any
    module computes, or None."""
    for name in _FORWARD_REGISTRIES:
        if getattr(_torch_module, name, None):
            return f"a global forward hook is registered (torch.nn.modules.module.{name})"
    return None


ALWAYS_NAMESPACES = ("torch", "torch.nn.functional", "torch.fft", "torch.linalg")  # what every forward may call
ALWAYS_CLASSES = (torch.Tensor,)  # its operators and methods
remember(nn.Module)
for _k in ALWAYS_CLASSES:
    remember(_k, any_metaclass=True)
for _name in ALWAYS_NAMESPACES:
    _remember_namespace(_name)
