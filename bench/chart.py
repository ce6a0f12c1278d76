#!/usr/bin/env python3
"""Draws a benchmark results file (JSON lines of bench/run-http.sh, run-auth.sh or run-h2.sh)
as an SVG: requests per second per proxy core, and p99 latency where the run has it, per
target or scenario, as medians with the rounds' range.

    bench/chart.py bench/results/http-STAMP.jsonl docs/bench-http.svg

Plain SVG written by hand: no plotting library to install on the benchmark machine."""

import json
import statistics
import sys
from html import escape

COLORS = {"nginx": "#4e79a7", "haproxy": "#59a14f", "portcullis": "#e15759", "direct": "#bab0ac"}
PALETTE = ["#e15759", "#f28e2b", "#76b7b2", "#4e79a7", "#59a14f", "#edc948", "#b07aa1", "#9c755f"]


def load(path):
    runs, meta = {}, {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("type") == "run":
                name = rec.get("target") or rec.get("scenario")
                if name == "direct":
                    continue
                if rec.get("rps_per_proxy_cpu") is None and rec.get("proxy_cpu_pct"):
                    rec["rps_per_proxy_cpu"] = rec["rps"] * 100 / rec["proxy_cpu_pct"]
                runs.setdefault(name, []).append(rec)
            elif rec.get("type") == "meta":
                meta = rec
    return runs, meta


def panel(x0, title, unit, rows, width=320, bar_h=26):
    """rows: (label, median, low, high); bars scaled to the largest high."""
    top = max(high for _, _, _, high in rows) or 1
    out = [f'<text x="{x0}" y="24" font-size="15" font-weight="bold">{escape(title)}</text>']
    for i, (label, med, low, high) in enumerate(rows):
        y = 44 + i * (bar_h + 14)
        w = width * med / top
        color = COLORS.get(label, PALETTE[i % len(PALETTE)])
        out.append(f'<text x="{x0}" y="{y + bar_h * 0.7:.0f}" font-size="13">{escape(label)}</text>')
        bx = x0 + 100
        out.append(f'<rect x="{bx}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        lx, hx = bx + width * low / top, bx + width * high / top
        mid = y + bar_h / 2
        out.append(f'<line x1="{lx:.1f}" y1="{mid}" x2="{hx:.1f}" y2="{mid}" stroke="#222" stroke-width="1.5"/>')
        for x in (lx, hx):
            out.append(f'<line x1="{x:.1f}" y1="{mid - 6}" x2="{x:.1f}" y2="{mid + 6}" stroke="#222" stroke-width="1.5"/>')
        text = f"{med:,.0f} {unit}" if med >= 100 else f"{med:.2f} {unit}"
        out.append(f'<text x="{max(hx, bx + w) + 6:.1f}" y="{y + bar_h * 0.7:.0f}" font-size="12">{text}</text>')
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    runs, meta = load(sys.argv[1])
    if not runs:
        sys.exit(f"no runs in {sys.argv[1]}")
    known = [t for t in ("nginx", "haproxy", "portcullis") if t in runs]
    order = known or list(runs)

    def stat(target, key):
        values = [r[key] for r in runs[target] if r.get(key) is not None]
        return statistics.median(values), min(values), max(values)

    per_core = [(t, *stat(t, "rps_per_proxy_cpu")) for t in order]
    height = 60 + len(order) * 40 + 40
    body = panel(10, "requests per second per proxy core (higher is better)", "req/s", per_core)
    if all(r.get("p99_ms") is not None for t in order for r in runs[t]):
        p99 = [(t, *stat(t, "p99_ms")) for t in order]
        body += panel(600, "p99 latency at saturation (lower is better)", "ms", p99)
    note = (
        f"{sys.argv[1].rsplit('/', 1)[-1]}: {len(next(iter(runs.values())))} interleaved rounds; "
        "median bars, whiskers = range of the rounds; the proxy pinned to one core."
    )
    body.append(f'<text x="10" y="{height - 12}" font-size="11" fill="#555">{escape(note)}</text>')
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="1150" height="{height}" '
        'font-family="sans-serif">',
        '<rect width="100%" height="100%" fill="white"/>',
        *body,
        "</svg>",
    ]
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
