#!/usr/bin/env python3
"""`deco report` in a real headless browser.

Two short tiny runs (DECO, and its dense twin by --set model.num_experts=0),
then `deco report DECO --compare DENSE --out report.html`:
- the file is self-contained: no script, nothing fetched (no src= or external
  href=), and its summary table holds the values metrics.jsonl gives;
- every chart is there (loss, lr, activation-ratio with its target line,
  layer x step and layer x expert heatmaps with one cell per layer x bin and
  layer x expert, tokens-per-second, scaling) with the data it should draw;
- Debian's headless Chromium loads it without errors: a probe script, added to
  a copy of the report by this test only, records JavaScript errors and each
  chart's rendered size and drawn elements into the DOM Chromium dumps; the
  screenshot shows the charts (ink, colors and viridis pixels well above what
  the same page without its SVG has);
- bad input (no run directory, no metrics.jsonl, a malformed row, an output
  directory that does not exist) is one clear error line, and nothing is written.

Usage: test_report.py --deco build/deco --source-dir . --workdir DIR
"""
import argparse
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys

import checks
from checks import FAILURES, check, run_deco

BROWSERS = ["chromium-headless-shell", "chromium", "chromium-browser"]
CHARTS = ["loss", "lr", "activation-ratio", "layer-ratio-heatmap", "expert-load-heatmap", "tokens-per-second",
          "scaling"]

# Appended to a copy of the report: what the browser rendered, as JSON in a
# <pre id="probe"> that --dump-dom prints.
PROBE = """<script>
var probeErrors = [];
window.addEventListener('error', function (e) { probeErrors.push(String(e.message)); });
window.addEventListener('load', function () {
  var charts = [];
  document.querySelectorAll('svg.chart').forEach(function (svg) {
    var box = svg.getBoundingClientRect();
    var drawn = {polyline: 0, circle: 0, rect: 0};
    svg.querySelectorAll('polyline, circle, rect').forEach(function (el) {
      var b = el.getBBox();
      if (b.width > 0 || b.height > 0) drawn[el.tagName]++;
    });
    charts.push({id: svg.dataset.chart, width: box.width, height: box.height, drawn: drawn});
  });
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({errors: probeErrors, charts: charts});
  document.body.appendChild(pre);
});
</script>
"""


class Elements(html.parser.HTMLParser):
    """Tags with their attributes, in document order; the text of table cells."""

    def __init__(self):
        super().__init__()
        self.tags, self.cells, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "td":
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def charts_of(text):
    """data-chart id -> list of (tag, attrs) inside that <svg>."""
    out, current = {}, None
    for tag, attrs in re.findall(r"<(/?[a-z]+)([^>]*)>", text):
        if tag == "svg":
            current = re.search(r'data-chart="([^"]+)"', attrs).group(1)
            out[current] = []
        elif tag == "/svg":
            current = None
        elif current is not None and not tag.startswith("/"):
            out[current].append((tag, attrs))
    return out


def train(deco, src, run_dir, extra):
    r = run_deco(deco, ["train", "--config", os.path.join(src, "configs/tiny.yaml"), "--run-dir", run_dir,
                        "--set", "training.train_iters=40", "--set", "training.eval_interval=20",
                        "--set", "schedule.lr_warmup_iters=5", "--set", "schedule.lr_wsd_decay_iters=10"] + extra)
    check(r.returncode == 0, f"train {os.path.basename(run_dir)}: exit {r.returncode} {r.stderr.strip()[-300:]!r}")
    return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))] if r.returncode == 0 else None


def test_content(text, rows, dense_rows):
    check("<script" not in text.lower(), "no script in the report")
    external = re.findall(r'(?:src|href)="(?!#)[^"]*"', text) + re.findall(r"url\(", text)
    check(not external, f"nothing fetched: no src=, external href= or url() ({external[:3]})")
    links = re.findall(r"https?://[^\"'\s<]+", text)
    check(set(links) <= {"http://www.w3.org/2000/svg"}, f"no links but the SVG namespace ({set(links)})")

    charts = charts_of(text)
    check(sorted(charts) == sorted(CHARTS), f"charts {sorted(charts)}")
    polylines = lambda cid: [a for t, a in charts.get(cid, []) if t == "polyline"]
    for cid in ["loss", "lr", "activation-ratio", "tokens-per-second"]:
        pts = [len(re.search(r'points="([^"]*)"', a).group(1).split()) for a in polylines(cid)]
        check(pts and min(pts) >= 2, f"{cid}: polylines with points {pts}")
    # loss: a train line per run (40 points each) and a val dot per evaluation.
    loss_pts = sorted(len(re.search(r'points="([^"]*)"', a).group(1).split()) for a in polylines("loss"))
    check(loss_pts == [2, 2, 40, 40], f"loss: 40-point train lines and 2-point val lines per run ({loss_pts})")
    circles = [a for t, a in charts.get("loss", []) if t == "circle"]
    check(len(circles) == 4, f"loss: four val dots (2 evaluations x 2 runs): {len(circles)}")
    refs = re.findall(r'<line class="reference"[^>]*>\s*<title>([^<]*)</title>', text)
    check(refs == ["target 0.2: 0.2"], f"activation-ratio: the target line ({refs})")
    # Heatmaps: cells (rects with a <title>) of 3 layers x 40 steps and 3 layers x 16 experts.
    for cid, n in [("layer-ratio-heatmap", 3 * 40), ("expert-load-heatmap", 3 * 16)]:
        m = re.search(r'data-chart="%s".*?<g class="cells">(.*?)</g>' % cid, text, re.S)
        cells = re.findall(r"<rect[^>]*><title>([^<]*)</title>", m.group(1)) if m else []
        check(len(cells) == n, f"{cid}: {n} cells ({len(cells)})")
        if cid == "layer-ratio-heatmap" and cells:
            # Spot check: the first row's cell for step 40 is layer 1's ratio at step 40.
            want = f"layer 01, step 40: {rows[-1]['activation_ratio_per_layer'][0]:.4g}"
            check(want in cells, f"{cid}: the cell '{want}' is there")
        if cid == "expert-load-heatmap" and cells:
            # Expert load of the last 40 rows (all of them): share of 40 x 16 x 128 tokens.
            share = sum(r["expert_tokens_per_layer"][2][5] for r in rows) / (40 * 16 * 128)
            want = f"layer 03, expert 5: {share:.4g}"
            check(want in cells, f"{cid}: the cell '{want}' is there")

    # The summary table: the first run's row.
    p = Elements()
    p.feed(text)
    final = sum(r["lm_loss"] for r in rows[-4:]) / 4  # the last 10% of 40 rows
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None][-1]
    ratio = sum(r["activation_ratio"] for r in rows[-4:]) / 4
    got = p.cells[:12]
    check(got[0] == "deco" and got[3] == "40" and got[5] == f"{final:.4g}" and got[6] == f"{val:.4g}"
          and got[7] == f"{ratio:.4g} (0.2)", f"summary row of the DECO run: {got}")
    dense_final = sum(r["lm_loss"] for r in dense_rows[-4:]) / 4
    check(any(c == f"{dense_final:.4g}" for c in p.cells[12:24]), "summary row of the dense run")
    scaling = charts.get("scaling", [])
    check(len([a for t, a in scaling if t == "circle"]) == 4, "scaling: a train and a val point per run")


def test_browser(work, report):
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    check(browser is not None, f"a headless Chromium ({' or '.join(BROWSERS)}); scripts/setup.sh installs it")
    if browser is None:
        return
    probed = os.path.join(work, "probed.html")
    with open(report) as f:
        text = f.read()
    with open(probed, "w") as f:
        f.write(text.replace("</body>", PROBE + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--disable-extensions", "--window-size=1200,3600", "--virtual-time-budget=5000",
             # No network: every host fails to resolve, so a fetched resource would show as an error.
             "--host-resolver-rules=MAP * ~NOTFOUND"]
    r = subprocess.run(flags + ["--dump-dom", "file://" + probed], capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    check(r.returncode == 0 and m is not None, f"Chromium loads the page and runs the probe: exit {r.returncode} "
                                               f"{r.stderr.strip()[-300:]!r}")
    if m:
        probe = json.loads(html.unescape(m.group(1)))
        check(probe["errors"] == [], f"no JavaScript errors ({probe['errors']})")
        rendered = {c["id"]: c for c in probe["charts"]}
        check(sorted(rendered) == sorted(CHARTS), f"the browser sees every chart: {sorted(rendered)}")
        # What each chart must have drawn with a non-zero size: its lines, dots or cells.
        need = {"loss": {"polyline": 4, "circle": 4}, "lr": {"polyline": 2}, "activation-ratio": {"polyline": 1},
                "tokens-per-second": {"polyline": 2}, "scaling": {"circle": 4},
                "layer-ratio-heatmap": {"rect": 3 * 40}, "expert-load-heatmap": {"rect": 3 * 16}}
        for cid, c in sorted(rendered.items()):
            ok = c["width"] >= 800 and c["height"] >= 100 and all(
                c["drawn"][k] >= n for k, n in need.get(cid, {}).items())
            check(ok, f"{cid} rendered {c['width']:.0f}x{c['height']:.0f} px, drawn {c['drawn']}")
    console_errors = [l for l in r.stderr.splitlines() if "CONSOLE" in l and "ERROR" in l]
    check(not console_errors, f"no console errors ({console_errors[:3]})")

    shot = os.path.join(work, "report.png")
    r = subprocess.run(flags + ["--screenshot=" + shot, "file://" + os.path.abspath(report)], capture_output=True,
                       text=True, timeout=180)
    check(r.returncode == 0 and os.path.exists(shot), f"screenshot: exit {r.returncode}")
    if not os.path.exists(shot):
        return
    from PIL import Image
    image = Image.open(shot).convert("RGB")
    pixels = list(image.getdata())
    ink = sum(1 for p in pixels if p != (255, 255, 255)) / len(pixels)
    colors = image.getcolors(maxcolors=1 << 20) or []
    # Thresholds from measuring this page with and without its SVG charts
    # (2026-11-23, Chromium 156): 7.0% ink and ~2300 colors with them, 3.1%
    # and ~450 (text, table, links) without; the limits sit between the two.
    check(image.size == (1200, 3600) and ink > 0.05, f"screenshot {image.size} not blank: {100 * ink:.1f}% ink")
    check(len(colors) > 1000, f"many colors drawn (charts, not just text): {len(colors)}")
    # Heatmap cells and color bars are painted in viridis: pixels within 20
    # (RGB distance) of its stops. The text-only page has none; the heatmaps
    # here cover tens of thousands of pixels.
    viridis = [(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141), (39, 173, 129),
               (92, 200, 99), (170, 220, 50), (253, 231, 37)]
    painted = sum(1 for p in pixels if any(sum((a - b) ** 2 for a, b in zip(p, s)) < 400 for s in viridis))
    check(painted > 5000, f"heatmap cells painted ({painted} viridis pixels)")


def test_bad_input(deco, work, run_dir):
    expect = lambda args, words, what: checks.expect_error(deco, args, words, what)
    expect(["report", os.path.join(work, "nope")], ["nope", "is not a directory", "run directory"], "no such run")
    empty = os.path.join(work, "empty")
    os.makedirs(empty, exist_ok=True)
    expect(["report", empty], ["empty/config.yaml", "does not exist"], "a directory that is not a run")
    broken = os.path.join(work, "broken")
    shutil.copytree(run_dir, broken)
    for name in ["metrics.jsonl", "report.html"]:
        os.remove(os.path.join(broken, name))
    expect(["report", broken], ["broken/metrics.jsonl", "does not exist"], "a run without metrics.jsonl")
    with open(os.path.join(broken, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "lm_loss": 2.0}\nnot json\n{"step": 3}\n')
    expect(["report", broken], ["broken/metrics.jsonl line 2", "not a metrics row"], "a malformed row")
    expect(["report", run_dir, "--out", os.path.join(work, "no/such/dir/r.html")], ["no/such/dir"],
           "an output directory that does not exist")
    check(not os.path.exists(os.path.join(empty, "report.html")) and
          not os.path.exists(os.path.join(broken, "report.html")), "nothing written on errors")
    # A partial last line (a run killed mid-write) is skipped, not an error.
    with open(os.path.join(broken, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "lm_loss": 2.0, "consumed_tokens": 10}\n{"step": 2, "lm_lo')
    r = run_deco(deco, ["report", broken])
    check(r.returncode == 0, f"a partial last line is skipped: exit {r.returncode} {r.stderr.strip()!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--deco", required=True)
    p.add_argument("--source-dir", required=True)
    p.add_argument("--workdir", required=True)
    a = p.parse_args()
    deco = os.path.abspath(a.deco)
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    run_dir, dense_dir = os.path.join(a.workdir, "deco"), os.path.join(a.workdir, "dense")
    rows = train(deco, a.source_dir, run_dir, [])
    dense_rows = train(deco, a.source_dir, dense_dir, ["--set", "model.num_experts=0"])
    if rows is None or dense_rows is None:
        return 1
    report = os.path.join(a.workdir, "report.html")
    r = run_deco(deco, ["report", run_dir, "--compare", dense_dir, "--out", report])
    check(r.returncode == 0 and os.path.exists(report), f"deco report: exit {r.returncode} {r.stderr.strip()!r}")
    if r.returncode != 0:
        return 1
    text = open(report).read()
    test_content(text, rows, dense_rows)
    test_browser(a.workdir, report)
    r = run_deco(deco, ["report", run_dir])
    check(r.returncode == 0 and os.path.exists(os.path.join(run_dir, "report.html")),
          "without --out: RUN_DIR/report.html")
    test_bad_input(deco, a.workdir, run_dir)
    print(f"{len(FAILURES)} failure(s)" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
