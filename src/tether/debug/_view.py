"""``asgi_app()``: the live view of the context tree, as JSON and as a page."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from ._registry import leaks, snapshot

__all__ = ["asgi_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK = ("127.0.0.0/8", "::1/128")


def asgi_app(*, allow: Iterable[str] = LOOPBACK, refresh: float = 1.0) -> ASGIApp:
    """An ASGI app serving the live view; mount it at ``/debug/tether``.

    ``GET`` the mount point for an HTML page that draws the tree of tracked contexts
    (per context: kind, request id, remaining budget, age, creation site; children
    nested under their parent; ended ones fade out) and refreshes itself every
    ``refresh`` seconds (``?request_id=X`` draws one request's tree; clicking a request
    id in the page does that); ``?format=json`` returns ``tether.debug.snapshot()`` as
    JSON (``&request_id=X``: ``snapshot(request_id=X)``),
    and ``?format=leaks&older_than=S`` returns ``tether.debug.leaks(S)``. Shows data
    only while ``tether.debug.enable()`` is in effect (the page says so otherwise).

    Protection: clients whose address is outside ``allow`` (CIDRs; default loopback
    only) get ``403``, and so do clients without an address (a Unix socket) unless
    ``allow`` contains ``"unix"``. Only ``GET``/``HEAD`` (``405`` otherwise).
    ``lifespan`` is answered; ``websocket`` connections are closed.

    Building the app does not block; each call makes a new app; the app is
    thread-safe: serve it from any event loop and thread. It reads contexts, never ends them, so it
    shows ended contexts without harm. Raises ``ValueError`` for a malformed CIDR in
    ``allow`` or a non-positive ``refresh``.

    Added in 0.1.
    """
    nets = []
    allow_unix = False
    for a in allow:
        if a == "unix":
            allow_unix = True
            continue
        try:
            nets.append(ipaddress.ip_network(a, strict=False))
        except ValueError as e:
            raise ValueError(
                f"tether: asgi_app(allow=...) takes CIDRs like '10.0.0.0/8'; got {a!r}"
            ) from e
    if not isinstance(refresh, int | float) or not 0 < refresh < float("inf"):
        raise ValueError(f"tether: asgi_app(refresh=...) needs seconds > 0, got {refresh!r}")
    page = _PAGE.replace("__REFRESH_MS__", str(int(refresh * 1000))).encode()

    def allowed(scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return allow_unix
        try:
            ip = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(ip in n for n in nets)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        if not allowed(scope):
            await _respond(
                send,
                403,
                b"text/plain; charset=utf-8",
                b"tether: the debug view serves loopback clients only; "
                b"pass asgi_app(allow=[...CIDRs]) to allow others\n",
            )
            return
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await _respond(send, 405, b"text/plain; charset=utf-8", b"GET or HEAD only\n")
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        fmt = query.get("format", "html")
        if fmt == "json":
            body = json.dumps(snapshot(request_id=query.get("request_id"))).encode()
            await _respond(send, 200, b"application/json", body)
        elif fmt == "leaks":
            try:
                older = float(query.get("older_than", "300"))
                body = json.dumps(leaks(older)).encode()
            except ValueError as e:
                await _respond(send, 400, b"text/plain; charset=utf-8", f"{e}\n".encode())
                return
            await _respond(send, 200, b"application/json", body)
        else:
            await _respond(send, 200, b"text/html; charset=utf-8", page)

    return app


async def _respond(send: Send, status: int, ctype: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>tether: live contexts</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2330; background: #fafbfc; }
 h1 { font-size: 1.3em; margin: 0 0 .2em; }
 #meta { color: #5a6270; margin-bottom: 1em; }
 ul { list-style: none; margin: 0; padding-left: 1.4em; border-left: 1px dashed #c5cad3; }
 #tree > ul { border-left: none; padding-left: 0; }
 li { margin: .25em 0; transition: opacity .5s; }
 .node { display: inline-block; padding: .25em .6em; border-radius: 6px; background: #fff;
         border: 1px solid #d6dae1; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
 .kind { font-weight: 600; color: #2b5fb4; }
 .rid { font-family: ui-monospace, monospace; background: #eef2f8; padding: 0 .3em;
        border-radius: 3px; color: inherit; text-decoration: none; }
 a.rid:hover { background: #dbe5f5; }
 .site, .age { color: #5a6270; font-family: ui-monospace, monospace; font-size: .9em; }
 .budget { display: inline-block; width: 90px; height: 8px; background: #e6e9ee;
           border-radius: 4px; vertical-align: middle; overflow: hidden; }
 .budget > i { display: block; height: 100%; background: #3fa56b; }
 .low > i { background: #d9822b; } .out > i { background: #c73e3e; }
 .ended .node { background: #f1f2f4; color: #8a909b; border-style: dashed; }
 .reason { font-weight: 600; }
 .empty { color: #8a909b; font-style: italic; }
</style></head>
<body>
<h1>tether &mdash; live contexts</h1>
<div id="meta">loading&hellip;</div>
<div id="tree"></div>
<script>
"use strict";
const REFRESH = __REFRESH_MS__;
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function secs(s) {
  if (s === null || s === undefined) return "";
  const a = Math.abs(s);
  const t = a < 1 ? (a * 1000).toFixed(0) + " ms" : a < 120 ? a.toFixed(1) + " s"
          : (a / 60).toFixed(1) + " min";
  return s < 0 ? "-" + t : t;
}
function render(snap) {
  const meta = document.getElementById("meta");
  const tree = document.getElementById("tree");
  if (!snap.enabled) {
    meta.textContent = "tether.debug is disabled: call tether.debug.enable() in the server.";
    tree.replaceChildren();
    return;
  }
  const live = snap.contexts.filter(c => c.state === "live").length;
  const only = new URLSearchParams(location.search).get("request_id");
  meta.textContent = (only === null ? "" : "request " + only + ": ") + live + " live, " +
    (snap.contexts.length - live) + " recently ended, " + snap.overflow +
    " not tracked (limit " + snap.limit + "); refreshed " + new Date().toLocaleTimeString();
  if (only !== null) {
    const all = el("a", "all", "show every request");
    all.href = location.pathname;
    meta.append(" \u2014 ", all);
  }
  // show creation sites relative to the directory they all share
  const sites = snap.contexts.map(c => c.site).filter(s => s.startsWith("/"));
  let common = sites.length ? sites[0].slice(0, sites[0].lastIndexOf("/") + 1) : "";
  for (const s of sites) {
    while (common && !s.startsWith(common)) {
      common = common.slice(0, common.slice(0, -1).lastIndexOf("/") + 1);
    }
  }
  const short = s => (common && s.startsWith(common)) ? s.slice(common.length) : s;
  const byId = new Map(), kids = new Map();
  for (const c of snap.contexts) { byId.set(c.id, c); kids.set(c.id, []); }
  const roots = [];
  for (const c of snap.contexts) {
    if (c.parent !== null && byId.has(c.parent)) kids.get(c.parent).push(c);
    else roots.push(c);
  }
  function node(c) {
    const li = el("li", c.state === "ended" ? "ended" : "live");
    li.dataset.id = c.id;
    if (c.state === "ended") li.style.opacity = Math.max(0.25, 1 - c.ended_ago / 5).toFixed(2);
    const box = el("span", "node");
    box.append(el("span", "kind", c.kind), " ");
    if (c.request_id) {
      const a = el("a", "rid", c.request_id);
      a.href = location.pathname + "?request_id=" + encodeURIComponent(c.request_id);
      a.title = "show only this request";
      box.append(a, " ");
    }
    if (c.deadline_in !== null && c.state === "live") {
      const total = c.deadline_in + c.age;
      const frac = total > 0 ? Math.max(0, Math.min(1, c.deadline_in / total)) : 0;
      const bar = el("span", "budget" + (c.deadline_in <= 0 ? " out" : frac < 0.25 ? " low" : ""));
      const fill = el("i"); fill.style.width = (frac * 100).toFixed(0) + "%";
      bar.append(fill);
      bar.title = secs(c.deadline_in) + " left of " + secs(total);
      box.append(bar, " ", el("span", "age", secs(c.deadline_in) + " left"), " ");
    }
    box.append(el("span", "age", "age " + secs(c.age)), " ");
    if (c.state === "ended") box.append(el("span", "reason", c.reason), " ");
    const site = el("span", "site", short(c.site));
    site.title = c.site;
    box.append(site);
    box.title = c.repr || "";
    li.append(box);
    const ch = kids.get(c.id);
    if (ch.length) { const ul = el("ul"); ch.forEach(k => ul.append(node(k))); li.append(ul); }
    return li;
  }
  const ul = el("ul");
  roots.forEach(c => ul.append(node(c)));
  if (!roots.length) ul.append(el("li", "empty", "no tracked contexts"));
  tree.replaceChildren(ul);
}
async function tick() {
  try {
    const rid = new URLSearchParams(location.search).get("request_id");
    const q = "?format=json" + (rid === null ? "" : "&request_id=" + encodeURIComponent(rid));
    const r = await fetch(location.pathname + q, {cache: "no-store"});
    render(await r.json());
  } catch (e) {
    document.getElementById("meta").textContent = "cannot reach the server: " + e;
  }
  setTimeout(tick, REFRESH);
}
tick();
</script>
</body></html>
"""
