"""TTH001 good: a module that does not import tether; its `ctx` is some other library's.

click's ParamType.convert(self, value, param, ctx) is a fixed signature: an unannotated
`ctx` counts as a tether context only in modules that import tether.
"""

from __future__ import annotations

import time


class Upper:
    def convert(self, value, param, ctx):
        return value.upper()


def callback(value, ctx):
    time.sleep(0)
    return value
