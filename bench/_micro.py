"""The per-operation rows (1-4 of the issue's Speed table, and the extra rows).

Each row lists tether's line(s) and the closest equivalent operation of each peer.
How an operation maps onto a peer that has no context tree is a judgement call; the
mapping is written next to each case, and ``docs/benchmarks.md`` repeats it.

- *Derive a child*: tether ``with_cancel``/``with_timeout``; cantok ``SimpleToken(parent)``
  / ``TimeoutToken(60)``; asyncio, anyio and trio have no free-standing cancellable
  object, so their child is a cancel scope entered in the running task
  (``asyncio.timeout``, ``anyio.CancelScope``/``move_on_after``, ``trio.CancelScope``/
  ``move_on_after``), and *cancelling* a 60 s child means leaving the scope, which is what
  disarms its timer.
- *Observe*: tether ``err()``; cantok ``.cancelled``; a scope's ``cancel_called`` (a poll,
  the cheapest reading) or a checkpoint that raises and is caught by the scope (how
  trio/anyio code normally observes it); asyncio can only observe by suspending, so its
  line is ``timeout(None)`` + ``reschedule(past)`` + ``await sleep(0)`` -> ``TimeoutError``.
- *Depth*: a chain of ``depth`` derived contexts / nested tokens / nested scopes, queried
  at the leaf. ``cancel_called`` and ``task.cancelling()`` do not look at ancestors (they
  are O(1) because they answer a narrower question); cantok's ``.cancelled`` does.
- *Values*: tether ``with_value`` chain, one distinct key per level, the key looked up
  being the farthest one (bound at depth 1); the peer is Go's design written in Python (a
  linked node per binding, walked up until the key matches), with keys compared by
  identity as ``tether.Key`` is (an ``==`` test would make the walk ~3x slower).
  ``ContextVar.get`` is a reference point only: one variable, no tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from typing import Any

import anyio
import anyio.lowlevel
import cantok
import trio
import trio.lowlevel

import tether
from _harness import Case

__all__ = ["NAMESPACE", "micro_rows"]

BG = tether.background()


def tether_chain(depth: int) -> tuple[tether.Context, list[tether.CancelFunc]]:
    """A chain of ``depth`` ``with_cancel`` under background: (leaf, cancels, root first)."""
    ctx = BG
    cancels = []
    for _ in range(depth):
        ctx, cancel = tether.with_cancel(ctx)
        cancels.append(cancel)
    return ctx, cancels


def tether_value_chain(depth: int) -> tuple[tether.Context, tether.Key[int]]:
    """``depth`` nested ``with_value``, a distinct key each: (leaf, the farthest key)."""
    keys = [tether.Key[int](f"k{i}") for i in range(depth)]
    ctx = BG
    for i, k in enumerate(keys):
        ctx = tether.with_value(ctx, k, i)
    return ctx, keys[0]


class Node:
    """Go's ``valueCtx`` in Python: one binding per node, looked up by walking parents.

    Keys compare by identity (the cheapest test; ``tether.Key`` compares so too).
    """

    __slots__ = ("key", "parent", "val")

    def __init__(self, parent: Node | None, key: object, val: object) -> None:
        self.parent = parent
        self.key = key
        self.val = val

    def value(self, key: object) -> object:
        node: Node | None = self
        while node is not None:
            if node.key is key:
                return node.val
            node = node.parent
        return None


def py_chain(depth: int) -> tuple[Node, object]:
    keys = [object() for _ in range(depth)]
    node: Node | None = None
    for i, k in enumerate(keys):
        node = Node(node, k, i)
    assert node is not None
    return node, keys[0]


def cantok_chain(depth: int) -> cantok.SimpleToken:
    tok = cantok.SimpleToken()
    for _ in range(depth - 1):
        tok = cantok.SimpleToken(tok)
    return tok


VAR: contextvars.ContextVar[int] = contextvars.ContextVar("bench", default=0)

NAMESPACE: dict[str, Any] = {
    "asyncio": asyncio,
    "anyio": anyio,
    "cantok": cantok,
    "contextlib": contextlib,
    "threading": threading,
    "tether": tether,
    "trio": trio,
    "BG": BG,
    "VAR": VAR,
    "cantok_chain": cantok_chain,
    "py_chain": py_chain,
    "tether_chain": tether_chain,
    "tether_value_chain": tether_value_chain,
}


def _derive_cancel_observe() -> list[Case]:
    return [
        Case(
            "tether",
            "c, cancel = with_cancel(live parent); cancel(); c.err()",
            setup="parent, pcancel = tether.with_cancel(BG)",
            stmt="c, cancel = tether.with_cancel(parent); cancel(); c.err()",
            teardown="pcancel()",
            primary=True,
        ),
        Case(
            "tether",
            "the same under background() (nothing to register with)",
            stmt="c, cancel = tether.with_cancel(BG); cancel(); c.err()",
        ),
        Case(
            "cantok",
            "t = SimpleToken(parent); t.cancel(); t.cancelled",
            setup="parent = cantok.SimpleToken()",
            stmt="t = cantok.SimpleToken(parent); t.cancel(); t.cancelled",
        ),
        Case(
            "asyncio",
            "async with timeout(None): reschedule(past); await sleep(0) -> TimeoutError",
            stmt="""
                try:
                    async with asyncio.timeout(None) as to:
                        to.reschedule(-1.0)
                        await asyncio.sleep(0)
                except TimeoutError:
                    pass
            """,
            runner="asyncio",
        ),
        Case(
            "anyio",
            "with CancelScope() as s: s.cancel(); s.cancel_called  (asyncio backend)",
            stmt="""
                with anyio.CancelScope() as s:
                    s.cancel()
                    s.cancel_called
            """,
            runner="asyncio",
        ),
        Case(
            "anyio",
            "with CancelScope() as s: s.cancel(); await checkpoint()  (raises, caught)",
            stmt="""
                with anyio.CancelScope() as s:
                    s.cancel()
                    await anyio.lowlevel.checkpoint()
            """,
            runner="asyncio",
        ),
        Case(
            "trio",
            "with CancelScope() as s: s.cancel(); s.cancel_called",
            stmt="""
                with trio.CancelScope() as s:
                    s.cancel()
                    s.cancel_called
            """,
            runner="trio",
        ),
        Case(
            "trio",
            "with CancelScope() as s: s.cancel(); await checkpoint_if_cancelled()",
            stmt="""
                with trio.CancelScope() as s:
                    s.cancel()
                    await trio.lowlevel.checkpoint_if_cancelled()
            """,
            runner="trio",
        ),
    ]


def _scopes_60s(asyncio_label: str) -> list[Case]:
    """The peers' 60 s timeout scope, entered and left (rows R2 and X3)."""
    return [
        Case(
            "asyncio",
            asyncio_label,
            stmt="""
                async with asyncio.timeout(60.0):
                    pass
            """,
            runner="asyncio",
        ),
        Case(
            "anyio",
            "with move_on_after(60): pass  (asyncio backend)",
            stmt="""
                with anyio.move_on_after(60.0):
                    pass
            """,
            runner="asyncio",
        ),
        Case(
            "trio",
            "with move_on_after(60): pass",
            stmt="""
                with trio.move_on_after(60.0):
                    pass
            """,
            runner="trio",
        ),
    ]


def _deadline_cancel() -> list[Case]:
    return [
        Case(
            "tether",
            "c, cancel = with_timeout(background(), 60); cancel()",
            stmt="c, cancel = tether.with_timeout(BG, 60.0); cancel()",
            primary=True,
        ),
        Case(
            "tether",
            "the same under a live with_cancel parent (registers the child too)",
            setup="parent, pcancel = tether.with_cancel(BG)",
            stmt="c, cancel = tether.with_timeout(parent, 60.0); cancel()",
            teardown="pcancel()",
        ),
        Case(
            "cantok",
            "t = TimeoutToken(60); t.cancel()",
            stmt="t = cantok.TimeoutToken(60.0); t.cancel()",
        ),
        *_scopes_60s("async with asyncio.timeout(60): pass  (arms, then disarms, a loop timer)"),
        Case(
            "asyncio",
            "loop.call_later(60, f).cancel()  (a bare timer: no scope)",
            setup="loop = asyncio.get_running_loop(); f = int",
            stmt="loop.call_later(60.0, f).cancel()",
            runner="asyncio",
            reference=True,
        ),
    ]


def _err_at(depth: int) -> list[Case]:
    return [
        Case(
            "tether",
            f"leaf.err() on a chain of {depth} with_cancel",
            setup=f"leaf, cancels = tether_chain({depth})",
            stmt="leaf.err()",
            teardown="cancels[0]()",
            unroll=20,
            primary=True,
        ),
        Case(
            "asyncio",
            f"task.cancelling() inside {depth} nested asyncio.timeout(None)",
            setup=f"""
                task = asyncio.current_task()
                stack = contextlib.AsyncExitStack()
                for _ in range({depth}):
                    await stack.enter_async_context(asyncio.timeout(None))
            """,
            stmt="task.cancelling()",
            teardown="await stack.aclose()",
            unroll=20,
            runner="asyncio",
        ),
        Case(
            "cantok",
            f"leaf.cancelled on a chain of {depth} SimpleToken",
            setup=f"leaf = cantok_chain({depth})",
            stmt="leaf.cancelled",
            unroll=20,
        ),
        Case(
            "anyio",
            f"innermost.cancel_called, {depth} nested CancelScope (asyncio backend)",
            setup=f"""
                stack = contextlib.ExitStack()
                for _ in range({depth}):
                    leaf = stack.enter_context(anyio.CancelScope())
            """,
            stmt="leaf.cancel_called",
            teardown="stack.close()",
            unroll=20,
            runner="asyncio",
        ),
        Case(
            "trio",
            f"innermost.cancel_called, {depth} nested CancelScope",
            setup=f"""
                stack = contextlib.ExitStack()
                for _ in range({depth}):
                    leaf = stack.enter_context(trio.CancelScope())
            """,
            stmt="leaf.cancel_called",
            teardown="stack.close()",
            unroll=20,
            runner="trio",
        ),
    ]


def _value_at(depth: int) -> list[Case]:
    return [
        Case(
            "tether",
            f"leaf.value(key) on {depth} with_value, key bound at depth 1",
            setup=f"leaf, key = tether_value_chain({depth})",
            stmt="leaf.value(key)",
            unroll=20,
            primary=True,
        ),
        Case(
            "python",
            f"walk a chain of {depth} parent-linked nodes (Go's valueCtx in Python)",
            setup=f"leaf, key = py_chain({depth})",
            stmt="leaf.value(key)",
            unroll=20,
        ),
        Case(
            "contextvars",
            "VAR.get()  (one variable, no tree: reference point)",
            stmt="VAR.get()",
            unroll=20,
            reference=True,
        ),
    ]


def _check() -> list[Case]:
    return [
        Case(
            "tether",
            "leaf.check() on a live chain of 10",
            setup="leaf, cancels = tether_chain(10)",
            stmt="leaf.check()",
            teardown="cancels[0]()",
            unroll=20,
            primary=True,
        ),
        Case(
            "cantok",
            "leaf.check() on a live chain of 10 SimpleToken",
            setup="leaf = cantok_chain(10)",
            stmt="leaf.check()",
            unroll=20,
        ),
        Case(
            "anyio",
            "await checkpoint_if_cancelled() in 10 nested CancelScope (asyncio)",
            setup="""
                stack = contextlib.ExitStack()
                for _ in range(10):
                    stack.enter_context(anyio.CancelScope())
            """,
            stmt="await anyio.lowlevel.checkpoint_if_cancelled()",
            teardown="stack.close()",
            unroll=20,
            runner="asyncio",
        ),
        Case(
            "trio",
            "await checkpoint_if_cancelled() in 10 nested CancelScope",
            setup="""
                stack = contextlib.ExitStack()
                for _ in range(10):
                    stack.enter_context(trio.CancelScope())
            """,
            stmt="await trio.lowlevel.checkpoint_if_cancelled()",
            teardown="stack.close()",
            unroll=20,
            runner="trio",
        ),
    ]


def _is_set() -> list[Case]:
    return [
        Case(
            "tether",
            "ctx.done().is_set() on a live ctx",
            setup="ctx, cancel = tether.with_cancel(BG)",
            stmt="ctx.done().is_set()",
            teardown="cancel()",
            unroll=20,
            primary=True,
        ),
        Case(
            "threading",
            "threading.Event().is_set()  (reference)",
            setup="ev = threading.Event()",
            stmt="ev.is_set()",
            unroll=20,
            reference=True,
        ),
        Case(
            "cantok",
            "token.keep_on()",
            setup="tok = cantok.SimpleToken()",
            stmt="tok.keep_on()",
            unroll=20,
        ),
    ]


def _block() -> list[Case]:
    return [
        Case(
            "tether",
            "with with_timeout(background(), 60): pass",
            stmt="""
                with tether.with_timeout(BG, 60.0):
                    pass
            """,
            primary=True,
        ),
        Case(
            "tether",
            "async with with_timeout(background(), 60): pass  (in a task)",
            stmt="""
                async with tether.with_timeout(BG, 60.0):
                    pass
            """,
            runner="asyncio",
        ),
        *_scopes_60s("async with asyncio.timeout(60): pass"),
    ]


def micro_rows() -> list[tuple[str, list[Case]]]:
    """(row id, cases) for every per-operation row, in table order."""
    return [
        ("R1", _derive_cancel_observe()),
        ("R2", _deadline_cancel()),
        ("R3a", _err_at(10)),
        ("R3b", _err_at(100)),
        ("R4a", _value_at(10)),
        ("R4b", _value_at(100)),
        ("X1", _check()),
        ("X2", _is_set()),
        ("X3", _block()),
    ]
