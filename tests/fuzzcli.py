"""Runs many `numatune` command lines in one process (for the fuzz tests): each through
numatune.cli.main, as the `numatune` command runs it, with its exit status and output recorded.

    python fuzzcli.py CASES.json LOG.jsonl

CASES.json is a list of argv lists. Before each case a {"start": i} line is written and flushed,
after it {"case": i, "code": ..., "stderr": ..., "stdout": ...}; so when the process dies of a
signal (a crash in C++), the last started case is the one that killed it. An exception that
escapes main() is recorded as code "traceback" with the traceback in stderr.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback


def run_cases(cases: list, log_path: str) -> None:
    from numatune.cli import main
    with open(log_path, "w") as log:
        for index, argv in enumerate(cases):
            log.write(json.dumps({"start": index}) + "\n")
            log.flush()
            os.fsync(log.fileno())
            out, err = io.StringIO(), io.StringIO()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = main(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException:       # noqa: B036 — anything that escapes main() is a finding
                code = "traceback"
                err.write(traceback.format_exc())
            log.write(json.dumps({"case": index, "code": code, "stderr": err.getvalue(),
                                  "stdout": out.getvalue()}) + "\n")
            log.flush()


if __name__ == "__main__":
    run_cases(json.load(open(sys.argv[1])), sys.argv[2])
