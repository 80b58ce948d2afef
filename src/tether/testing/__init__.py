"""Testing helpers: a fake clock, and (as a pytest plugin) fixtures and a leak check.

The pytest plugin is registered through the ``pytest11`` entry point, so installing
tether gives every test suite the ``ctx`` and ``fake_clock`` fixtures.
"""

from ._fake_clock import FakeClock

__all__ = ["FakeClock"]
