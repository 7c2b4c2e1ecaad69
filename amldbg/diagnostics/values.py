"""Values shown in stack dumps and crash reports, formatted without running any of their code.

The stall watchdog, the signal triggers and the crash hooks run while the script is stuck or
dying. Calling ``repr()`` there runs the script's code: a ``__repr__`` that takes a lock a
stuck thread holds, waits on I/O, or copies a tensor from a hung GPU would stop the report,
the traceback or the exit. So :func:`describe` never calls a method, property or descriptor
of the value it is given (no ``__repr__``, ``__str__``, ``__len__``, ``__iter__``,
``__getattr__``, ``__eq__``, ``__hash__``, ``isinstance`` against an ABC):

* ``None``, booleans, numbers, strings and bytes, and the builtin containers (``list``,
  ``tuple``, ``dict``, ``set``, ``frozenset`` and their subclasses: namedtuples, ``OrderedDict``,
  ``defaultdict``, ``torch.Size``) are formatted by amldbg itself from their C-level data,
  bounded in depth, items and length;
* ``os.environ`` is read from its own storage;
* tensors and arrays of the well-known libraries (torch, numpy, cupy, jax...) show their
  shape, dtype and device, read through C-level attributes only (a subclass's Python
  properties and ``__torch_function__`` are not run; nothing touches device memory); a
  pandas frame or series its shape, from its axes' lengths; other objects of those
  libraries show their type and fields;
* any other object shows its type and its fields, read from the instance itself
  (``__dict__``, ``__slots__``, dataclass and namedtuple fields) without calling it, so an
  ``argparse.Namespace`` still shows ``lr=0.1``; public fields first.

Secrets: a field, attribute or key whose name looks secret (:mod:`amldbg.core.secrets`)
shows ``<hidden>``; in a sequence of strings, the value after ``--api_key`` and the value of
``--token=...`` are hidden; strings are masked whole before they are cut. The result is one
line: :func:`amldbg.core.safetext.safe` runs last.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any, Callable, Iterator

from amldbg.core import safetext, secrets

__all__ = ["describe", "exception_text", "is_noise", "type_name"]

#: Characters of one value's text.
MAX_REPR = 160
#: Items shown of one container, fields of one object.
MAX_ITEMS = 6
#: Nesting shown: a value, its items, their items.
MAX_DEPTH = 2
#: Characters of a string masked before it is cut: a secret that starts in the shown part and
#: ends past the cut is still found (an Azure AD token is about 2,000 characters).
MAX_MASKED = 4096
#: Characters masked for one value in all: masking costs time, and a value holding many
#: long strings must not hold up the report; past it, strings show only their length.
MASK_BUDGET = 32 * 1024
HIDDEN = secrets.MASK

# Modules whose array-like objects are shown by shape, dtype and device.
ARRAY_MODULES = frozenset({"torch", "numpy", "jax", "jaxlib", "tensorflow", "cupy", "pandas"})

# Types shown by their C-level text (``torch.float32``, ``cuda:0``, ``float32``).
_DTYPE_CLASSES = frozenset({"torch.dtype", "torch.device", "numpy.dtype"})

# Descriptors read straight from the type, so that no metaclass or class attribute runs.
_TYPE_DICT = type.__dict__["__dict__"]
_TYPE_MRO = type.__dict__["__mro__"]
_TYPE_NAME = type.__dict__["__qualname__"]
_TYPE_SHORT_NAME = type.__dict__["__name__"]
_TYPE_MODULE = type.__dict__["__module__"]
_C_DESCRIPTORS = (types.GetSetDescriptorType, types.MemberDescriptorType)
_EXCEPTION_ARGS = BaseException.__dict__["args"]
_MODULE_DICT: Any = vars(types.ModuleType)["__dict__"]
_FUNCTION_NAME = types.FunctionType.__dict__["__qualname__"]


# -- reading types without running them ------------------------------------------------------
def _mro(cls: type) -> tuple[type, ...]:
    try:
        found = _TYPE_MRO.__get__(cls)
        return found if type(found) is tuple else (cls,)
    except Exception:  # not the guard: a user's class: its C-level __mro__ may be anything
        return (cls,)


def _class_dict(cls: type) -> Any:
    try:
        return _TYPE_DICT.__get__(cls)
    except Exception:  # not the guard: a user's class: its C-level __dict__ may be anything
        return {}


def _lookup(cls: type, name: str) -> tuple[type | None, Any]:
    """The class of ``cls``'s MRO that defines ``name``, and the raw attribute (unbound)."""
    for klass in _mro(cls):
        namespace = _class_dict(klass)
        try:
            if name in namespace:
                return klass, namespace[name]
        except Exception:  # not the guard: a user's namespace (a custom mapping) may raise on lookup
            continue
    return None, None


def _has_base(cls: type, base: type) -> bool:
    # By identity: `base in mro` would call a metaclass's __eq__ (script code).
    return any(klass is base for klass in _mro(cls))


def _one_of(cls: Any, choices: tuple[Any, ...]) -> bool:
    """``cls in choices`` by identity (no ``__eq__`` of a metaclass runs)."""
    return any(cls is choice for choice in choices)


def _plain_text(value: Any) -> str | None:
    """The characters of a str (or the latin-1 text of a bytes) value, also of a subclass
    (an enum.StrEnum key), read from its data without calling it; else ``None``."""
    cls = type(value)
    if _has_base(cls, str):
        return str.__add__("", str.__getitem__(value, slice(0, 256)))
    if _has_base(cls, bytes):
        return bytes.decode(bytes(bytes.__getitem__(value, slice(0, 256))), "latin-1")
    return None


def _secret_named(value: Any) -> bool:
    text = _plain_text(value)
    return text is not None and secrets.is_secret_name(text)


def type_name(cls: type) -> str:
    """``module.QualName`` of a class (``QualName`` for builtins), read without running it."""
    try:
        name = _TYPE_NAME.__get__(cls)
        module = _TYPE_MODULE.__get__(cls)
    except Exception:  # not the guard: a user's class: its name may be anything
        return "?"
    name = name if type(name) is str else "?"
    if type(module) is not str or module == "builtins":
        return name
    return f"{module}.{name}"


def _short_name(cls: type) -> str:
    try:
        name = _TYPE_SHORT_NAME.__get__(cls)
        return name if type(name) is str else "?"
    except Exception:  # not the guard: a user's class: its name may be anything
        return "?"


def _module_root(cls: type) -> str:
    try:
        module = _TYPE_MODULE.__get__(cls)
    except Exception:  # not the guard: a user's class: its module may be anything
        return ""
    return module.split(".", 1)[0] if type(module) is str else ""


def is_noise(value: Any) -> bool:
    """True for modules, functions and classes: a module frame's imports say nothing."""
    cls = type(value)
    return _one_of(cls, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType)) or _has_base(
        cls, type
    )


def _array_library(cls: type) -> str:
    """The well-known array library ``cls`` or one of its bases comes from, else ``""``."""
    for klass in _mro(cls):
        root = _module_root(klass)
        if root in ARRAY_MODULES:
            return root
    return ""


def _c_attribute(value: Any, cls: type, name: str) -> Any:
    """``value.name`` when the type defines it in C (a getset or member descriptor); else
    ``None``. A Python property, ``__getattr__`` or instance attribute is never consulted."""
    _, raw = _lookup(cls, name)
    if not _one_of(type(raw), _C_DESCRIPTORS):
        return None
    try:
        return raw.__get__(value, cls)
    except Exception:  # not the guard: a user's object: its C-level getter may raise
        return None


# -- the formatter ---------------------------------------------------------------------------
class _Formatter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.mask_left = MASK_BUDGET

    def _masked(self, text: str) -> str | None:
        """``text`` masked, while the value's masking budget lasts; else ``None``."""
        if len(text) > self.mask_left:
            return None
        self.mask_left -= len(text)
        return safetext.mask(text)

    def format(self, value: Any, depth: int) -> str:
        cls = type(value)
        if value is None or value is True or value is False or value is Ellipsis:
            return "None" if value is None else ("..." if value is Ellipsis else ("True" if value else "False"))
        if _has_base(cls, bool):
            return "True" if int.__bool__(value) else "False"
        if _has_base(cls, int):
            return self._integer(value, cls)
        if _has_base(cls, float):
            return self._subclassed(cls, float, float.__repr__(value))
        if _has_base(cls, complex):
            return self._subclassed(cls, complex, complex.__repr__(value))
        if _has_base(cls, str):
            return self._subclassed(cls, str, self._string(value))
        if _has_base(cls, bytes) or _has_base(cls, bytearray):
            return self._bytes(value, cls)
        if cls is os._Environ:
            return self._environ(value, depth)
        if _has_base(cls, dict):
            return self._dict(value, cls, depth)
        if _has_base(cls, tuple):
            return self._tuple(value, cls, depth)
        if _has_base(cls, list):
            return self._sequence(value, cls, list, "[", "]", depth)
        if _has_base(cls, set) or _has_base(cls, frozenset):
            base = set if _has_base(cls, set) else frozenset
            return self._sequence(value, cls, base, "{", "}", depth)
        if _has_base(cls, BaseException):
            return self._exception(value, cls, depth)
        if cls is types.ModuleType:
            return self._module(value)
        if cls is types.FunctionType:
            return f"<function {self._function_name(value)}>"
        if _has_base(cls, type):
            return f"<class {type_name(value)}>"
        library = _array_library(cls)
        if library:
            if any(type_name(klass) in _DTYPE_CLASSES for klass in _mro(cls)):
                return _c_text(value) or f"<{type_name(cls)}>"
            summary = _array_summary(value, cls)
            if summary is not None:
                return summary
            if library == "pandas":  # a frame's fields are its block manager's internals
                return _pandas_summary(value, cls)
        return self._instance(value, cls, depth)

    # scalars
    def _integer(self, value: Any, cls: type) -> str:
        bits = int.bit_length(value)
        # int.__repr__ is quadratic in the digits (and refused past 4300 of them).
        text = int.__repr__(value) if bits <= 256 else f"<int of {bits} bits>"
        return self._subclassed(cls, int, text)

    def _subclassed(self, cls: type, base: type, text: str) -> str:
        # numpy.float64 is a float; an IntEnum is an int: say which, with the plain value.
        return text if cls is base else f"{_short_name(cls)}({text})"

    def _string(self, value: str) -> str:
        text = str.__add__("", str.__getitem__(value, slice(0, MAX_MASKED)))
        masked = self._masked(text)
        if masked is None:
            return f"<str of {str.__len__(value)} characters>"
        if len(masked) > self.limit:
            masked = masked[: self.limit] + "..."
        return str.__repr__(masked)

    def _bytes(self, value: Any, cls: type) -> str:
        base = bytes if _has_base(cls, bytes) else bytearray
        head = bytes(base.__getitem__(value, slice(0, MAX_MASKED)))
        text = bytes.__repr__(head)  # b'...', escapes everything that is not ASCII
        masked = self._masked(text)
        if masked is None:
            return f"<{_short_name(cls)} of {base.__len__(value)} bytes>"
        if len(masked) > self.limit:
            masked = masked[: self.limit] + "..."
        return self._subclassed(cls, bytes, masked) if base is bytes else f"bytearray({masked})"

    # containers
    def _items(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for count, item in enumerate(iterator):
            if count >= MAX_ITEMS:
                return
            yield item

    def _sequence(self, value: Any, cls: type, base: Any, opening: str, closing: str, depth: int) -> str:
        size = base.__len__(value)
        if not size:
            inner = ""
        elif depth >= MAX_DEPTH:
            inner = "..."
        else:
            inner = ", ".join(self._strings_hiding_secrets(list(self._items(base.__iter__(value))), depth))
            if size > MAX_ITEMS:
                inner += f", ... ({size} items)"
        if _one_of(base, (set, frozenset)) and not size:
            text = f"{base.__name__}()"
        else:
            text = opening + inner + closing
        return text if cls is base else f"{_short_name(cls)}({text})"

    def _strings_hiding_secrets(self, items: list[Any], depth: int) -> list[str]:
        """Items of a sequence; ``--api_key VALUE``, ``--token=VALUE`` and ``("token", VALUE)``
        keep the option's name and hide the value."""
        shown: list[str] = []
        hide_next = False
        for item in items:
            if hide_next:
                shown.append(HIDDEN)
                hide_next = False
                continue
            text = _plain_text(item) if _has_base(type(item), str) else None
            if text is not None and text.startswith("-"):
                name, equals, _ = text.partition("=")
                if secrets.is_secret_name(name.lstrip("-")):
                    if equals:
                        shown.append(str.__repr__(name + "=" + HIDDEN))
                    else:
                        shown.append(self.format(item, depth + 1))
                        hide_next = True
                    continue
            shown.append(self.format(item, depth + 1))
        return shown

    def _tuple(self, value: Any, cls: type, depth: int) -> str:
        _, fields = _lookup(cls, "_fields")
        if cls is not tuple and type(fields) is tuple and all(type(f) is str for f in fields):
            # A namedtuple: its fields by name.
            values = tuple.__iter__(value)
            pairs = [(name, next(values, None)) for name in fields[: tuple.__len__(value)]]
            return self._named(_short_name(cls), pairs, depth, len(pairs))
        size = tuple.__len__(value)
        if size == 2 and depth < MAX_DEPTH:
            first = tuple.__getitem__(value, 0)
            if _secret_named(first):
                text = f"({self.format(first, depth + 1)}, {HIDDEN})"
                return text if cls is tuple else f"{_short_name(cls)}({text})"
        if size == 1 and depth < MAX_DEPTH:
            text = f"({self.format(tuple.__getitem__(value, 0), depth + 1)},)"
            return text if cls is tuple else f"{_short_name(cls)}({text})"
        return self._sequence(value, cls, tuple, "(", ")", depth)

    def _mapping_items(self, pairs: Iterator[tuple[Any, Any]], size: int, depth: int) -> str:
        if not size:
            return "{}"
        if depth >= MAX_DEPTH:
            return "{...}"
        pieces = []
        for key, item in self._items(pairs):
            hidden = _secret_named(key)
            shown = HIDDEN if hidden else self.format(item, depth + 1)
            pieces.append(f"{self.format(key, depth + 1)}: {shown}")
        if size > MAX_ITEMS:
            pieces.append(f"... ({size} items)")
        return "{" + ", ".join(pieces) + "}"

    def _dict(self, value: Any, cls: type, depth: int) -> str:
        text = self._mapping_items(iter(dict.items(value)), dict.__len__(value), depth)
        return text if cls is dict else f"{_short_name(cls)}({text})"

    def _environ(self, value: Any, depth: int) -> str:
        data = _instance_fields(value, type(value)).get("_data")
        if type(data) is not dict:
            return "environ({...})"

        def decoded() -> Iterator[tuple[Any, Any]]:
            for key, item in dict.items(data):
                if type(key) is bytes:
                    key = bytes.decode(key, "utf-8", "surrogateescape")
                if type(item) is bytes:
                    item = bytes.decode(item, "utf-8", "surrogateescape")
                yield key, item

        return f"environ({self._mapping_items(decoded(), dict.__len__(data), depth)})"

    # objects
    def _exception(self, value: Any, cls: type, depth: int) -> str:
        try:
            args = _EXCEPTION_ARGS.__get__(value)
        except Exception:  # not the guard: a user's exception: its C-level args may raise
            args = ()
        if type(args) is not tuple or depth >= MAX_DEPTH:
            return f"{_short_name(cls)}(...)"
        inner = ", ".join(self.format(arg, depth + 1) for arg in self._items(tuple.__iter__(args)))
        return f"{_short_name(cls)}({inner})"

    def _module(self, value: Any) -> str:
        try:
            name = _MODULE_DICT.__get__(value).get("__name__")
        except Exception:  # not the guard: a user's module: its namespace may be anything
            name = None
        return f"<module {name!r}>" if type(name) is str else "<module>"

    def _function_name(self, value: Any) -> str:
        try:
            name = _FUNCTION_NAME.__get__(value)
            return name if type(name) is str else "?"
        except Exception:  # not the guard: a user's function: its name may be anything
            return "?"

    def _instance(self, value: Any, cls: type, depth: int) -> str:
        fields = _instance_fields(value, cls)
        if not fields:
            return f"<{type_name(cls)} object>"
        if depth >= MAX_DEPTH:
            return f"{_short_name(cls)}(...)"
        # Public fields first: a module's in_features says more than its _parameters.
        names = sorted(fields, key=lambda name: name.startswith("_"))
        return self._named(_short_name(cls), [(name, fields[name]) for name in names], depth, len(names))

    def _named(self, label: str, pairs: list[tuple[str, Any]], depth: int, size: int) -> str:
        if depth >= MAX_DEPTH:
            return f"{label}(...)"
        pieces = []
        for name, item in pairs[:MAX_ITEMS]:
            shown = HIDDEN if secrets.is_secret_name(name) else self.format(item, depth + 1)
            pieces.append(f"{name}={shown}")
        if size > MAX_ITEMS:
            pieces.append(f"... ({size} fields)")
        return f"{label}({', '.join(pieces)})"


def instance_dict(value: Any) -> dict[str, Any]:
    """The instance's own ``__dict__`` (a plain dict), read through its type's C descriptor
    only: a class that defines ``__dict__`` as a property does not get it run; else ``{}``."""
    cls = type(value)
    _, raw = _lookup(cls, "__dict__")
    if not _one_of(type(raw), _C_DESCRIPTORS):
        return {}
    try:
        namespace = raw.__get__(value, cls)
    except Exception:  # not the guard: a user's object: its C-level __dict__ getter may raise
        return {}
    return namespace if type(namespace) is dict else {}


def _instance_fields(value: Any, cls: type) -> dict[str, Any]:
    """The fields stored in the instance: its ``__dict__`` (read through the type's C
    descriptor), its ``__slots__`` (C member descriptors), in dataclass field order first."""
    found: dict[str, Any] = {}
    _, raw = _lookup(cls, "__dict__")
    if _one_of(type(raw), _C_DESCRIPTORS):  # SimpleNamespace keeps its dict in a member
        try:
            namespace = raw.__get__(value, cls)
        except Exception:  # not the guard: a user's object: its C-level namespace getter may raise
            namespace = None
        if type(namespace) is dict:
            for key, item in dict.items(namespace):
                if type(key) is str:
                    found[key] = item
    for klass in _mro(cls):
        slots = _class_dict(klass).get("__slots__", ())
        names = (slots,) if type(slots) is str else (slots if _one_of(type(slots), (tuple, list)) else ())
        for name in names:
            if type(name) is not str or name in ("__dict__", "__weakref__") or name in found:
                continue
            descriptor = _class_dict(klass).get(name)
            if type(descriptor) is types.MemberDescriptorType:
                try:
                    found[name] = descriptor.__get__(value, klass)
                except Exception:  # not the guard: a user's object's slot, read from C
                    continue  # a slot never set
    _, declared = _lookup(cls, "__dataclass_fields__")
    if type(declared) is dict:
        ordered = {name: found[name] for name in dict.__iter__(declared) if type(name) is str and name in found}
        ordered.update(found)
        return ordered
    return found


def _array_summary(value: Any, cls: type) -> str | None:
    """``<Tensor shape=(2, 3) dtype=torch.float32 device=cpu>``, from C-level attributes only;
    ``None`` when the object has no C-level ``shape``."""
    guard: Any = None
    if _array_library(cls) == "torch":
        torch = sys.modules.get("torch")
        tensor_base = getattr(getattr(torch, "_C", None), "TensorBase", None)
        if isinstance(tensor_base, type) and _has_base(cls, tensor_base):
            # A subclass with its own __torch_dispatch__ may answer .shape and .device from
            # Python (wrapper subclasses: DTensor-, FakeTensor-like): shown by type only.
            _, dispatch = _lookup(cls, "__torch_dispatch__")
            disabled = getattr(torch._C, "_disabled_torch_dispatch_impl", None)  # type: ignore[union-attr]
            if dispatch is not None and dispatch is not disabled:
                return f"<{_short_name(cls)}>"
            # A subclass's __torch_function__, and a TorchFunctionMode active in this thread,
            # would run on every attribute read; DisableTorchFunction (C, this thread only)
            # keeps the read to the C getter.
            disable = getattr(torch._C, "DisableTorchFunction", None)  # type: ignore[union-attr]
            if disable is None:
                return f"<{_short_name(cls)}>"
            guard = disable
    try:
        if guard is not None:
            with guard():
                return _summarise(value, cls)
        return _summarise(value, cls)
    except Exception:  # not the guard: a user's array: its C-level attributes may raise
        return f"<{_short_name(cls)}>"


def _pandas_summary(value: Any, cls: type) -> str:
    """``<DataFrame shape=(3, 2)>``: the lengths of a frame's or series' axes, read from the
    block manager's C-level ``axes`` and each index's array or range (no property of pandas
    runs, no column is read); else the type alone."""
    plain = f"<{type_name(cls)}>"
    manager = _instance_fields(value, cls).get("_mgr")
    if manager is None:
        return plain
    axes = _c_attribute(manager, type(manager), "axes")
    if axes is None:  # a series' manager keeps them in the instance
        axes = _instance_fields(manager, type(manager)).get("axes")
    if type(axes) is not list or not 1 <= list.__len__(axes) <= 2:
        return plain
    lengths = []
    for axis in list.__iter__(axes):
        fields = _instance_fields(axis, type(axis))
        data, span = fields.get("_data"), fields.get("_range")
        shape = _c_attribute(data, type(data), "shape") if data is not None else None
        if type(span) is range:
            lengths.append(range.__len__(span))
        elif type(shape) is tuple and shape and type(shape[0]) is int:
            lengths.append(shape[0])
        else:
            return plain
    # A frame's axes are [columns, rows]; its shape is (rows, columns).
    lengths.reverse()
    dims = ", ".join(map(str, lengths)) + ("," if len(lengths) == 1 else "")
    return f"<{_short_name(cls)} shape=({dims})>"


def _summarise(value: Any, cls: type) -> str | None:
    shape = _c_attribute(value, cls, "shape")
    if shape is None or not _has_base(type(shape), tuple):
        return None
    dims = []
    for dim in tuple.__iter__(shape):
        if not _has_base(type(dim), int):
            return None
        dims.append(int.__repr__(dim))
    parts = [f"shape=({', '.join(dims)}{',' if len(dims) == 1 else ''})"]
    for name in ("dtype", "device"):
        shown = _c_text(_c_attribute(value, cls, name))
        if shown:
            parts.append(f"{name}={shown}")
    return f"<{_short_name(cls)} {' '.join(parts)}>"


def _c_text(value: Any) -> str | None:
    """Text of a dtype or device object from C code only: ``torch.float32``, ``cpu``,
    ``float32``."""
    if value is None:
        return None
    cls = type(value)
    if cls is str:
        return value
    if _module_root(cls) == "torch":
        for name in ("__str__", "__repr__"):
            owner, method = _lookup(cls, name)
            if owner is not object and type(method) is types.WrapperDescriptorType:
                try:
                    text = method(value)  # torch.dtype and torch.device are C types
                    return text if type(text) is str else None
                except Exception:  # not the guard: a user's dtype/device: its C-level text may raise
                    return None
        return None
    # numpy.dtype: its scalar type's name (the dtype's own str() runs Python code).
    scalar = _c_attribute(value, cls, "type")
    if _has_base(type(scalar), type):
        return _short_name(scalar)
    return None


def describe(value: Any, limit: int = MAX_REPR) -> str:
    """One line of text for ``value`` (at most ``limit`` characters), secrets hidden, made
    without running any of the value's code. Never raises."""
    try:
        text = _Formatter(limit).format(value, 0)
    except RecursionError:
        text = f"<{type_name(type(value))}>"
    except Exception as error:  # not the guard: a user's object: anything unreadable is shown by type only
        text = f"<{type_name(type(value))}: not shown ({type(error).__name__})>"
    return safetext.safe(text, limit)


def exception_text(exc: BaseException, limit: int = 500) -> str:
    """``ValueError: bad value``: the exception's type and arguments as Python prints them
    for a plain exception, without calling its ``__str__`` (which may raise or block)."""
    cls = type(exc)
    try:
        args = _EXCEPTION_ARGS.__get__(exc)
    except Exception:  # not the guard: a user's exception: its C-level args may raise
        args = ()
    formatter = _Formatter(limit)
    if _has_base(cls, OSError):
        message = _os_error_text(exc, formatter)
    elif type(args) is not tuple or not args:
        message = ""
    elif len(args) == 1 and _has_base(type(args[0]), str) and not _has_base(cls, KeyError):
        message = safetext.mask(str.__getitem__(args[0], slice(0, MAX_MASKED)))
    elif len(args) == 1:
        message = formatter.format(args[0], 1)
    else:
        message = formatter.format(args, 1)
    text = f"{_short_name(cls)}: {message}" if message else _short_name(cls)
    return safetext.safe(text, limit)


def _os_error_text(exc: BaseException, formatter: _Formatter) -> str:
    """``[Errno 2] No such file or directory: 'x'``, as ``OSError.__str__`` writes it."""
    members = OSError.__dict__
    fields = {}
    for name in ("errno", "strerror", "filename", "filename2"):
        try:
            fields[name] = members[name].__get__(exc)
        except Exception:  # not the guard: a user's OSError: its C-level fields may raise
            fields[name] = None
    if fields["errno"] is None or fields["strerror"] is None:
        args = _EXCEPTION_ARGS.__get__(exc)
        return formatter.format(args, 1) if type(args) is tuple and args else ""
    text = f"[Errno {formatter.format(fields['errno'], 1)}] {safetext.mask(formatter.format(fields['strerror'], 1).strip(chr(39)))}"
    if fields["filename"] is not None:
        text += f": {formatter.format(fields['filename'], 1)}"
        if fields["filename2"] is not None:
            text += f" -> {formatter.format(fields['filename2'], 1)}"
    return text


def frame_values(
    items: Iterator[tuple[Any, Any]], keep: int, expired: Callable[[], bool]
) -> dict[str, str]:
    """Up to ``keep`` named values from ``items`` (a frame's locals), as :func:`describe`
    shows them; dunder names, modules, functions and classes left out before counting, and
    secret-looking names hidden. Stops with a note once ``expired()``."""
    shown: dict[str, str] = {}
    left = 0
    for name, value in items:
        if type(name) is not str or (name.startswith("__") and name.endswith("__")) or is_noise(value):
            continue
        if len(shown) >= keep:
            left += 1
            continue
        if expired():
            shown["..."] = "time budget spent"
            break
        label = safetext.safe(name, 80)
        shown[label] = HIDDEN if secrets.is_secret_name(name) else describe(value)
    if left:
        shown["..."] = f"{left} more"
    return shown


def is_dict(value: Any) -> bool:
    """True for a ``dict`` or a subclass of it, checked without running its code."""
    return _has_base(type(value), dict)
