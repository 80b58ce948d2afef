"""The semantics checklist (tests/test_docstrings.py) for the gRPC and OpenTelemetry
integrations' public callables."""

from __future__ import annotations

import inspect

import pytest

from test_docstrings import CHECKLIST
from tether.integrations import grpc as tgrpc
from tether.integrations import otel
from tether.integrations.grpc import aio as tgrpc_aio

MODULES = {"grpc": tgrpc, "grpc.aio": tgrpc_aio, "otel": otel}
NOT_CALLS = {"ClientCancelled"}  # a cause to inspect, not a call


def public_callables():
    for mname, mod in MODULES.items():
        for name in mod.__all__:
            if name in NOT_CALLS:
                continue
            obj = getattr(mod, name)
            if inspect.isclass(obj):
                yield f"{mname}.{name}", obj
                for attr, member in vars(obj).items():
                    if attr.startswith("_") and attr != "__init__":
                        continue
                    if callable(member) or isinstance(member, property):
                        yield f"{mname}.{name}.{attr}", member
            elif callable(obj):
                yield f"{mname}.{name}", obj


CALLABLES = sorted(public_callables())


@pytest.mark.parametrize(("name", "obj"), CALLABLES, ids=[n for n, _ in CALLABLES])
def test_docstring_states_the_checklist(name, obj):
    doc = inspect.getdoc(obj) or ""
    low = doc.lower()
    missing = [item for item, words in CHECKLIST.items() if not any(w in low for w in words)]
    assert not missing, f"{name}: docstring does not state {missing}"


def test_modules_say_when_they_were_added():
    for mod in MODULES.values():
        assert "Added in 0.1." in (mod.__doc__ or "")
