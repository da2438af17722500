"""The HTML report and the sweep plot: what they contain, that the page fetches nothing, the CLI
around them, and — in headless Chromium — that the plots are really drawn."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from numatune.audit import AuditContext, run_audit
from numatune.bandwidth import BandwidthCell, BandwidthMatrix, BandwidthResult
from numatune.cli import main
from numatune.config import Configuration
from numatune.plot import POLICY_COLOURS, nice_ticks, sweep_series, sweep_svg
from numatune.recommend import recommend_all
from numatune.report import ReportInput, html_report
from numatune.stats import Measurement
from numatune.store import Trial, TuneResult, fingerprint, save_result
from numatune.sysfs import Root
from numatune.topology import probe
from pngread import read_png
from treegen import seed_machine, write_tree

GIB = 1 << 30
SPEED = {"bind": 1.0, "interleave": 0.8, "replicate": 1.7, "partition": 1.6, "first-touch": 0.6}
NODES = {"bind": (0,), "interleave": (0, 1), "replicate": (0, 1), "partition": (0, 1), "first-touch": (0, 1)}


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    root = write_tree(tmp_path_factory.mktemp("seed") / "root", seed_machine())
    return root, probe(Root.open(str(root)))


def sweep(topology, model="synthetic:default:Q4_K_M:6x128", threads=(2, 4, 8, 16, 32, 64)) -> TuneResult:
    trials = []
    for policy, speed in SPEED.items():
        for count in threads:
            base = speed * min(count, 24) ** 0.8
            samples = [base * f for f in (0.9, 1.0, 1.1, 0.95, 1.05)]
            trials.append(Trial(Configuration(tuple(range(count)), policy, NODES[policy]),
                                Measurement.of(samples, "tok/s"), Measurement.of([2 * base] * 3, "GB/s"), 20 * GIB, 1))
    trials.append(Trial(Configuration((0,), "bind", (1,)), Measurement.of([0.0]), None, 0, 0, error="bind failed"))
    ranked = sorted((t for t in trials if not t.error), key=lambda t: -t.tokens_per_s.median)
    return TuneResult(fingerprint(topology), model, tuple(trials), ranked[0], ranked[1], True, "2026-12-07T07:00:00+00:00")


def matrix(local=120.0, remote=45.0) -> BandwidthMatrix:
    def cell(cpu, mem, kernel, gbps):
        return BandwidthCell(cpu, BandwidthResult((0,), mem, kernel, 1 << 28, Measurement.of([gbps * 0.98, gbps, gbps * 1.02], "GB/s"),
                                                  ((mem, 1.0),), "avx2"))
    return BandwidthMatrix(tuple(cell(c, m, "read", local if c == m else remote) for c in (0, 1) for m in (0, 1)))


# ----- the plot --------------------------------------------------------------------------------

def test_series_take_each_policy_and_thread_count_at_its_latest_stage(seed):
    _, t = seed
    early = Trial(Configuration((0, 1), "bind", (0,)), Measurement.of([99.0] * 3), None, 0, 0)
    late = Trial(Configuration((2, 3), "bind", (0,)), Measurement.of([5.0, 6.0, 7.0]), None, 0, 2)
    failed = Trial(Configuration((0,), "bind", (0,)), Measurement.of([0.0]), None, 0, 0, error="x")
    series = sweep_series(TuneResult(fingerprint(t), "m", (early, late, failed), late, None, True, "now"))
    assert len(series) == 1 and series[0].label == "bind nodes 0"
    assert [(p.threads, p.median, p.spread) for p in series[0].points] == [(2, 6.0, 1.0)]   # failed one left out


def test_sweep_svg_draws_a_coloured_line_and_error_bars_per_policy(seed):
    _, t = seed
    result = sweep(t)
    svg = sweep_svg(sweep_series(result), "title <&>", result.winner)
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and "title &lt;&amp;&gt;" in svg
    for policy, colour in POLICY_COLOURS.items():
        group = re.search(rf'<g class="series" data-label="{policy} nodes [^"]+" stroke="{colour}".*?</g>', svg, re.S)
        assert group, policy
        assert group.group(0).count("<circle") == 6 + (policy == "replicate")   # the winner is ringed
        assert group.group(0).count(" h8") == 12                              # two caps per error bar
    assert "no trial completed" not in svg


def test_axis_ticks_are_round_and_cover_the_top():
    assert nice_ticks(21.6) == [0, 5, 10, 15, 20, 25]
    assert nice_ticks(0.37) == [0, 0.1, 0.2, 0.3, 0.4]
    assert nice_ticks(0) == [0, 1]


# ----- the page --------------------------------------------------------------------------------

def test_report_holds_machine_bandwidth_sweep_findings_and_commands(seed):
    _, t = seed
    result = sweep(t, model='weird <model> "name".gguf')
    findings = tuple(run_audit(t, AuditContext()))
    recommendations = tuple(recommend_all(t, None, result).values())
    page = html_report(ReportInput(result, t, matrix(), findings, recommendations, "/tmp/saved.json"))
    assert "weird &lt;model&gt; &quot;name&quot;.gguf" in page and "<model>" not in page
    assert 'class="plot sweep"><svg width=' in page and page.count('<g class="series"') == 5
    assert '<div class="plot heatmap"><svg' in page and ">120.0<" in page and ">45.0<" in page
    for finding in findings:
        assert f"<b>{finding.id}</b>" in page
    for r in recommendations:
        from html import escape
        assert f"<pre>{escape(r.plan.shell())}</pre>" in page
    assert "NUMA node 0</span>" in page and "NUMA node 1</span>" in page and "PU 127" in page
    assert "package 0" in page and "package 1" in page and "512.0 GiB" in page
    assert "failed: bind failed" in page


def test_report_fetches_nothing(seed):
    _, t = seed
    page = html_report(ReportInput(sweep(t), t, matrix(), tuple(run_audit(t, AuditContext()))))
    assert "http" not in page and "//" not in re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)
    for tag in ("<script", "<link", "<img", "<iframe", "url(", "@import", "src="):
        assert tag not in page


# ----- the CLI ---------------------------------------------------------------------------------

def test_report_command_renders_a_saved_result_with_its_machine(seed, tmp_path, capsys):
    root, t = seed
    save_result(sweep(t), tmp_path / "r.json")
    probed = tmp_path / "probe.json"
    probed.write_text(json.dumps({"schema_version": 1, "bandwidth": {"matrix": matrix(80.0, 30.0).to_json()}}))
    code = main(["report", str(tmp_path / "r.json"), "--out", str(tmp_path / "r.html"), "--plot",
                 str(tmp_path / "r.svg"), "--root", str(root), "--bandwidth", str(probed)])
    assert code == 0, capsys.readouterr()
    page = (tmp_path / "r.html").read_text()
    assert "smt-present" in page and "ktransformers" in page and ">80.0<" in page and "PU 127" in page
    svg = (tmp_path / "r.svg").read_text()
    assert svg.startswith("<svg xmlns=") and svg.count('<g class="series"') == 5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.html").stat().st_mode & 0o777 == 0o666 & ~umask    # readable by others, like any file


def test_report_of_another_machine_shows_the_recorded_one(seed, tmp_path, capsys):
    root, t = seed
    other = write_tree(tmp_path / "other", seed_machine(cores_per_node=8))
    save_result(sweep(t), tmp_path / "r.json")
    assert main(["report", str(tmp_path / "r.json"), "--out", str(tmp_path / "r.html"), "--root", str(other)]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Measured on another machine" in page and "CPUs 0-31,64-95" in page
    assert "Commands to run" not in page and "Not measured for this report" in page


@pytest.mark.parametrize("argv, needle", [
    (["report", "{r}", "--out", "{d}/r.txt"], "the report is an .html file"),
    (["report", "{r}", "--out", "{d}/missing/r.html"], "does not exist"),
    (["report", "{r}", "--plot", "{d}/r.pdf"], "write .svg or .png"),
    (["report", "{r}"], "give --out"),
    (["report", "{d}/garbage.json", "--out", "{d}/r.html"], "not a numatune tuning result"),
    (["report", "{r}", "--out", "{d}/r.html", "--bandwidth", "{d}/garbage.json"], "--bandwidth"),
    (["tune", "--report", "{d}/r.txt"], "the report is an .html file"),
    (["tune", "--plot", "{d}/r.gif"], "write .svg or .png"),
    (["tune", "--bandwidth"], "only with --report"),
    (["auto", "--report", "{d}/nowhere/r.html"], "does not exist"),
])
def test_bad_report_arguments_are_one_line_and_exit_2_before_any_work(seed, tmp_path, capsys, argv, needle):
    _, t = seed
    save_result(sweep(t), tmp_path / "r.json")
    (tmp_path / "garbage.json").write_text('{"schema_version": 1, "cells": "x"}')
    code = main([a.format(r=tmp_path / "r.json", d=tmp_path) for a in argv])
    err = capsys.readouterr()[1]
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not list(tmp_path.glob("r.html")) and not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(shutil.which("rsvg-convert") is None, reason="rsvg-convert (librsvg2-bin) is not installed")
def test_png_plot_is_drawn_with_the_series_colours(seed, tmp_path):
    _, t = seed
    save_result(sweep(t), tmp_path / "r.json")
    assert main(["report", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png"), "--root", "/"]) == 0
    pixels = read_png(tmp_path / "p.png")
    assert pixels.shape[:2] == (440, 940)
    for colour in POLICY_COLOURS.values():
        assert colour_count(pixels, colour) > 100, colour


# ----- in a browser ----------------------------------------------------------------------------

def colour_mask(pixels: np.ndarray, colour: str, tolerance: int = 4) -> np.ndarray:
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return (np.abs(pixels.astype(np.int16) - rgb) <= tolerance).all(axis=2)


def colour_count(pixels, colour) -> int:
    return int(colour_mask(pixels, colour).sum())


def screenshot(tmp_path: Path, page: str, name: str) -> np.ndarray:
    html = tmp_path / f"{name}.html"
    html.write_text(page)
    png = tmp_path / f"{name}.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,2000",
                    html.as_uri()], check=True, capture_output=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)))
    return read_png(png)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_chromium_draws_the_plots(seed, tmp_path):
    _, t = seed
    page = html_report(ReportInput(sweep(t, threads=(2, 8, 32)), t, matrix(), ()))
    without = re.sub(r'<div class="plot (sweep|heatmap)"><svg.*?</svg></div>', "", page, flags=re.S)
    assert without.count("<svg") == 0 and page.count("<svg") == 2
    drawn, bare = screenshot(tmp_path, page, "report"), screenshot(tmp_path, without, "bare")
    for colour in POLICY_COLOURS.values():
        mask = colour_mask(drawn, colour)
        ys, xs = np.nonzero(mask)
        assert mask.sum() > 150, colour                         # markers and lines of the series
        assert xs.max() - xs.min() < 940 and ys.max() - ys.min() < 440, colour   # all inside one plot
        assert colour_count(bare, colour) == 0, colour
    dark = colour_mask(drawn, "#1b3a5c", tolerance=2)           # the heat map's fastest cells
    assert dark.sum() > 2 * 70 * 70 and colour_count(bare, "#1b3a5c") == 0
    assert (drawn != bare).any(axis=2).sum() > 100_000


def test_tune_writes_its_report_and_plot(tmp_path, capsys):
    from dataclasses import replace

    from numatune.synth import PRESETS, synthesize
    model = tmp_path / "small.gguf"
    synthesize(model, replace(PRESETS["default"], hidden=256, intermediate=128, experts=4, top_k=2, layers=1), "Q8_0")
    code = main(["tune", "--model", str(model), "--budget", "2", "--out", str(tmp_path / "t.json"), "--json",
                 "--report", str(tmp_path / "t.html"), "--plot", str(tmp_path / "t.svg")])
    out, err = capsys.readouterr()
    assert code == 0, err
    saved = json.loads(out)                                   # --json: stdout is the result alone
    page = (tmp_path / "t.html").read_text()
    winner = Configuration.from_json(saved["winner"]["config"]).label()
    assert f"Winner: <b>{winner}</b>" in page and "Commands to run" in page and "<h2>Audit</h2>" in page
    assert page.count('<g class="series"') >= 1 and "Not measured for this report" in page
    assert (tmp_path / "t.svg").read_text().count("<circle") >= len(saved["trials"]) - 1
