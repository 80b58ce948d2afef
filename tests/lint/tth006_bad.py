"""TTH006 bad: "should not use built-in type string as key for value" (go vet SA1029)."""

from __future__ import annotations

import tether
from tether import with_value


def tag(ctx: tether.Context, user: str) -> tether.Context:
    ctx = tether.with_value(ctx, "user", user)  # expect: TTH006
    ctx = with_value(ctx, 42, user)  # expect: TTH006
    return tether.with_value(ctx, key="tenant", value="acme")  # expect: TTH006
