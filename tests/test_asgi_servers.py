"""uvicorn and Hypercorn as Supervisor components: a real SIGTERM to a real process.

The child serves a Starlette app under a Supervisor; the parent starts a slow request,
sends SIGTERM while it is in flight, and checks from the outside: the server stops
accepting at once, the request in flight completes (or, past the drain deadline, is
cut), the closers run, and the process exits with the supervisor's exit code within its
deadlines. Timing bounds are generous (a shared machine): they guard against hangs.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from tests.conftest import eventually

import tether

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

SERVERS = ["uvicorn", "hypercorn"]

CHILD = r"""
import asyncio, json, sys
import tether
from tether import lifecycle
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

kind, drain, slow = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
sup = lifecycle.Supervisor(drain_timeout=drain, close_timeout=2)

async def slow_endpoint(request):
    await asyncio.sleep(slow)
    # what the supervisor says while this request drains (SIGTERM came meanwhile)
    return PlainTextResponse(f"slow done; ready={sup.ready()} state={sup.state}")

async def ready(request):
    ok = sup.ready()
    return PlainTextResponse("ready" if ok else "not ready", status_code=200 if ok else 503)

app = Starlette(routes=[Route("/slow", slow_endpoint), Route("/ready", ready)])
if kind == "uvicorn":
    from tether.integrations.uvicorn import Server
    server = Server(app, host="127.0.0.1", port=0, log_level="warning")
else:
    from tether.integrations.hypercorn import Server
    server = Server(app, host="127.0.0.1", port=0)
sup.add("api", server.serve)

async def announce(ctx):
    while server.port is None:
        await asyncio.sleep(0.01)
    print(json.dumps({"port": server.port}), flush=True)
    await ctx.done()

sup.add("announce", announce)
sup.on_close("db", lambda ctx: print(json.dumps({"closed": "db"}), flush=True))
code = sup.run()
print(json.dumps({"exit": code, "unfinished": list(sup.report.unfinished)}), flush=True)
sys.exit(code)
"""


class Child:
    def __init__(self, tmp_path, kind: str, drain: float, slow: float):
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), kind, str(drain), str(slow)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            pytest.fail(f"child did not start: {self.proc.communicate()[1]}")
        self.port = json.loads(line)["port"]

    def get(self, path: str, timeout: float = 30) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()

    def refuses(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return False
        except OSError:
            return True

    def finish(self, timeout: float) -> tuple[int, list[dict], str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"child did not exit in {timeout}s: {err}")
        return self.proc.returncode, [json.loads(x) for x in out.splitlines() if x], err


class InFlight:
    """A GET in a thread; keeps its outcome."""

    def __init__(self, child: Child, path: str):
        self.result: tuple[int, str] | BaseException | None = None
        self.t = threading.Thread(target=self._run, args=(child, path))
        self.t.start()

    def _run(self, child, path):
        try:
            self.result = child.get(path)
        except BaseException as e:
            self.result = e

    def join(self, timeout=30):
        self.t.join(timeout)
        assert not self.t.is_alive()
        return self.result


@pytest.mark.parametrize("kind", SERVERS)
def test_sigterm_stops_accepting_and_drains_the_request_in_flight(tmp_path, kind):
    child = Child(tmp_path, kind, drain=10, slow=1.0)
    eventually(lambda: child.get("/ready", timeout=2) == (200, "ready"), timeout=10)
    req = InFlight(child, "/slow")
    time.sleep(0.3)  # the request is in flight
    t0 = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    eventually(child.refuses, timeout=3)  # stops accepting at once, the drain goes on
    # drained under the supervisor's shutdown: readiness was off while it finished
    assert req.join() == (200, "slow done; ready=False state=stopping")
    code, lines, err = child.finish(timeout=15)
    took = time.monotonic() - t0
    assert code == 0, err
    assert {"closed": "db"} in lines
    assert {"exit": 0, "unfinished": []} in lines
    assert took < 1.0 + 6  # the request's own second, plus margin; not uvicorn's own timing


@pytest.mark.parametrize("kind", SERVERS)
def test_the_drain_deadline_cuts_what_still_runs_and_the_service_exits(tmp_path, kind):
    child = Child(tmp_path, kind, drain=0.5, slow=60)
    eventually(lambda: child.get("/ready", timeout=2) == (200, "ready"), timeout=10)
    req = InFlight(child, "/slow")
    time.sleep(0.3)
    t0 = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    code, lines, err = child.finish(timeout=20)
    took = time.monotonic() - t0
    assert took < 0.5 + 2 + 4  # drain_timeout + close_timeout + margin, never the 60 s
    assert {"closed": "db"} in lines, err
    assert "the drain deadline passed" in err
    # the exit code tells the truth: the drain did not complete (requests were cut)
    assert code == 1, err
    assert {"exit": 1, "unfinished": ["api"]} in lines
    result = req.join()
    assert not (isinstance(result, tuple) and result[0] == 200)  # it was cut


@pytest.mark.parametrize("kind", SERVERS)
def test_an_ended_context_serves_nothing_and_bad_arguments_are_clear(kind):
    if kind == "uvicorn":
        from tether.integrations.uvicorn import Server
    else:
        from tether.integrations.hypercorn import Server

    server = Server(lambda scope, receive, send: None, port=0)
    ended, cancel = tether.with_cancel(tether.background())
    cancel()
    asyncio.run(server.serve(ended))
    assert server.port is None  # never bound
    with pytest.raises(TypeError, match=r"tether: serve needs a tether\.Context"):
        asyncio.run(server.serve(None))
    with pytest.raises(TypeError, match="tether: port must be an int"):
        Server(print, port="80")
    with pytest.raises(ValueError, match=r"tether: port must be in 0\.\.65535"):
        Server(print, port=70000)
    with pytest.raises(TypeError, match="tether: Server\\(\\) does not take workers"):
        Server(print, workers=2)


@pytest.mark.parametrize("kind", SERVERS)
def test_without_the_library_the_error_names_the_extra(kind, monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, kind, None)
    if kind == "hypercorn":
        monkeypatch.setitem(sys.modules, "hypercorn.asyncio", None)
        monkeypatch.setitem(sys.modules, "hypercorn.config", None)
    mod = importlib.import_module(f"tether.integrations.{kind}")
    server = mod.Server(print, port=0)
    with pytest.raises(ImportError, match=rf"pip install 'tether\[{kind}\]'"):
        asyncio.run(server.serve(tether.background()))


@pytest.mark.parametrize("kind", SERVERS)
def test_docstrings_state_the_checklist(kind):
    import importlib
    import inspect

    from tests.test_docstrings import CHECKLIST

    server = importlib.import_module(f"tether.integrations.{kind}").Server
    for obj in (server, server.serve, server.port):
        low = (inspect.getdoc(obj) or "").lower()
        missing = [k for k, words in CHECKLIST.items() if not any(w in low for w in words)]
        assert not missing, f"{kind}.{getattr(obj, '__name__', obj)}: {missing}"
    assert server.__module__ == f"tether.integrations.{kind}"
