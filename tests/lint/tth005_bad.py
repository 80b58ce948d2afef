"""TTH005 bad: blocking calls that cannot see the context (Go: time.Sleep instead of select)."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from time import sleep

import requests

import tether


def poll(ctx: tether.Context) -> None:
    while True:
        time.sleep(1)  # expect: TTH005
        tether.sleep(ctx, 0)


def poll_imported(ctx) -> None:
    sleep(0.5)  # expect: TTH005


async def fetch(url: str) -> str:
    time.sleep(0.1)  # expect: TTH005
    return requests.get(url, timeout=5).text  # expect: TTH005


def post(ctx: tether.Context, url: str) -> None:
    requests.post(url, json={}, timeout=5)  # expect: TTH005


async def build() -> bytes:
    subprocess.run(["make"], check=True)  # expect: TTH005
    with urllib.request.urlopen("http://127.0.0.1/") as r:  # expect: TTH005
        return r.read()
