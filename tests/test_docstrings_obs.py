"""The observability modules' public callables state the semantics checklist too."""

from __future__ import annotations

import importlib
import importlib.util
import inspect

import pytest
from tests.test_docstrings import CHECKLIST

MODULES = {
    "tether.debug": None,
    "tether.integrations.stdlib_logging": None,
    "tether.integrations.structlog": "structlog",
    "tether.integrations.prometheus": "prometheus_client",
    "tether.integrations.otel": "opentelemetry",
}


def public_callables():
    for modname, needs in MODULES.items():
        if needs is not None and importlib.util.find_spec(needs) is None:
            continue
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if inspect.isfunction(member):
                        yield f"{modname}.{name}.{attr}", member
                yield f"{modname}.{name}", obj
            elif inspect.isfunction(obj):
                yield f"{modname}.{name}", obj


CALLABLES = sorted(public_callables())


@pytest.mark.parametrize(("name", "obj"), CALLABLES, ids=[n for n, _ in CALLABLES])
def test_docstring_states_the_checklist(name, obj):
    doc = inspect.getdoc(obj) or ""
    low = doc.lower()
    missing = [item for item, words in CHECKLIST.items() if not any(w in low for w in words)]
    assert not missing, f"{name}: docstring does not state {missing}"
