"""The stream consumer and its sources document the semantics checklist (STYLE.md
habit 2), with the same lexical check as tests/test_docstrings.py."""

from __future__ import annotations

import pytest
from tests.test_docstrings import test_docstring_states_the_checklist as check


def _consumer_callables():
    """The stream consumer and its sources (tether.lifecycle + three integrations)."""
    import importlib

    from tether import lifecycle

    objs = [(f"lifecycle.{n}", getattr(lifecycle, n)) for n in ("Consumer", "RetryPolicy")]
    for mod, cls in (
        ("redis_streams", "RedisStreamSource"),
        ("nats", "JetStreamSource"),
        ("kafka", "KafkaSource"),
    ):
        try:
            m = importlib.import_module(f"tether.integrations.{mod}")
        except ImportError:
            continue
        objs.append((f"{mod}.{cls}", getattr(m, cls)))
    for name, obj in objs:
        yield name, obj
        for attr, member in vars(obj).items():
            if attr.startswith("_") or not (callable(member) or isinstance(member, property)):
                continue
            yield f"{name}.{attr}", member


CONSUMER_CALLABLES = sorted(_consumer_callables())


@pytest.mark.parametrize(
    ("name", "obj"), CONSUMER_CALLABLES, ids=[n for n, _ in CONSUMER_CALLABLES]
)
def test_consumer_docstrings_state_the_checklist(name, obj):
    check(name, obj)
