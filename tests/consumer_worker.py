"""A consumer service for the SIGTERM tests: ``python tests/consumer_worker.py CONFIG``.

CONFIG is JSON: ``source`` ("redis" or "nats") and its names, ``log`` (a file that gets
``start <id>`` and ``done <id>`` lines), ``slow_every`` (every n-th message, by payload
number, blocks until its context ends: a handler still running at the SIGTERM),
``concurrency``, ``grace``. It runs under a real ``Supervisor`` with its default
signals, so SIGTERM drains it; the exit code is the supervisor's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import tether
from tether import lifecycle


def main() -> None:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    log = open(cfg["log"], "a", buffering=1)
    slow_every = cfg.get("slow_every", 0)

    async def handler(ctx: tether.Context, msg: lifecycle.Message) -> None:
        data = msg.data
        n = int(data[b"n"] if isinstance(data, dict) else data)
        log.write(f"start {msg.id}\n")
        if slow_every and n % slow_every == 0:
            await ctx.done()  # a long job: runs until its context ends
            ctx.check()
        await asyncio.sleep(0.002)
        log.write(f"done {msg.id}\n")

    if cfg["source"] == "redis":
        from tether.integrations.redis_streams import RedisStreamSource

        source: lifecycle.Source = RedisStreamSource(
            cfg["url"], cfg["stream"], cfg["group"], cfg["consumer"], block=0.2
        )
    else:
        from tether.integrations.nats import JetStreamSource

        source = JetStreamSource(
            cfg["url"], cfg["stream"], cfg["durable"], subject=cfg["subject"], fetch_timeout=0.2
        )
    consumer = lifecycle.Consumer(
        source,
        handler,
        concurrency=cfg.get("concurrency", 4),
        grace=cfg.get("grace", 5.0),
        message_timeout=60,
    )
    sup = lifecycle.Supervisor(drain_timeout=20, close_timeout=5)
    sup.add("consumer", consumer.run)
    try:
        code = sup.run()
    finally:
        log.close()
    print(json.dumps({"stats": consumer.stats().__dict__}), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
