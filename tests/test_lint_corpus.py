"""tests/lint/: every expected finding is reported, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tether.lint import CODES, check_paths, check_source

CORPUS = Path(__file__).resolve().parent / "lint"
FILES = sorted(p for p in CORPUS.glob("tth*.py"))
EXPECT = re.compile(r"#\s*expect:\s*(TTH\d{3}(?:\s*,\s*TTH\d{3})*)")


def expected(path: Path) -> set[tuple[int, str]]:
    out = set()
    for i, line in enumerate(path.read_text().splitlines(), 1):
        m = EXPECT.search(line)
        if m:
            out.update((i, c.strip()) for c in m.group(1).split(","))
    return out


def test_every_code_has_a_bad_and_a_good_file():
    names = {p.name for p in FILES}
    for code in CODES:
        if code == "TTH000":
            continue
        n = code[3:].lower()
        assert f"tth{n}_bad.py" in names
        assert f"tth{n}_good.py" in names


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_corpus_file(path: Path):
    want = expected(path)
    if path.name.endswith("_bad.py"):
        code = "TTH" + path.name[3:6]
        assert want, "a bad file must expect findings"
        assert {c for _, c in want} == {code}, "a bad file shows its own code only"
    else:
        assert not want, "a good file expects nothing"
    got = {(f.line, f.code) for f in check_source(path.read_text(), str(path))}
    missing = sorted(want - got)
    extra = sorted(got - want)
    assert not missing, f"missing {missing}"
    assert not extra, f"extra {extra}"


def test_the_whole_corpus_at_once():
    found = check_paths([str(CORPUS)])
    want = {(str(p), line, code) for p in FILES for line, code in expected(p)}
    assert {(f.path, f.line, f.code) for f in found} == want
    assert len(want) >= 40


def test_tth002_names_the_derive_line_and_the_path():
    src = (CORPUS / "tth002_bad.py").read_text()
    msgs = {f.line: f.message for f in check_source(src, "tth002_bad.py")}
    early = next(line for line, m in msgs.items() if "the return at line" in m)
    assert msgs[early].startswith(f"with_cancel() at line {early} ")
    assert f"the return at line {early + 2} is reached without using 'cancel'" in msgs[early]
    assert any("the raise at line" in m for m in msgs.values())
    assert any("the end of the function" in m for m in msgs.values())
    assert any("the loop's next iteration (it derives again at line" in m for m in msgs.values())
    assert any("the rebinding of 'cancel' at line" in m for m in msgs.values())
    assert any("discarded (assigned to _)" in m for m in msgs.values())
