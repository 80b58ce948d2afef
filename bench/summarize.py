"""Merge several ``run.py --json`` files into the Markdown tables of docs/benchmarks.md.

    python bench/summarize.py run1.json run2.json run3.json

For every line, the figure is the median over the runs of each run's figure (the minimum
over that run's repeats); the range across the runs follows in brackets. Ratios are
computed per run (tether / best peer of that run) and their median is shown.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _report import fmt


def _ratio(row: dict[str, Any]) -> float | None:
    return row.get("ratio")


def main(paths: list[str]) -> int:
    docs = [json.loads(Path(p).read_text()) for p in paths]
    runs = [{r["id"]: r for r in d["rows"]} for d in docs]
    ids = [r["id"] for r in docs[0]["rows"]]
    n = len(docs)

    print(f"Summary over {n} runs (median of the runs' minimums; [range across runs])\n")
    print("| row | operation | tether | best peer | tether / best peer | target | met |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rid in ids:
        rows = [run[rid] for run in runs if rid in run]
        unit = rows[0]["unit"]
        t = [r["tether"] for r in rows]
        peers = [r["best_peer"] for r in rows if r["best_peer"]]
        ratios = [x for x in (_ratio(r) for r in rows) if x is not None]
        met = [r["met"] for r in rows]
        verdict = (
            "-" if all(m is None for m in met) else f"{sum(bool(m) for m in met)}/{len(met)} runs"
        )
        peer = (
            f"{fmt(statistics.median(p['min'] for p in peers), unit)} "
            f"({statistics.mode(p['impl'] for p in peers)})"
            if peers
            else "-"
        )
        ratio = (
            f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
            if ratios
            else "-"
        )
        print(
            f"| {rid} | {rows[0]['title']} | {fmt(statistics.median(t), unit)} "
            f"[{fmt(min(t), unit)}-{fmt(max(t), unit)}] | {peer} | {ratio} | "
            f"{rows[0]['target'] or '-'} | {verdict} |"
        )

    print("\nEvery line (median over the runs of each run's minimum; ratio to the best peer)\n")
    for rid in ids:
        rows = [run[rid] for run in runs if rid in run]
        unit = rows[0]["unit"]
        print(f"**{rid}: {rows[0]['title']}**\n")
        print("| impl | what is timed | figure | / best peer |")
        print("| --- | --- | --- | --- |")
        for i, line in enumerate(rows[0]["results"]):
            values = [r["results"][i]["min"] for r in rows]
            ratios = []
            for r in rows:
                best = r["best_peer"]
                if best and best["min"] > 0 and unit != "n":
                    ratios.append(r["results"][i]["min"] / best["min"])
            mark = " (ref.)" if line["reference"] else ""
            label = line["label"].replace("|", "\\|")
            ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
            print(
                f"| {line['impl']}{mark} | {label} | "
                f"{fmt(statistics.median(values), unit)} | {ratio} |"
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
