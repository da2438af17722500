"""`numatune check --junit`: the verdict as JUnit XML, a regression as a failed testcase with the
numbers, a pass as a passing one; written atomically."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from numatune.cli import main
from numatune.config import Configuration
from numatune.stats import Measurement
from numatune.store import Trial, TuneResult, fingerprint, save_result
from numatune.synth import PRESETS, synthesize
from numatune.sysfs import Root
from numatune.topology import probe
from numatune.junit import junit_report
from numatune.tune import CheckOutcome

GIB = 1 << 30
CONFIG = Configuration((0, 1), "bind", (0,))


def trial(*samples, error=None):
    return Trial(CONFIG, Measurement.of(samples, "tok/s"), None, GIB, 1, error)


def parse(text: str):
    root = ET.fromstring(text.split("?>", 1)[1])
    suite, = root.findall("testsuite")
    case, = suite.findall("testcase")
    return root, suite, case


def test_a_regression_is_a_failed_testcase_with_the_numbers(tmp_path):
    outcome = CheckOutcome(trial(100.0, 101.0, 99.0), trial(70.0, 71.0, 69.0), 0.05)
    assert outcome.regressed
    root, suite, case = parse(junit_report(outcome, tmp_path / "b.json", 2.5))
    assert root.tag == "testsuites" and root.get("failures") == suite.get("failures") == "1"
    assert suite.get("tests") == "1" and suite.get("errors") == "0"
    failure, = case.findall("failure")
    assert failure.get("type") == "regression" and failure.get("message").startswith("regression: ")
    assert "70.00" in failure.text and "100.00" in failure.text and "ratio: 0.700" in failure.text
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert properties["baseline_tok_s"] == "100" and properties["current_tok_s"] == "70"


def test_a_pass_is_a_passing_testcase(tmp_path):
    outcome = CheckOutcome(trial(100.0, 101.0, 99.0), trial(99.5, 100.5, 100.0), 0.05)
    root, suite, case = parse(junit_report(outcome, tmp_path / "b.json", 1.0))
    assert suite.get("failures") == "0" and root.get("failures") == "0"
    assert case.find("failure") is None and case.find("error") is None
    assert case.find("system-out").text.startswith("ok: ")


def test_a_trial_that_failed_to_run_is_a_failure(tmp_path):
    outcome = CheckOutcome(trial(100.0), Trial(CONFIG, Measurement.of([0.0]), None, 0, 1, "exit 9"), 0.05)
    _, suite, case = parse(junit_report(outcome, tmp_path / "b.json", 1.0))
    assert case.find("failure").get("type") == "failed-to-run" and "exit 9" in case.find("failure").text


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.gguf"
    synthesize(path, replace(PRESETS["default"], hidden=256, intermediate=128, experts=4, top_k=2, layers=1), "Q8_0")
    return path


def test_check_junit_from_the_command_line(tmp_path, small_model, capsys):
    host = probe(Root.open("/"))
    cpu = sorted(os.sched_getaffinity(0))[0]
    config = Configuration((cpu,), "bind", (host.node_of_cpu(cpu),))
    fast = Trial(config, Measurement.of([1e9] * 3, "tok/s"), None, GIB, 0)
    baseline = save_result(TuneResult(fingerprint(host), str(small_model), (fast,), fast, None, True, "x"),
                           tmp_path / "baseline.json")
    report = tmp_path / "reports" / "check.xml"
    report.parent.mkdir()
    report.write_text("stale")
    assert main(["check", str(baseline), "--junit", str(report)]) == 1
    capsys.readouterr()
    _, suite, case = parse(report.read_text())
    assert suite.get("failures") == "1" and case.find("failure") is not None
    assert sorted(os.listdir(report.parent)) == ["check.xml"]         # no temporary left behind
    # bad input: nothing written, one line, exit 2
    other = json.loads(baseline.read_text())
    other["winner"]["tokens_per_s"]["median"] = 5.0
    (tmp_path / "corrupt.json").write_text(json.dumps(other))
    report.unlink()
    assert main(["check", str(tmp_path / "corrupt.json"), "--junit", str(report)]) == 2
    assert not report.exists() and capsys.readouterr().err.count("\n") == 1
