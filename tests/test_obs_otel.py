"""tether.integrations.otel.region: spans that end with the context's outcome."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from tests.conftest import eventually

import tether
from tether.integrations.otel import region
from tether.testing import FakeClock


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    got: list[ReadableSpan] = []

    def finished() -> list[ReadableSpan]:
        got[:] = exporter.get_finished_spans()
        return got

    yield tracer, finished
    provider.shutdown()


def one(finished) -> ReadableSpan:
    (span,) = finished()
    return span


def test_ok_block(spans):
    tracer, finished = spans
    req = tether.with_value(tether.background(), tether.REQUEST_ID, "r1")
    with tether.with_timeout(req, 30) as ctx, region(ctx, "work", tracer=tracer) as span:
        assert trace.get_current_span() is span
    s = one(finished)
    assert s.name == "work"
    assert s.attributes["tether.outcome"] == "ok"
    assert s.attributes["tether.request_id"] == "r1"
    assert 29 < s.attributes["tether.budget_seconds"] <= 30
    assert s.status.status_code is StatusCode.OK
    assert not s.events
    assert trace.get_current_span() is not span  # restored after the block


def test_deadline_ends_with_deadline_outcome_and_an_event_when_it_fired(spans):
    tracer, finished = spans
    with FakeClock() as clock, tether.with_timeout(tether.background(), 1.0) as ctx:
        with region(ctx, "slow", tracer=tracer) as sp:
            assert not sp.events
            clock.advance(1.5)
            # the event is added from the after_func thread while the block still runs
            eventually(lambda: bool(sp.events))
    s = one(finished)
    assert s.attributes["tether.outcome"] == "deadline"
    assert s.status.status_code is StatusCode.ERROR
    assert s.status.description == "deadline: context deadline exceeded"
    assert [(e.name, e.attributes["tether.reason"]) for e in s.events] == [
        ("tether.context_ended", "deadline")
    ]


def test_cancel_from_another_thread_is_canceled(spans):
    tracer, finished = spans
    ctx, cancel = tether.with_cancel(tether.background())
    with region(ctx, "wait", tracer=tracer):
        t = threading.Timer(0.01, cancel)
        t.start()
        assert ctx.done().wait(5)
        t.join()
    s = one(finished)
    assert s.attributes["tether.outcome"] == "canceled"
    assert s.status.description == "canceled: context canceled"


def test_a_plain_exception_is_error_and_recorded(spans):
    tracer, finished = spans
    with tether.with_cancel(tether.background()) as ctx:
        with pytest.raises(KeyError), region(ctx, "boom", tracer=tracer):
            raise KeyError("k")
    s = one(finished)
    assert s.attributes["tether.outcome"] == "error"
    assert s.status.status_code is StatusCode.ERROR
    assert [e.name for e in s.events] == ["exception"]


def test_an_outer_contexts_error_escaping_is_its_outcome(spans):
    tracer, finished = spans
    with tether.with_cancel(tether.background()) as ctx:
        with pytest.raises(tether.DeadlineExceeded), region(ctx, "x", tracer=tracer):
            raise tether.DeadlineExceeded()
    assert one(finished).attributes["tether.outcome"] == "deadline"


def test_already_ended_context(spans):
    tracer, finished = spans
    ctx, cancel = tether.with_cancel(tether.background())
    cancel()
    with region(ctx, "late", tracer=tracer):
        pass
    assert one(finished).attributes["tether.outcome"] == "canceled"


def test_async_region_nests_child_spans(spans):
    tracer, finished = spans

    async def main() -> None:
        async with tether.with_timeout(tether.background(), 0.05) as ctx:
            async with region(ctx, "outer", tracer=tracer):
                with tracer.start_as_current_span("inner"):
                    pass
                await asyncio.sleep(10)

    with pytest.raises(tether.DeadlineExceeded):
        asyncio.run(main())
    inner, outer = finished()
    assert inner.parent is not None
    assert inner.parent.span_id == outer.context.span_id
    assert outer.attributes["tether.outcome"] == "deadline"


def test_misuse(spans):
    tracer, _ = spans
    with pytest.raises(TypeError, match=r"^tether: parent context is None"):
        region(None, "x", tracer=tracer)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tether: region name must be a str"):
        region(tether.background(), 3, tracer=tracer)  # type: ignore[arg-type]
    r = region(tether.background(), "once", tracer=tracer)
    with r:
        pass
    with pytest.raises(RuntimeError, match=r"^tether: a region can be entered once"), r:
        pass


def test_without_opentelemetry_names_the_extra():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['opentelemetry'] = None\n"
            "try:\n    import tether.integrations.otel\nexcept ImportError as e:\n    print(e)\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip() == (
        "tether: tether.integrations.otel needs the 'otel' extra: pip install 'tether[otel]'"
    ), proc.stderr


def test_tether_propagator_is_reexported_when_present():
    import tether.integrations.otel as otel

    try:
        import tether.integrations._otel_propagator as impl  # type: ignore[import-not-found]
    except ImportError:
        with pytest.raises(ImportError):
            otel.TetherPropagator
    else:
        assert otel.TetherPropagator is impl.TetherPropagator
    with pytest.raises(AttributeError):
        otel.NoSuchThing
