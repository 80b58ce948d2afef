"""The consumer's sources are optional: each imports its library itself, a missing one
raises ImportError naming the extra, and neither ``import tether`` nor
``tether.lifecycle.Consumer`` imports any of them."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    ("redis_streams", "redis", "redis"),
    ("nats", "nats", "nats"),
    ("kafka", "aiokafka", "kafka"),
]


@pytest.mark.parametrize(("module", "library", "extra"), CASES)
def test_a_missing_library_names_the_extra(module: str, library: str, extra: str):
    code = (
        "import sys\n"
        f"sys.modules[{library!r}] = None  # as if not installed\n"
        "try:\n"
        f"    import tether.integrations.{module}\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == (
        f"tether: tether.integrations.{module} needs the '{extra}' extra: "
        f"pip install 'tether[{extra}]'"
    )


def test_the_consumer_imports_no_broker_library():
    code = (
        "import sys, tether\n"
        "from tether.lifecycle import Consumer, RetryPolicy, Message, Source\n"
        "bad = [m for m in ('redis', 'nats', 'aiokafka') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "[]"
