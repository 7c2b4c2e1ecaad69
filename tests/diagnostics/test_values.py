"""amldbg.diagnostics.values: what a dump shows of a value, made without running its code."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import os
import types
from collections import UserDict
from typing import Any

import pytest

from amldbg.diagnostics.values import describe, exception_text, frame_values, instance_dict

calls: list[str] = []


class Trap:
    """Every hook a formatter could run records itself and raises."""

    def __init__(self) -> None:
        self.path = "/data/shard-3"

    def _record(self, what: str) -> Any:
        calls.append(what)
        raise AssertionError(f"{what} was called")

    def __repr__(self) -> str:
        return self._record("__repr__")

    def __str__(self) -> str:
        return self._record("__str__")

    def __getattr__(self, name: str) -> Any:
        return self._record(f"__getattr__ {name}")

    def __len__(self) -> int:
        return self._record("__len__")

    def __iter__(self) -> Any:
        return self._record("__iter__")

    def __eq__(self, other: object) -> bool:
        return self._record("__eq__")

    def __hash__(self) -> int:
        return self._record("__hash__")


class TrapList(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        calls.append("list __iter__")
        raise AssertionError

    def __len__(self) -> int:
        calls.append("list __len__")
        raise AssertionError

    def __repr__(self) -> str:
        calls.append("list __repr__")
        raise AssertionError


class TrapDict(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        calls.append("dict items")
        raise AssertionError

    def __repr__(self) -> str:
        calls.append("dict __repr__")
        raise AssertionError


class PropertyDict:
    @property  # type: ignore[misc]
    def __dict__(self) -> Any:  # noqa: PLE0237
        calls.append("__dict__ property")
        raise AssertionError


class Slotted:
    __slots__ = ("epoch", "api_key", "unset")

    def __init__(self) -> None:
        self.epoch = 3
        self.api_key = "k-123"


@dataclasses.dataclass
class Config:
    lr: float
    hf_token: str
    layers: list[int] = dataclasses.field(default_factory=lambda: [1, 2])


class Color(enum.IntEnum):
    RED = 1


@pytest.fixture(autouse=True)
def _no_calls() -> Any:
    del calls[:]
    yield
    assert calls == [], f"the formatter ran the object's code: {calls}"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "None"),
        (True, "True"),
        (12, "12"),
        (0.25, "0.25"),
        ("a'b", '"a\'b"'),
        (b"\x00ab", "b'\\x00ab'"),
        ([1, "x"], "[1, 'x']"),
        ((1,), "(1,)"),
        (set(), "set()"),
        ({"a": {"b": {"c": 1}}}, "{'a': {'b': {...}}}"),
        (list(range(10)), "[0, 1, 2, 3, 4, 5, ... (10 items)]"),
        (10**400, "<int of 1329 bits>"),
        (Color.RED, "Color(1)"),
        (Trap(), "Trap(path='/data/shard-3')"),
        (TrapList([1, 2]), "TrapList([1, 2])"),
        (TrapDict(a=1), "TrapDict({'a': 1})"),
        (PropertyDict(), "<test_values.PropertyDict object>"),
        (Slotted(), "Slotted(epoch=3, api_key=<hidden>)"),
        (Config(0.1, "hf_x", [4]), "Config(lr=0.1, hf_token=<hidden>, layers=[4])"),
        (argparse.Namespace(lr=0.1, hf_token="x"), "Namespace(lr=0.1, hf_token=<hidden>)"),
        (types.SimpleNamespace(password="x"), "SimpleNamespace(password=<hidden>)"),
        (collections.namedtuple("Login", "user token")("me", "t"), "Login(user='me', token=<hidden>)"),
        (UserDict({"secret": "s", "n": 1}), "UserDict(data={'secret': <hidden>, 'n': 1})"),
        (["--hf_token", "abc", "--lr", "0.1", "--api_key=zz"], "['--hf_token', <hidden>, '--lr', '0.1', '--api_key=<hidden>']"),
        (("password", "pw"), "('password', <hidden>)"),
        (os, "<module 'os'>"),
        (describe, "<function describe>"),
        (ValueError("bad", 3), "ValueError('bad', 3)"),
    ],
    # pytest would name a case by the value's attributes: that runs the traps' hooks.
    ids=lambda case: case if isinstance(case, str) else "value",
)
def test_values_are_formatted_by_amldbg_itself(value: Any, shown: str) -> None:
    assert describe(value) == shown


def test_os_environ_itself_is_read_from_its_storage_with_secret_names_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", "/root")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    assert describe(os.environ) == "environ({'HOME': '/root', 'HF_TOKEN': <hidden>})"


def test_a_secret_is_masked_before_the_value_is_cut() -> None:
    url = "https://user:" + "p" * 300 + "@storage.example/data"
    assert describe(url) == "'https://<hidden>@storage.example/data'"
    assert "ppp" not in describe([url])


def test_text_is_one_line_and_bounded() -> None:
    text = describe("line\nnext\u2028sep\u202eoverride\x1b[31m" + "x" * 1000)
    assert "\n" not in text and "\u2028" not in text and "\u202e" not in text and "\x1b" not in text
    assert len(text) <= 160


def test_tensors_and_arrays_by_shape_dtype_and_device_only() -> None:
    import numpy
    import torch

    class Watched(torch.Tensor):
        def __repr__(self) -> str:
            calls.append("tensor __repr__")
            return "copied"

        @classmethod
        def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            calls.append("__torch_function__")
            return super().__torch_function__(func, types, args, kwargs or {})

    class Shaped(torch.Tensor):
        @property
        def shape(self) -> Any:  # a Python property: never run
            calls.append("shape property")
            raise AssertionError

    assert describe(torch.zeros(2, 3, dtype=torch.float16)) == "<Tensor shape=(2, 3) dtype=torch.float16 device=cpu>"
    assert describe(torch.zeros(2).as_subclass(Watched)) == "<Watched shape=(2,) dtype=torch.float32 device=cpu>"
    assert describe(torch.zeros(2).as_subclass(Shaped)).startswith("<test_values.")
    assert describe(torch.nn.Parameter(torch.zeros(1))) == "<Parameter shape=(1,) dtype=torch.float32 device=cpu>"
    assert describe(torch.zeros(2, device="meta")) == "<Tensor shape=(2,) dtype=torch.float32 device=meta>"
    assert describe(numpy.zeros((2, 2), dtype=numpy.int8)).startswith("<ndarray shape=(2, 2) dtype=int8")
    assert describe(torch.bfloat16) == "torch.bfloat16"
    assert describe(numpy.dtype("float32")) == "float32"


def test_a_dataframe_is_shown_by_its_shape_whatever_its_columns() -> None:
    import pandas

    assert describe(pandas.DataFrame({"dtype": ["COLUMN"], "shape": [1]})) == "<DataFrame shape=(1, 2)>"
    assert describe(pandas.Series([1, 2, 3])) == "<Series shape=(3,)>"


def test_exception_text_never_calls_str() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            calls.append("exception __str__")
            raise RuntimeError

    assert exception_text(Broken("shard 7")) == "Broken: shard 7"
    assert exception_text(KeyError("k")) == "KeyError: 'k'"
    assert exception_text(FileNotFoundError(2, "No such file", "x.csv")) == (
        "FileNotFoundError: [Errno 2] No such file: 'x.csv'"
    )
    assert exception_text(ValueError("Password=hunter2")) == "ValueError: Password=<hidden>"
    assert exception_text(RuntimeError()) == "RuntimeError"


def test_frame_values_skip_imports_and_functions_before_counting() -> None:
    names = {f"module_{n}": os for n in range(40)}
    names.update({"__name__": "__main__", "learning_rate": 0.1, "api_key": "k"})
    shown = frame_values(iter(names.items()), 24, lambda: False)
    assert shown == {"learning_rate": "0.1", "api_key": "<hidden>"}


def test_frame_values_stop_at_the_deadline() -> None:
    shown = frame_values(iter({"a": 1, "b": 2}.items()), 24, lambda: True)
    assert shown == {"...": "time budget spent"}


class EqualityMeta(type):
    # `base in cls.__mro__` compares with ==: a metaclass's __eq__ is script code.
    def __eq__(cls, other: object) -> bool:
        calls.append("metaclass __eq__")
        return NotImplemented

    __hash__ = type.__hash__


class Compared(metaclass=EqualityMeta):
    pass


class ComparedError(Exception, metaclass=type("ErrorMeta", (EqualityMeta,), {})):
    pass


def test_types_are_compared_by_identity_never_by_a_metaclass_eq() -> None:
    assert describe(Compared()) == "<test_values.Compared object>"
    assert describe([Compared]) == "[<class test_values.Compared>]"
    assert exception_text(ComparedError("x")) == "ComparedError: x"


def test_secret_names_that_are_str_or_bytes_subclasses_still_hide_their_values() -> None:
    class Key(str, enum.Enum):
        API_KEY = "api_key"

    class Option(str):
        pass

    assert describe({Key.API_KEY: "hunter2"}) == "{Key('api_key'): <hidden>}"
    assert describe([Option("--password"), "hunter2"]) == "[Option('--password'), <hidden>]"
    assert describe({type("B", (bytes,), {})(b"token"): "t"}) == "{B(b'token'): <hidden>}"
    assert describe([(Key.API_KEY, "hunter2")]) == "[(Key('api_key'), <hidden>)]"


def test_an_argv_of_name_value_pairs_hides_the_secret_values() -> None:
    argv = ["train.py", "db.secret_key=hunter2", "hf_token=abc123", "lr=0.1"]
    assert describe(argv) == "['train.py', 'db.secret_key=<hidden>', 'hf_token=<hidden>', 'lr=0.1']"


def test_masking_stops_at_the_values_budget_and_shows_lengths_instead() -> None:
    # Masking is the costly part: one value holding many long strings is bounded.
    text = "a://:" * 2000
    shown = describe({f"k{n}": [text] * 6 for n in range(6)}, limit=1_000_000)
    assert "<str of 10000 characters>" in shown


def test_tensor_subclasses_that_answer_from_python_are_shown_by_type_only() -> None:
    import torch

    class Wrapper(torch.Tensor):  # DTensor- and FakeTensor-like: metadata from Python
        @staticmethod
        def __new__(cls, inner: Any) -> Any:
            return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
                cls, inner.shape, dtype=inner.dtype, device=inner.device,
                dispatch_sizes_strides_policy="sizes", dispatch_device=True)

        @classmethod
        def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            calls.append("__torch_dispatch__")
            return NotImplemented

    from torch.overrides import TorchFunctionMode

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            calls.append("mode __torch_function__")
            return func(*args, **(kwargs or {}))

    assert describe(Wrapper(torch.zeros(2))) == "<Wrapper>"
    tensor = torch.zeros(2)
    with Mode():  # the SIGUSR1 dump runs in the main thread, where a mode may be active
        assert describe(tensor) == "<Tensor shape=(2,) dtype=torch.float32 device=cpu>"


def test_an_instance_dict_behind_a_property_is_not_read() -> None:
    import threading

    from amldbg.diagnostics import stacks

    class Worker(threading.Thread):
        @property  # type: ignore[misc]
        def __dict__(self) -> Any:  # noqa: PLE0237
            calls.append("thread __dict__ property")
            raise AssertionError

    worker = Worker()
    assert instance_dict(worker) == {}
    assert stacks.thread_name(worker) == "a thread"
