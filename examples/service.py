"""A small service under tether.lifecycle.Supervisor, logging JSON lines to stdout.

Components: a producer feeding a worker pool as fast as it takes items, an interval
job, and detached audit writes fired by every processed item. Send SIGTERM (or press
Ctrl-C) to watch the graceful shutdown; send it twice to exit at once.

    python examples/service.py --item-seconds 0.05 --drain-timeout 5

tests/test_shutdown.py runs it and checks, from these lines, that every accepted item
was processed or reported as not processed, and how and when the process exited.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import tether
from tether import lifecycle

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JsonLines(logging.Handler):
    """One JSON object per record: time, level, message, and every ``extra`` field."""

    def emit(self, record: logging.LogRecord) -> None:
        out: dict[str, Any] = {
            "t": round(time.monotonic(), 4),
            "level": record.levelname,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD:
                out[k] = v if isinstance(v, int | float | str | bool | list) else repr(v)
        if record.exc_info and record.exc_info[1] is not None:
            out["error"] = repr(record.exc_info[1])
        try:
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # the reader went away
            pass


log = logging.getLogger("service")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--item-seconds", type=float, default=0.05)
    p.add_argument("--drain-timeout", type=float, default=5.0)
    p.add_argument("--close-timeout", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--queue-size", type=int, default=20)
    args = p.parse_args()

    handler = JsonLines()
    for name in ("tether", "service"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False

    runner = lifecycle.DetachedRunner(limit=4, backlog=200, timeout=5)

    def audit(ctx: tether.Context, item: int) -> None:
        ctx.done().wait(0.02)  # a write that takes a moment
        log.info("audit written", extra={"event": "audit_done", "item": item})

    def handle(ctx: tether.Context, item: int) -> None:
        # "work" that honours its context: returns early if it ends
        if ctx.done().wait(args.item_seconds):
            ctx.check()
        log.info(
            "item done", extra={"event": "item_done", "item": item, **lifecycle.log_extra(ctx)}
        )
        try:
            runner.go(ctx, audit, item, name=f"audit-{item}")
            log.info("audit accepted", extra={"event": "audit_accepted", "item": item})
        except lifecycle.Rejected as e:
            log.warning(
                "audit rejected", extra={"event": "audit_rejected", "item": item, "why": str(e)}
            )

    def unprocessed(item: int, reason: str) -> None:
        log.warning(
            "item not processed",
            extra={"event": "item_unprocessed", "item": item, "reason": reason},
        )

    pool = lifecycle.WorkerPool(
        handle,
        workers=args.workers,
        queue_size=args.queue_size,
        item_timeout=max(1.0, args.item_seconds * 4),
        on_unprocessed=unprocessed,
    )

    def producer(ctx: tether.Context) -> None:
        item = 0
        while ctx.err() is None:
            try:
                pool.put(ctx, item)
            except (tether.ContextError, lifecycle.ShuttingDown):
                return
            log.info("item accepted", extra={"event": "item_accepted", "item": item})
            item += 1

    def tick(ctx: tether.Context) -> None:
        log.info("tick", extra={"event": "tick", **lifecycle.log_extra(ctx)})

    sup = lifecycle.Supervisor(
        drain_timeout=args.drain_timeout, close_timeout=args.close_timeout, name="service"
    )
    sup.on_close("detached", runner.close, timeout=args.close_timeout)  # closed last
    sup.add("producer", producer)
    sup.add("pool", pool.run, stop_after="producer")  # its intake closes after the producer's
    sup.add("ticker", lifecycle.every(0.2, tick, immediately=True).arun)
    log.info("pid", extra={"event": "boot"})
    sup.main()


if __name__ == "__main__":
    main()
