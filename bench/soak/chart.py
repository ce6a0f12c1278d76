"""Summarises a soak run and draws its chart (SVG, no dependencies).

usage: chart.py RESULT_DIR CAPACITY RATE GENERATIONS
Reads RESULT_DIR/latency.csv and RESULT_DIR/rss.csv (written by bench/soak/run.sh), prints
the summary lines and writes RESULT_DIR/soak.svg: RSS and p50/p99 latency per second.
"""
import csv
import statistics
import sys

out, capacity, rate, generations = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
lat = list(csv.DictReader(open(f"{out}/latency.csv")))
rss = [r for r in csv.DictReader(open(f"{out}/rss.csv")) if int(r["rss_kib"] or 0) > 0]

mib = [int(r["rss_kib"]) / 1024 for r in rss]
rss_t = [int(r["second"]) for r in rss]
# Flat means: the last minute's median within 5% of the median of the minute after warm-up.
window = max(1, min(60, len(mib) // 4))
early = statistics.median(mib[window : 2 * window] or mib)
late = statistics.median(mib[-window:])
growth = (late - early) / early * 100 if early else 0.0
due = sum(int(r["due"]) for r in lat)
failed = sum(int(r["failed"]) for r in lat)
p99s = [float(r["p99_ms"]) for r in lat if int(r["ok"]) > 0]
print(f"capacity {capacity} req/s, rate {rate} req/s, {len(lat)} s, {due} requests, {failed} failed")
print(f"config generations seen: {generations}")
print(
    f"RSS MiB: start {mib[0]:.1f}, after warm-up {early:.1f}, end {late:.1f}, "
    f"max {max(mib):.1f}; growth over the run {growth:+.1f}% ({'flat' if abs(growth) < 5 else 'NOT flat'})"
)
print(
    f"p99 per second: median {statistics.median(p99s):.2f} ms, worst {max(p99s):.2f} ms"
)

W, H, PAD = 900, 520, 60
panel = (H - 3 * PAD) / 2


def poly(points, x_max, y_max, top, colour):
    coords = " ".join(
        f"{PAD + x / max(x_max, 1) * (W - 2 * PAD):.1f},{top + panel - y / max(y_max, 1e-9) * panel:.1f}"
        for x, y in points
    )
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>'


def axes(top, y_max, label, unit):
    lines = [
        f'<rect x="{PAD}" y="{top}" width="{W - 2 * PAD}" height="{panel}" fill="none" stroke="#999"/>',
        f'<text x="{PAD}" y="{top - 8}" font-size="14" font-family="sans-serif">{label}</text>',
    ]
    for i in range(5):
        y = top + panel - i / 4 * panel
        lines.append(
            f'<text x="{PAD - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" font-family="sans-serif">{y_max * i / 4:.1f}{unit}</text>'
        )
    return lines


t_max = max(len(lat), max(rss_t, default=0))
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">',
       '<rect width="100%" height="100%" fill="white"/>']
rss_max = max(mib) * 1.2
svg += axes(PAD, rss_max, "proxy RSS (MiB)", "")
svg.append(poly(list(zip(rss_t, mib)), t_max, rss_max, PAD, "#1f77b4"))
lat_top = 2 * PAD + panel
p50 = [(int(r["second"]), float(r["p50_ms"])) for r in lat]
p99 = [(int(r["second"]), float(r["p99_ms"])) for r in lat]
lat_max = max(y for _, y in p99) * 1.2 or 1
svg += axes(lat_top, lat_max, "latency per second (ms): p50 (green), p99 (red)", "")
svg.append(poly(p50, t_max, lat_max, lat_top, "#2ca02c"))
svg.append(poly(p99, t_max, lat_max, lat_top, "#d62728"))
for i in range(0, t_max + 1, max(60, t_max // 10)):
    x = PAD + i / max(t_max, 1) * (W - 2 * PAD)
    svg.append(f'<text x="{x:.1f}" y="{H - PAD / 2}" font-size="11" text-anchor="middle" font-family="sans-serif">{i}s</text>')
svg.append(
    f'<text x="{W / 2}" y="{H - 8}" font-size="12" text-anchor="middle" font-family="sans-serif">'
    f"{rate} req/s (wrk measured {capacity}), full policy stack, reload every 5 s, {failed} failed of {due}</text>"
)
svg.append("</svg>")
open(f"{out}/soak.svg", "w").write("\n".join(svg))
print(f"chart: {out}/soak.svg")
