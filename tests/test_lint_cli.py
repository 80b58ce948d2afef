"""The command line, noqa, JSON output, import resolution and the flake8 plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tether.lint import check_paths, check_source
from tether.lint.__main__ import cli, main
from tether.lint.flake8 import Plugin

BAD = """\
import time
import tether


def f(url, ctx):
    time.sleep(1)
    return tether.with_value(ctx, "k", url)
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.lint", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bad.py").write_text(BAD)
    (tmp_path / "pkg" / "good.py").write_text("import tether\n\n\ndef f(ctx, url):\n    pass\n")
    (tmp_path / "pkg" / ".hidden").mkdir()
    (tmp_path / "pkg" / ".hidden" / "x.py").write_text(BAD)
    (tmp_path / "pkg" / "notes.txt").write_text(BAD)
    return tmp_path


def test_text_output_sorted_and_exit_1(tree: Path):
    proc = run("pkg", cwd=tree)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split(" ")[1] for ln in lines] == ["TTH001", "TTH005", "TTH006"]
    assert lines[0].startswith(os.path.join("pkg", "bad.py") + ":5:1: TTH001 ")
    assert lines[1].startswith(os.path.join("pkg", "bad.py") + ":6:5: TTH005 ")
    assert lines[2].startswith(os.path.join("pkg", "bad.py") + ":7:12: TTH006 ")


def test_clean_exit_0(tree: Path):
    proc = run("pkg/good.py", cwd=tree)
    assert (proc.returncode, proc.stdout) == (0, "")


def test_select_and_ignore(tree: Path):
    proc = run("--select", "TTH005,TTH006", "--ignore", "TTH006", "pkg", cwd=tree)
    assert proc.returncode == 1
    assert [ln.split(" ")[1] for ln in proc.stdout.splitlines()] == ["TTH005"]
    proc = run("--ignore", "TTH00", "pkg", cwd=tree)
    assert (proc.returncode, proc.stdout) == (0, "")


def test_json_format(tree: Path):
    proc = run("--format", "json", "pkg/bad.py", cwd=tree)
    assert proc.returncode == 1
    rows = json.loads(proc.stdout)
    assert [r["code"] for r in rows] == ["TTH001", "TTH005", "TTH006"]
    assert rows[1] == {
        "path": "pkg/bad.py",
        "line": 6,
        "col": 5,
        "code": "TTH005",
        "message": rows[1]["message"],
    }
    assert "tether.sleep(ctx, s)" in rows[1]["message"]
    clean = run("--format", "json", "pkg/good.py", cwd=tree)
    assert (clean.returncode, json.loads(clean.stdout)) == (0, [])


@pytest.mark.parametrize(
    "args",
    [
        ["--select", "XYZ1", "pkg"],
        ["--ignore", "TTH9", "pkg"],
        ["--format", "xml", "pkg"],
        ["--bogus", "pkg"],
        [],
        ["does-not-exist"],
    ],
)
def test_usage_errors_exit_2(tree: Path, args: list[str]):
    proc = run(*args, cwd=tree)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr


def test_unknown_code_message_says_what_to_pass(tree: Path):
    proc = run("--select", "E501", "pkg", cwd=tree)
    assert "tether: --select got unknown code 'E501'; pass codes such as TTH001" in proc.stderr


def test_unparsable_file_is_reported_not_a_crash(tree: Path):
    (tree / "pkg" / "broken.py").write_text("def f(:\n    pass\n")
    (tree / "pkg" / "latin.py").write_bytes(b"x = '\xff'\n")
    (tree / "pkg" / "cookie.py").write_bytes(b"# -*- coding: latin-1 -*-\nx = '\xff'\n")
    proc = run("pkg", cwd=tree)
    assert proc.returncode == 1
    broken = [ln for ln in proc.stdout.splitlines() if "broken.py" in ln]
    assert len(broken) == 1
    assert " TTH000 cannot parse this file: " in broken[0]
    assert any(
        "latin.py:1:1: TTH000 cannot read this file" in ln for ln in proc.stdout.splitlines()
    )
    assert "cookie.py" not in proc.stdout  # PEP 263: decoded as it declares
    # the other files are still checked
    assert sum(" TTH00" in ln and "bad.py" in ln for ln in proc.stdout.splitlines()) == 3
    # TTH000 cannot be deselected: a file nobody checked is never "clean"
    proc = run("--select", "TTH001", "pkg/broken.py", cwd=tree)
    assert proc.returncode == 1


def test_noqa_silences_only_the_named_code():
    src = BAD.replace("time.sleep(1)", "time.sleep(1)  # noqa: TTH005")
    assert [f.code for f in check_source(src)] == ["TTH001", "TTH006"]
    src = BAD.replace("time.sleep(1)", "time.sleep(1)  # noqa: TTH006")
    assert [f.code for f in check_source(src)] == ["TTH001", "TTH005", "TTH006"]
    src = BAD.replace("time.sleep(1)", "time.sleep(1)  # noqa: E501,TTH005")
    assert [f.code for f in check_source(src)] == ["TTH001", "TTH006"]
    src = BAD.replace("time.sleep(1)", "time.sleep(1)  # noqa")
    assert [f.code for f in check_source(src)] == ["TTH001", "TTH006"]
    src = BAD.replace("def f(url, ctx):", "def f(url, ctx):  # NOQA:TTH001")
    assert [f.code for f in check_source(src)] == ["TTH005", "TTH006"]


def test_aliases_are_resolved():
    src = """\
import tether as t
from tether import with_timeout as wt, Context as C
from tether import background


def a(ctx):
    c, cancel = wt(ctx, 1)
    return c


def b(url, ctx: C):
    return t.with_value(ctx, "k", url)


def d(ctx):
    return background()
"""
    got = [(f.line, f.code) for f in check_source(src)]
    assert got == [(7, "TTH002"), (11, "TTH001"), (12, "TTH006"), (16, "TTH004")]


def test_unrelated_same_name_functions_are_not_flagged():
    src = """\
from mylib import with_timeout, with_value, background
import otherlib as tether


def a(ctx):
    c, cancel = with_timeout(ctx, 1)
    return c


def b(ctx):
    tether.with_cancel(ctx)
    return with_value(ctx, "k", 1), background()


def c(url, ctx: "mylib.Context"):
    pass
"""
    assert check_source(src) == []


def test_relative_imports_inside_the_tether_package(tmp_path: Path):
    pkg = tmp_path / "tether" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "tether" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(
        "from .._context import with_cancel\n\n\ndef f(ctx):\n    c, cancel = with_cancel(ctx)\n"
    )
    found = check_paths([str(tmp_path)])
    assert [(f.line, f.code) for f in found] == [(5, "TTH002")]


def test_check_source_rejects_bytes():
    with pytest.raises(TypeError, match=r"^tether: check_source\(\) takes the source text"):
        check_source(b"x = 1")  # type: ignore[arg-type]


def test_missing_path_raises():
    with pytest.raises(FileNotFoundError, match=r"^tether: no such file"):
        check_paths(["/nonexistent/tether-lint"])


def test_main_and_cli_in_process(tree: Path, capsys: pytest.CaptureFixture[str]):
    assert main([str(tree / "pkg" / "good.py")]) == 0
    assert cli(["lint", str(tree / "pkg" / "bad.py")]) == 1
    out = capsys.readouterr().out
    assert out.count(" TTH00") == 3
    assert cli(["frobnicate"]) == 2
    assert "the one command is `tether lint PATH...`" in capsys.readouterr().err
    assert cli([]) == 2


def test_console_script(tree: Path):
    exe = shutil.which("tether", path=os.path.dirname(sys.executable))
    assert exe, "the `tether` console script is installed with the package"
    proc = subprocess.run(
        [exe, "lint", "pkg/bad.py"], capture_output=True, text=True, cwd=tree, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stdout.count(" TTH00") == 3


def test_flake8_plugin_in_process():
    import ast

    tree = ast.parse(BAD)
    rows = list(Plugin(tree, "<string>").run())
    assert [(r[0], r[1], r[2][:6]) for r in rows] == [
        (5, 0, "TTH001"),
        (6, 4, "TTH005"),
        (7, 11, "TTH006"),
    ]


def test_flake8_plugin_through_real_flake8(tree: Path):
    pytest.importorskip("flake8")
    (tree / "pkg" / "bad.py").write_text(
        BAD.replace("time.sleep(1)", "time.sleep(1)  # noqa: TTH005")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "flake8", "--select", "TTH", "pkg/bad.py"],
        capture_output=True,
        text=True,
        cwd=tree,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split(" ")[1] for ln in lines] == ["TTH001", "TTH006"], proc.stdout
    assert lines[0].startswith("pkg/bad.py:5:1: TTH001 ")
    assert lines[1].startswith("pkg/bad.py:7:12: TTH006 ")


def test_the_plugin_module_does_not_import_flake8():
    code = "import sys, tether.lint.flake8; print('flake8' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_context_module_makes_another_module_tethers(tmp_path: Path):
    src = """\
from golang import context


def f(url, ctx):
    c, cancel = context.with_timeout(ctx, 1)
    return c
"""
    (tmp_path / "g.py").write_text(src)
    assert run("g.py", cwd=tmp_path).returncode == 0  # golang.context is not tether
    proc = run("--context-module", "golang.context", "g.py", cwd=tmp_path)
    assert proc.returncode == 1
    assert [ln.split(" ")[1] for ln in proc.stdout.splitlines()] == ["TTH001", "TTH002"]
    found = check_source(src, context_modules=["golang.context"])
    assert [(f.line, f.code) for f in found] == [(4, "TTH001"), (5, "TTH002")]


def test_flake8_reads_context_modules_from_its_config(tmp_path: Path):
    pytest.importorskip("flake8")
    (tmp_path / "g.py").write_text(
        "from golang import context\n\n\ndef f(ctx):\n    c, cancel = context.with_cancel(ctx)\n"
    )
    cmd = [sys.executable, "-m", "flake8", "--select", "TTH", "g.py"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    (tmp_path / ".flake8").write_text("[flake8]\ntether-context-modules = golang.context\n")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("g.py:5:17: TTH002 with_cancel() at line 5"), proc.stdout


def test_pre_commit_hook_definition_runs_the_console_script():
    text = (Path(__file__).resolve().parent.parent / ".pre-commit-hooks.yaml").read_text()
    assert "- id: tether-lint\n" in text
    assert "  entry: tether lint\n" in text
    assert "  language: python\n" in text
    assert "  types: [python]\n" in text


def test_exclude_skips_matching_files_and_directories(tree: Path):
    (tree / "pkg" / "gen").mkdir()
    (tree / "pkg" / "gen" / "api_pb2.py").write_text(BAD)
    (tree / "pkg" / "gen" / "other.py").write_text(BAD)
    proc = run("pkg", cwd=tree)
    assert proc.stdout.count(" TTH00") == 9
    proc = run("--exclude", "*_pb2.py", "pkg", cwd=tree)
    assert proc.stdout.count(" TTH00") == 6
    assert "api_pb2.py" not in proc.stdout
    proc = run("--exclude", "gen", "--exclude", "bad.py", "pkg", cwd=tree)
    assert (proc.returncode, proc.stdout) == (0, "")
