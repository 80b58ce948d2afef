"""TTH002 good: every derived pair is entered with `with` or its cancel is used on every path."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import tether
from tether import with_timeout as wt

from ._helpers import awork, log, work


def with_block(ctx: tether.Context) -> None:
    with tether.with_timeout(ctx, 1) as child:
        work(child)


async def async_with_block(ctx: tether.Context) -> None:
    async with wt(ctx, 1) as child:
        await awork(child)


def try_finally(ctx: tether.Context, ok: bool) -> None:
    child, cancel = tether.with_cancel(ctx)
    try:
        if not ok:
            return
        if ok is None:
            raise ValueError("never")
        work(child)
    finally:
        cancel()


def cancel_on_every_path(ctx: tether.Context, ok: bool) -> int:
    child, cancel = tether.with_cancel(ctx)
    if not ok:
        cancel()
        return 0
    work(child)
    cancel()
    return 1


def returned_to_the_caller(ctx: tether.Context) -> tuple[tether.Context, Any]:
    child, cancel = tether.with_timeout(ctx, 1)
    return child, cancel


def returns_the_pair(ctx: tether.Context) -> tether.Scope:
    return tether.with_timeout(ctx, 1)


def passed_to_a_callee(ctx: tether.Context) -> threading.Timer:
    child, cancel = tether.with_cancel(ctx)
    work(child)
    t = threading.Timer(5.0, cancel)
    t.start()
    return t


def registered_on_an_exit_stack(ctx: tether.Context, stack: contextlib.ExitStack) -> None:
    child, cancel = tether.with_cancel(ctx)
    stack.callback(cancel)
    work(child)


def entered_by_an_exit_stack(ctx: tether.Context) -> None:
    with contextlib.ExitStack() as stack:
        child = stack.enter_context(tether.with_timeout(ctx, 1))
        work(child)


class Holder:
    def __init__(self) -> None:
        self.cancels: list[Any] = []

    def keep(self, ctx: tether.Context) -> None:
        child, cancel = tether.with_cancel(ctx)
        self.cancels.append(cancel)  # stored: its owner cancels it later
        work(child)


def closure_uses_it(ctx: tether.Context) -> Any:
    child, cancel = tether.with_cancel(ctx)

    def stop() -> None:
        cancel()

    work(child)
    return stop


def loop_cancels_each(ctx: tether.Context, urls: list[str]) -> None:
    for url in urls:
        child, cancel = tether.with_timeout(ctx, 1)
        try:
            if not url:
                continue
            work(child, url)
        finally:
            cancel()


def loop_with_blocks(ctx: tether.Context, urls: list[str]) -> None:
    for url in urls:
        with tether.with_timeout(ctx, 1) as child:
            if url == "stop":
                break
            work(child, url)


def conditional_derive(ctx: tether.Context, timeout: float | None) -> None:
    cancel = None
    if timeout is not None:
        ctx, cancel = tether.with_timeout(ctx, timeout)
    try:
        work(ctx)
    finally:
        if cancel is not None:
            cancel()


def scope_entered(ctx: tether.Context) -> None:
    scope = tether.with_timeout(ctx, 1)
    with scope as child:
        work(child)


def handler_cancels(ctx: tether.Context) -> int | None:
    child, cancel = tether.with_timeout(ctx, 1)
    try:
        work(child)
    except OSError:
        cancel()
        log("failed")
        return None
    cancel()
    return 1


def nested_try_finally(ctx: tether.Context) -> None:
    try:
        child, cancel = tether.with_cancel(ctx)
        try:
            work(child)
        finally:
            cancel()
    except OSError:
        return


def main() -> None:
    ctx, stop = tether.signal_context(signal.SIGTERM)
    try:
        work(ctx)
    finally:
        stop()


def with_cancel(parent: object) -> tuple[object, object]:  # not tether's
    return parent, None


def unrelated_same_name() -> None:
    child, cancel = with_cancel(None)
    log(child)


def derived_at_module_level_is_not_checked() -> None:
    pass


ROOT, STOP = tether.with_cancel(tether.background())


def cancel_in_a_loop_that_runs(ctx: tether.Context) -> None:
    child, cancel = tether.with_cancel(ctx)
    work(child)
    for _ in range(2):  # runs at least once: cancel is called
        cancel()


def unpacked_later(ctx: tether.Context) -> None:
    scope = tether.with_timeout(ctx, 1)
    child, cancel = scope
    try:
        work(child)
    finally:
        cancel()


@contextlib.contextmanager
def scope_with_finally(ctx: tether.Context) -> Iterator[tether.Context]:
    child, cancel = tether.with_timeout(ctx, 1)
    try:
        yield child
    finally:
        cancel()


def plain_generator(ctx: tether.Context) -> Iterator[tether.Context]:
    # not a context manager: nothing is thrown in at the yield
    child, cancel = tether.with_timeout(ctx, 1)
    yield child
    cancel()
