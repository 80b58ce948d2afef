"""TTH002 bad: go vet lostcancel's test data, translated.

"The cancel function returned by context.WithCancel, WithTimeout and WithDeadline must
be called or the new context will remain live until its parent context is cancelled."
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import tether
from tether import with_deadline
from tether import with_timeout as wt

from ._helpers import log, work

derive = tether.with_cancel  # a module-level alias


def discarded(ctx: tether.Context) -> None:
    tether.with_cancel(ctx)  # expect: TTH002
    c, _ = tether.with_timeout(ctx, 1)  # expect: TTH002
    only_ctx = tether.with_timeout(ctx, 1)[0]  # expect: TTH002
    attr_ctx = tether.with_cancel(ctx).ctx  # expect: TTH002
    work(c, only_ctx, attr_ctx)


def early_return(ctx: tether.Context, ok: bool) -> None:
    # lostcancel: "this return statement may be reached without using the cancel var"
    child, cancel = tether.with_cancel(ctx)  # expect: TTH002
    if not ok:
        return
    work(child)
    cancel()


def never_called(ctx: tether.Context) -> None:
    child, cancel = wt(ctx, 5.0)  # expect: TTH002
    work(child)


def returns_only_the_context(ctx: tether.Context) -> tether.Context:
    # seed 002's leak: the derived context escapes, its cancel does not
    child, cancel = with_deadline(ctx, 10.0)  # expect: TTH002
    return child


def raise_misses_it(ctx: tether.Context, n: int) -> int:
    child, cancel = tether.with_timeout(ctx, 1)  # expect: TTH002
    if n < 0:
        raise ValueError("negative")
    work(child)
    cancel()
    return n


def handler_returns(ctx: tether.Context) -> int | None:
    child, cancel = tether.with_timeout(ctx, 1)  # expect: TTH002
    try:
        work(child)
    except OSError:
        log("failed")
        return None
    cancel()
    return 1


def only_in_one_branch(ctx: tether.Context, fast: bool) -> None:
    child, cancel = tether.with_timeout(ctx, 1)  # expect: TTH002
    if fast:
        work(child)
        cancel()
    else:
        work(child)


def loop_derives_again(ctx: tether.Context, urls: list[str]) -> None:
    # only the last one is cancelled: each iteration leaks the previous child
    for url in urls:
        child, cancel = tether.with_timeout(ctx, 1)  # expect: TTH002
        work(child, url)
    cancel()


def continue_skips_it(ctx: tether.Context, urls: list[str]) -> None:
    for url in urls:
        child, cancel = tether.with_timeout(ctx, 1)  # expect: TTH002
        if not url:
            continue
        work(child, url)
        cancel()


def break_skips_it(ctx: tether.Context, urls: list[str]) -> None:
    for url in urls:
        child, cancel = tether.with_timeout(ctx, 1)  # expect: TTH002
        if url == "stop":
            break
        work(child, url)
        cancel()


def rebound(ctx: tether.Context) -> None:
    child, cancel = tether.with_cancel(ctx)  # expect: TTH002
    work(child)
    child, cancel = tether.with_timeout(ctx, 1)
    with child:
        cancel()


def while_true_return(ctx: tether.Context) -> int:
    child, cancel = tether.with_cancel(ctx)  # expect: TTH002
    while True:
        n = work(child)
        if n:
            return 1
        cancel()
        child, cancel = tether.with_cancel(ctx)  # expect: TTH002


def finally_without_cancel(ctx: tether.Context) -> None:
    child, cancel = tether.with_cancel(ctx)  # expect: TTH002
    try:
        work(child)
    finally:
        log("done")


def scope_object_never_entered(ctx: tether.Context) -> tether.Context:
    scope = tether.with_timeout(ctx, 1)  # expect: TTH002
    return scope.ctx if False else ctx


def signal_stop_forgotten() -> None:
    ctx, stop = tether.signal_context(signal.SIGTERM)  # expect: TTH002
    work(ctx)


async def async_early_return(ctx: tether.Context, ok: bool) -> None:
    child, cancel = tether.with_timeout(ctx, 1)  # expect: TTH002
    if not ok:
        return
    await work(child)
    cancel()


def match_misses_a_case(ctx: tether.Context, cmd: str) -> None:
    child, cancel = tether.with_cancel(ctx)  # expect: TTH002
    match cmd:
        case "go":
            work(child)
            cancel()
        case _:
            return


def cancel_in_a_loop_that_may_not_run(ctx: tether.Context, n: int) -> None:
    child, cancel = tether.with_cancel(ctx)  # expect: TTH002
    work(child)
    for _ in range(n):  # n may be 0
        cancel()


def unpacked_later_and_lost(ctx: tether.Context, ok: bool) -> None:
    scope = tether.with_timeout(ctx, 1)  # expect: TTH002
    child, cancel = scope
    if ok:
        return
    work(child)
    cancel()


def through_a_module_alias(ctx: tether.Context) -> None:
    child, cancel = derive(ctx)  # expect: TTH002
    work(child)


@contextlib.contextmanager
def scope_without_finally(ctx: tether.Context) -> Iterator[tether.Context]:
    child, cancel = tether.with_timeout(ctx, 1)  # expect: TTH002
    yield child  # an exception in the with-block is raised here: cancel() is skipped
    cancel()
