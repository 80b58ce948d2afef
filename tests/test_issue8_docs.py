"""Issue 8, items 13-15: the README points to the project's own docs, the concurrency
guide has the recipe for code that ignores tether (its examples run in
test_docs_concurrency.py), and the demo says what was measured."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
GUIDE = (ROOT / "docs" / "concurrency.md").read_text()


def test_readme_points_to_files_users_have():
    assert "DESIGN.md" not in README
    links = re.findall(r"\]\((docs/[^)#]+)", README)
    assert links
    for link in links:
        assert (ROOT / link).is_file(), link


def test_readme_status_lists_what_is_on_main():
    status = README[README.index("## Status") :]
    for doc in ("boundaries", "io", "idempotency", "observability", "lint", "lifecycle"):
        assert f"docs/{doc}.md" in status, doc
    assert "are next" not in status


def test_guide_says_plainly_that_group_and_to_thread_wait():
    assert "**`Group` waits for it**" in GUIDE
    assert "**and so does `to_thread`**" in GUIDE
    assert "abandon=True" in GUIDE
    assert "tether.after_func(ctx" in GUIDE
    assert "ctx.remaining()" in GUIDE
    assert "asyncio.ensure_future(ctx.done())" in GUIDE


def test_demo_does_not_blame_the_gil_switch_interval_unmeasured():
    demo = (ROOT / "examples" / "demo.py").read_text()
    assert "most of that delay is CPython's GIL switch interval" not in demo
