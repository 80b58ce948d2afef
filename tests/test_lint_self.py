"""tether lint runs clean over tether's own src/, examples/ and documentation examples.

Documentation blocks are every ```python fence of docs/*.md and README.md (other branches
add guides: they are picked up automatically). A block that shows misuse on purpose
starts with a ``# bad`` comment line (docs/lint.md's bad examples) and is skipped here;
docs/lint.md's own test checks that those do produce their code.

KNOWN lists what the checker finds in code this branch may not edit (the core is being
rewritten; lifecycle belongs to its own branch) and why each is deliberate. Each is a
candidate for a ``# noqa: TTH00N`` with that reason; a finding not listed fails the test.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from tether.lint import check_paths, check_source

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

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
    ("src/tether/lifecycle/_detached.py", "TTH003"): (1, "a queued job carries its base context"),
    ("src/tether/lifecycle/_signals.py", "TTH003"): (1, "the signal registry entry it cancels"),
    ("src/tether/lifecycle/_detached.py", "TTH001"): (2, "private job/outcome plumbing"),
    ("src/tether/lifecycle/_common.py", "TTH001"): (1, "wait_until(futs, ctx): private helper"),
    ("src/tether/lifecycle/_scheduler.py", "TTH001"): (1, "private (fn, ctx) trampoline"),
    ("src/tether/lifecycle/_supervisor.py", "TTH001"): (3, "private (fn, ctx) trampolines"),
    ("src/tether/lifecycle/_supervisor.py", "TTH004"): (
        3,
        "drain/close deadlines must outlive the cancelled run context (without_cancel would do)",
    ),
    ("docs/concurrency.md", "TTH005"): (1, "time.sleep stands in for CPU work between checks"),
}


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
        allowed = KNOWN.get((path, code), (0, ""))[0]
        if n > allowed:
            bad.extend(m for p, c, m in findings if (p, c) == (path, code))
    return bad


def test_src_and_examples_are_clean():
    found = check_paths([str(ROOT / "src"), str(ROOT / "examples")])
    rows = [(str(Path(f.path).relative_to(ROOT)), f.code, str(f)) for f in found]
    assert not unexpected(rows), "\n".join(unexpected(rows))


def test_documentation_examples_are_clean():
    blocks = doc_blocks()
    assert len(blocks) >= 10
    rows = [
        (path, f.code, str(f))
        for path, i, block in blocks
        for f in check_source(block, f"{path}[block {i}]")
    ]
    assert not unexpected(rows), "\n".join(unexpected(rows))


def test_known_findings_are_still_found():
    """An entry nobody needs any more should be deleted (keeps KNOWN honest)."""
    found = check_paths([str(ROOT / "src")])
    seen = {(str(Path(f.path).relative_to(ROOT)), f.code) for f in found}
    for path, i, block in doc_blocks():
        seen.update((path, f.code) for f in check_source(block, f"{path}[{i}]"))
    stale = sorted(k for k in KNOWN if k not in seen)
    assert not stale, f"remove these KNOWN entries, the code no longer has them: {stale}"
