"""Issue 8, item 5: a lost cancel is visible by default, and the user's options win.

Before, ``LostCancelWarning`` (a ``ResourceWarning``) was hidden under plain ``python``
while the README said "tether warns". Each case runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

LOSE = """
import gc, tether
parent, stop = tether.with_cancel(tether.background())
ctx, cancel = tether.with_cancel(parent)
del cancel
gc.collect()
print("done")
stop()
"""

pytestmark = pytest.mark.slow


def run(*opts: str, env: dict[str, str] | None = None, code: str = LOSE):
    e = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    e.pop("PYTHONDEVMODE", None)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, *opts, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=e,
        check=False,
    )


def test_plain_python_shows_a_lost_cancel():
    out = run()
    assert out.returncode == 0, out.stderr
    assert "done" in out.stdout
    assert "LostCancelWarning: tether: the cancel function of" in out.stderr
    assert "created at <string>:4" in out.stderr


def test_w_error_turns_it_into_an_error():
    out = run("-W", "error")
    assert "done" in out.stdout  # raised in __del__: reported, not fatal
    assert "Exception ignored" in out.stderr
    assert "LostCancelWarning" in out.stderr


@pytest.mark.parametrize(
    ("opts", "env"),
    [
        (["-W", "ignore::ResourceWarning"], None),
        (["-W", "ignore"], None),
        ([], {"PYTHONWARNINGS": "ignore"}),
    ],
    ids=["-W ignore::ResourceWarning", "-W ignore", "PYTHONWARNINGS=ignore"],
)
def test_the_users_options_win(opts, env):
    out = run(*opts, env=env)
    assert out.returncode == 0, out.stderr
    assert "LostCancelWarning" not in out.stderr


def test_a_filter_set_in_code_after_import_wins():
    code = "import warnings, tether\nwarnings.simplefilter('ignore')\n" + LOSE
    out = run(code=code)
    assert "LostCancelWarning" not in out.stderr


def test_other_resource_warnings_stay_hidden():
    code = "import tether\nf = open(__import__('os').devnull)\ndel f\nprint('done')\n"
    out = run(code=code)
    assert "done" in out.stdout
    assert "ResourceWarning" not in out.stderr
