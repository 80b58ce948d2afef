"""tether lint runs clean over tether's own src/, examples/ and documentation examples.

Documentation blocks are every ```python fence of docs/*.md and README.md (other branches
add guides: they are picked up automatically). A block that shows misuse on purpose
starts with a ``# bad`` comment line (docs/lint.md's bad examples) and is skipped here;
docs/lint.md's own test checks that those do produce their code.

KNOWN lists what the checker finds in code this branch may not edit (the core is being
rewritten; lifecycle and the integrations belong to their own branches) and why each
is deliberate. Each is a candidate for a ``# noqa: TTH00N`` with that reason; a finding
not listed fails the test, with the findings and this advice in the message.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from tether.lint import check_paths, check_source

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

PER_CALL = "a per-call object that lives and dies with one operation (Go's http.Request exception)"

KNOWN: dict[tuple[str, str], tuple[int, str]] = {
    # (file, code): (at most this many, why it is deliberate)
    ("src/tether/_context.py", "TTH003"): (
        7,
        "the context tree itself: Context/Done/CancelFunc hold their node and parent",
    ),
    ("src/tether/_group.py", "TTH003"): (1, "errgroup: Group owns g.ctx, the documented API"),
    ("src/tether/_taskgroup.py", "TTH003"): (1, "the same for TaskGroup"),
    ("src/tether/integrations/tenacity.py", "TTH003"): (
        2,
        "a tenacity stop/wait object built per retry call for that call's context",
    ),
    ("src/tether/lifecycle/_detached.py", "TTH003"): (
        2,
        "a queued job carries its base context (DetachedJob.ctx on the lifecycle branch)",
    ),
    ("src/tether/lifecycle/_signals.py", "TTH003"): (1, "the signal registry entry it cancels"),
    ("src/tether/lifecycle/_common.py", "TTH001"): (1, "wait_until(futs, ctx): private helper"),
    ("src/tether/lifecycle/_scheduler.py", "TTH001"): (1, "private (fn, ctx) trampoline"),
    ("src/tether/lifecycle/_supervisor.py", "TTH001"): (3, "private (fn, ctx) trampolines"),
    ("src/tether/lifecycle/_supervisor.py", "TTH004"): (
        3,
        "drain/close deadlines must outlive the cancelled run context (without_cancel would do)",
    ),
    ("docs/concurrency.md", "TTH005"): (1, "time.sleep stands in for CPU work between checks"),
}

# The same for the other branches' code as it stood at their heads when this branch was
# finished, so that merging them does not need new entries; not checked for staleness.
KNOWN_ELSEWHERE: dict[tuple[str, str], tuple[int, str]] = {
    ("src/tether/integrations/grpc/__init__.py", "TTH001"): (1, "_Call(call, ctx, gap): private"),
    ("src/tether/integrations/grpc/__init__.py", "TTH003"): (1, PER_CALL),
    ("src/tether/integrations/grpc/aio.py", "TTH001"): (1, "_Watch(call, ctx, gap): private"),
    ("src/tether/integrations/grpc/aio.py", "TTH003"): (1, PER_CALL),
    ("src/tether/integrations/httpx.py", "TTH001"): (2, "private stream wrappers (inner, ctx)"),
    ("src/tether/integrations/httpx.py", "TTH003"): (2, PER_CALL),
    ("src/tether/integrations/wsgi.py", "TTH001"): (1, "_ours(environ, ctx): private"),
    ("src/tether/integrations/wsgi.py", "TTH003"): (1, PER_CALL),
    ("src/tether/integrations/asyncpg.py", "TTH003"): (1, PER_CALL),
    ("src/tether/integrations/psycopg.py", "TTH003"): (1, PER_CALL),
    ("src/tether/integrations/redis.py", "TTH003"): (2, PER_CALL),
    ("src/tether/integrations/sqlite3.py", "TTH003"): (1, PER_CALL),
    ("src/tether/integrations/otel.py", "TTH003"): (1, "a Region is one span tied to its ctx"),
    ("src/tether/debug/_registry.py", "TTH001"): (1, "private row formatter, ctx optional"),
    ("src/tether/lifecycle/_consumer.py", "TTH001"): (2, "private _until helpers"),
    ("src/tether/lifecycle/_consumer.py", "TTH003"): (1, "the consumer's run root, for stop()"),
    ("src/tether/lifecycle/_consumer.py", "TTH007"): (
        1,
        "the worker loop outlives one message's error and ends on the consumer's state "
        "(ask its author: does _process let the run context's error through?)",
    ),
    ("src/tether/lifecycle/_ledger.py", "TTH001"): (1, "private, optional budget last"),
    ("src/tether/lifecycle/_pool.py", "TTH001"): (1, "private, optional budget last"),
    ("src/tether/lifecycle/_pool.py", "TTH004"): (1, "the drain grace outlives the run context"),
    ("src/tether/lifecycle/_detached.py", "TTH004"): (2, "the close grace outlives the run"),
    ("src/tether/integrations/asgi.py", "TTH003"): (3, PER_CALL),
    ("src/tether/integrations/asgi.py", "TTH001"): (1, "a per-request object: (scope, parent)"),
    ("src/tether/integrations/_asgi_server.py", "TTH001"): (1, "private: _first(task, ctx)"),
}


ADVICE = (
    "tether lint found misuse in tether's own code. Fix it, or if it is deliberate add "
    "`# noqa: TTH00N  <why>` on that line (a doc block showing misuse starts `# bad`):\n"
)


def doc_blocks() -> list[tuple[str, int, str]]:
    out = []
    for path in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        for i, block in enumerate(FENCE.findall(path.read_text())):
            if not block.lstrip().startswith("# bad"):
                out.append((str(path.relative_to(ROOT)), i, block))
    return out


def unexpected(findings: list[tuple[str, str, str]]) -> list[str]:
    counts = Counter((path, code) for path, code, _ in findings)
    bad = []
    for (path, code), n in sorted(counts.items()):
        allowed = KNOWN.get((path, code), KNOWN_ELSEWHERE.get((path, code), (0, "")))[0]
        if n > allowed:
            bad.extend(m for p, c, m in findings if (p, c) == (path, code))
    return bad


def test_src_and_examples_are_clean():
    found = check_paths([str(ROOT / "src"), str(ROOT / "examples")])
    rows = [(str(Path(f.path).relative_to(ROOT)), f.code, str(f)) for f in found]
    assert not unexpected(rows), ADVICE + "\n".join(unexpected(rows))


def test_documentation_examples_are_clean():
    blocks = doc_blocks()
    assert len(blocks) >= 10
    rows = [
        (path, f.code, str(f))
        for path, i, block in blocks
        for f in check_source(block, f"{path}[block {i}]")
    ]
    assert not unexpected(rows), ADVICE + "\n".join(unexpected(rows))


def test_known_findings_are_still_found():
    """An entry nobody needs any more should be deleted (keeps KNOWN honest)."""
    found = check_paths([str(ROOT / "src")])
    seen = {(str(Path(f.path).relative_to(ROOT)), f.code) for f in found}
    for path, i, block in doc_blocks():
        seen.update((path, f.code) for f in check_source(block, f"{path}[{i}]"))
    stale = sorted(k for k in KNOWN if k not in seen)
    assert not stale, f"remove these KNOWN entries, the code no longer has them: {stale}"
