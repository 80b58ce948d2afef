"""Context-tagged logs: stdlib logging's ContextFilter and structlog's add_context."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

import tether
from tether.integrations.stdlib_logging import ContextFilter
from tether.lifecycle import WORKER


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, Capture]]:
    log = logging.getLogger("tests.obs.logging")
    h = Capture()
    h.addFilter(ContextFilter())
    log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield log, h
    finally:
        log.removeHandler(h)


def fan_out(log: logging.Logger) -> None:
    """One request's work: its own line, a Group thread, to_thread and asyncio tasks."""

    def in_group(ctx: tether.Context) -> None:
        log.info("group")

    def in_thread(ctx: tether.Context) -> None:
        log.info("to_thread")
        with tether.Group(ctx) as g:
            g.go(in_group)

    async def in_task(ctx: tether.Context) -> None:
        await asyncio.sleep(0)
        log.info("taskgroup")

    async def plain_task() -> None:
        await asyncio.sleep(0)
        log.info("create_task")

    async def request(rid: str) -> None:
        req = tether.with_value(tether.background(), tether.REQUEST_ID, rid)
        async with tether.with_cancel(req) as ctx:
            log.info("handler")
            await tether.to_thread(ctx, in_thread)
            async with tether.TaskGroup(ctx) as g:
                g.go(in_task)
            await asyncio.create_task(plain_task())

    async def main() -> None:
        # two requests at once: their records must not mix
        await asyncio.gather(request("req-a"), request("req-b"))

    asyncio.run(main())


def test_every_record_of_a_fanned_out_request_carries_its_id(captured):
    log, h = captured
    fan_out(log)
    by_id: dict[str, list[str]] = {}
    for r in h.records:
        by_id.setdefault(r.request_id, []).append(r.getMessage())  # type: ignore[attr-defined]
    expected = sorted(["handler", "to_thread", "group", "taskgroup", "create_task"])
    assert sorted(by_id) == ["req-a", "req-b"]
    assert sorted(by_id["req-a"]) == expected
    assert sorted(by_id["req-b"]) == expected


def test_outside_a_request_tags_are_missing(captured):
    log, h = captured
    log.info("no request")
    (r,) = h.records
    assert (r.request_id, r.trace_id, r.worker) == (None, None, None)  # type: ignore[attr-defined]


def test_missing_value_is_configurable():
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert ContextFilter(missing="-").filter(rec)
    assert (rec.request_id, rec.worker, rec.trace_id) == ("-", "-", "-")  # type: ignore[attr-defined]
    # "%(request_id)s" formatting then works without a context
    fmt = logging.Formatter("%(request_id)s %(worker)s %(message)s")
    assert fmt.format(rec) == "- - m"


def test_explicit_ctx_extra_wins_over_current(captured):
    log, h = captured
    other = tether.with_value(
        tether.with_value(tether.background(), tether.REQUEST_ID, "explicit"), WORKER, "w-7"
    )
    cur = tether.with_value(tether.background(), tether.REQUEST_ID, "current")
    with tether.with_cancel(cur):
        log.info("a", extra={"ctx": other})
        log.info("b", extra={"ctx": "not a context"})
        log.info("c", extra={"request_id": "set-by-caller"})
    got = [(r.getMessage(), r.request_id, r.worker) for r in h.records]  # type: ignore[attr-defined]
    assert got == [("a", "explicit", "w-7"), ("b", "current", None), ("c", "set-by-caller", None)]


def test_an_ended_context_still_tags(captured):
    log, h = captured
    req = tether.with_value(tether.background(), tether.REQUEST_ID, "gone")
    with tether.with_cancel(req) as ctx:
        pass
    assert ctx.err() is not None
    log.info("late", extra={"ctx": ctx})
    assert h.records[0].request_id == "gone"  # type: ignore[attr-defined]


def test_filter_name_prefix_still_applies():
    f = ContextFilter("app")
    assert not f.filter(logging.LogRecord("other", logging.INFO, __file__, 1, "m", None, None))
    assert f.filter(logging.LogRecord("app.db", logging.INFO, __file__, 1, "m", None, None))


def test_trace_id_from_the_current_opentelemetry_span(captured):
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace import TracerProvider

    log, h = captured
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("outer") as span:
        log.info("inside")
        want = format(span.get_span_context().trace_id, "032x")
    log.info("outside")
    assert [r.trace_id for r in h.records] == [want, None]  # type: ignore[attr-defined]
    assert len(want) == 32


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_without_opentelemetry_trace_id_is_none_and_nothing_fails():
    proc = run_python(
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import logging, tether\n"
        "from tether.integrations.stdlib_logging import ContextFilter\n"
        "r = logging.LogRecord('x', 20, 'f', 1, 'm', None, None)\n"
        "ctx = tether.with_value(tether.background(), tether.REQUEST_ID, 'r1')\n"
        "r.ctx = ctx\n"
        "assert ContextFilter().filter(r)\n"
        "print(r.request_id, r.trace_id)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["r1", "None"]


# ------------------------------------------------------------------------------ structlog


def test_structlog_json_lines_carry_the_request_id():
    structlog = pytest.importorskip("structlog")
    from tether.integrations.structlog import add_context

    buf = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(buf),
        processors=[add_context, structlog.processors.JSONRenderer(sort_keys=True)],
    )

    def work(ctx: tether.Context) -> None:
        log.info("in group", n=1)

    req = tether.with_value(tether.background(), tether.REQUEST_ID, "r-42")
    with tether.with_cancel(tether.with_value(req, WORKER, "api")) as ctx:
        log.info("handler")
        with tether.Group(ctx) as g:
            g.go(work)
    other = tether.with_value(tether.background(), tether.REQUEST_ID, "r-other")
    log.info("explicit", ctx=other)
    log.info("caller wins", request_id="mine")
    log.info("outside")

    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines == [
        {"event": "handler", "request_id": "r-42", "trace_id": None, "worker": "api"},
        {"event": "in group", "n": 1, "request_id": "r-42", "trace_id": None, "worker": "api"},
        {"event": "explicit", "request_id": "r-other", "trace_id": None, "worker": None},
        {"event": "caller wins", "request_id": "mine", "trace_id": None, "worker": None},
        {"event": "outside", "request_id": None, "trace_id": None, "worker": None},
    ]


def test_structlog_processor_is_idempotent_and_keeps_a_non_context_ctx_key():
    pytest.importorskip("structlog")
    from tether.integrations.structlog import add_context

    ev: dict[str, object] = {"event": "e", "ctx": "a string"}
    once = dict(add_context(None, "info", ev))
    twice = dict(add_context(None, "info", dict(once)))
    assert (
        once
        == twice
        == {
            "event": "e",
            "ctx": "a string",
            "request_id": None,
            "trace_id": None,
            "worker": None,
        }
    )


def test_structlog_module_without_structlog_names_the_extra():
    proc = run_python(
        "import sys; sys.modules['structlog'] = None\n"
        "try:\n"
        "    import tether.integrations.structlog\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "tether: tether.integrations.structlog needs the 'structlog' extra: "
        "pip install 'tether[structlog]'"
    )


@pytest.mark.parametrize(
    "statement",
    [
        "import tether.debug",
        "import tether.integrations.stdlib_logging",
        "import tether.integrations._events",
        # a record outside any span: OpenTelemetry is tried, and only then imported
        "import logging, tether.integrations.stdlib_logging as m; "
        "m.ContextFilter().filter(logging.LogRecord('x', 20, 'f', 1, 'm', None, None))",
    ],
)
def test_stdlib_only_modules_import_nothing_else(statement):
    from tests.test_api import _imported_by

    out = _imported_by(statement)
    assert any(m.startswith("tether.") for m in out["new"])
    if "filter(" in statement:
        # OpenTelemetry (with its own dependencies) is the one library it may load
        assert not [m for m in out["outside_stdlib"] if m.startswith(("prometheus", "structlog"))]
    else:
        assert out["outside_stdlib"] == []
