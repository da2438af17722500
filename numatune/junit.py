"""`numatune check --junit FILE.xml`: the verdict as a JUnit XML report, so that a CI system shows
a regression as a failed test (with the numbers) and a pass as a passing one."""
from __future__ import annotations

import datetime
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from .store import write_atomically
from .tune import CheckOutcome

SUITE = "numatune check"


def _figures(outcome: CheckOutcome) -> str:
    base, now = outcome.baseline.tokens_per_s, outcome.current.tokens_per_s
    lines = [f"configuration: {outcome.baseline.config.label()}",
             f"baseline: {base.describe()}",
             f"current:  {now.describe()}" if not outcome.current.error else
             f"current:  failed ({outcome.current.error})",
             f"ratio: {outcome.ratio:.3f}, tolerance: {outcome.tolerance:.1%} "
             f"(regression below {1 - outcome.tolerance:.3f} and outside the noise)"]
    if outcome.runner_up is not None and outcome.runner_up_now is not None and not outcome.runner_up_now.error:
        lines.append(f"runner-up {outcome.runner_up.config.label()}: now {outcome.runner_up_now.tokens_per_s.describe()}"
                     + (" (faster than the winner: tune again)" if outcome.overtaken else ""))
    return "\n".join(lines)


def junit_report(outcome: CheckOutcome, baseline: Path, seconds: float) -> str:
    failed = outcome.regressed
    stamp = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    counts = {"tests": "1", "failures": "1" if failed else "0", "errors": "0", "skipped": "0",
              "time": f"{seconds:.3f}"}
    suites = ET.Element("testsuites", name=SUITE, **counts)
    suite = ET.SubElement(suites, "testsuite", name=SUITE, timestamp=stamp, hostname=socket.gethostname(), **counts)
    properties = ET.SubElement(suite, "properties")
    for name, value in (("baseline", str(baseline)), ("tolerance", f"{outcome.tolerance:g}"),
                        ("ratio", f"{outcome.ratio:g}"), ("baseline_tok_s", f"{outcome.baseline.tokens_per_s.median:g}"),
                        ("current_tok_s", "" if outcome.current.error else f"{outcome.current.tokens_per_s.median:g}")):
        ET.SubElement(properties, "property", name=name, value=value)
    case = ET.SubElement(suite, "testcase", classname="numatune.check",
                         name=f"decode tok/s of {outcome.baseline.config.label()}", time=f"{seconds:.3f}")
    if failed:
        failure = ET.SubElement(case, "failure", message=outcome.reason(),
                                type="failed-to-run" if outcome.current.error else "regression")
        failure.text = _figures(outcome)
    ET.SubElement(case, "system-out").text = outcome.reason() + "\n" + _figures(outcome)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(path: Path, outcome: CheckOutcome, baseline: Path, seconds: float) -> None:
    write_atomically(Path(path), junit_report(outcome, baseline, seconds))
