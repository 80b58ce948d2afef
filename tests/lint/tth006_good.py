"""TTH006 good: keys are tether.Key objects, which compare by identity and cannot collide."""

from __future__ import annotations

import tether

USER = tether.Key[str]("user")


def tag(ctx: tether.Context, user: str) -> tether.Context:
    return tether.with_value(ctx, USER, user)


def with_value(ctx: object, key: str, value: str) -> object:  # not tether's
    return (ctx, key, value)


def unrelated(ctx: tether.Context) -> object:
    return with_value(ctx, "user", "bob")
