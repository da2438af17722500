"""Every `--json` document of the CLI against its schema in numatune/schemas/: each command is run
for real (generated trees, a small synthetic GGUF, short budgets), and each schema must refuse a
document that drifted from it."""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

import numatune
from numatune.cli import main
from numatune.stats import Measurement

SCHEMAS = Path(numatune.__file__).parent / "schemas"
ALL = {path.name[: -len("-v1.schema.json")]: json.loads(path.read_text()) for path in SCHEMAS.glob("*-v1.schema.json")}
REGISTRY = Registry().with_resources([(schema["$id"], Resource.from_contents(schema)) for schema in ALL.values()])
COMMANDS = ("audit", "recommend", "plan", "bench", "tune", "check", "auto")


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = ALL[name]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=REGISTRY)


def run_json(*argv: str) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def documents(seed_root, small_gguf, tmp_path_factory) -> dict[str, dict]:
    """command → its real --json document."""
    root, model, folder = str(seed_root), str(small_gguf), tmp_path_factory.mktemp("results")
    runs = {
        "audit": ("audit", "--root", root, "--engine", "ktransformers", "--model", "deepseek-r1:Q4_K_M",
                  "--json", "--fail-on", "never"),
        "recommend": ("recommend", "--root", root, "--engine", "ktransformers", "--model", "deepseek-r1:Q4_K_M",
                      "--json"),
        "plan": ("plan", "--machine", "xeon-gold-6462c-2s", "--model", "deepseek-r1:Q4_K_M", "--engine",
                 "ktransformers", "--json"),
        "bench": ("bench", "--model", model, "--threads", "1", "--tokens", "2", "--repeats", "2", "--json"),
        "tune": ("tune", "--model", model, "--budget", "2", "--out", str(folder / "tuned.json"), "--json"),
        "auto": ("auto", "--model", model, "--budget", "2", "--out", str(folder / "auto.json"), "--json"),
    }
    found = {}
    for command, argv in runs.items():
        code, found[command] = run_json(*argv)
        assert code == 0, (command, code)
    # A baseline far slower than anything a host can do: check passes (exit 0) and says so.
    slow = json.loads((folder / "tuned.json").read_text())
    for trial in (slow["winner"], slow["runner_up"]):
        if trial:
            # samples and their summary together: a summary that disagrees with its samples is refused as corrupt
            trial["tokens_per_s"] = Measurement((1e-3,) * 3, trial["tokens_per_s"].get("unit", "")).to_json()
    (folder / "slow.json").write_text(json.dumps(slow))
    code, found["check"] = run_json("check", str(folder / "slow.json"), "--json")
    assert code == 0
    return found


def test_every_command_with_json_has_a_schema():
    assert set(COMMANDS) | {"probe", "verify", "pagecache"} <= set(ALL)
    for name, schema in ALL.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"].endswith(f"/{name}-v1.schema.json")


@pytest.mark.parametrize("command", COMMANDS)
def test_the_real_output_validates(documents, command):
    document = documents[command]
    assert document["schema_version"] == 1
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(command).iter_errors(document)]
    assert not errors, errors[:5]


def _set(document: dict, path: tuple, value) -> None:
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _drop(document: dict, path: tuple) -> None:
    target = document
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]


# One drift each that a loose schema would let through: a renamed field deep inside, a
# value outside the vocabulary, a field gone, a type changed.
DRIFTS = {
    "audit": lambda d: _set(d, ("findings", 0, "severity"), "fatal"),
    "recommend": lambda d: _set(d, ("config", "policy"), "spread"),
    "plan": lambda d: _set(d, ("ranked", 0, "config", "threads"), 48),
    "bench": lambda d: _set(d, ("placement", "pages", "gate", "node0"), 1),
    "tune": lambda d: _drop(d, ("trials", 0, "stage")),
    "check": lambda d: _set(d, ("ratio",), "0.93"),
    "auto": lambda d: _drop(d, ("recommendations", "ktransformers", "command")),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_drifted_document_is_refused(documents, command):
    drifted = copy.deepcopy(documents[command])
    DRIFTS[command](drifted)
    assert not validator(command).is_valid(drifted)
    extra = copy.deepcopy(documents[command])
    extra["added_later"] = True                       # a new top-level key needs a new schema_version
    assert not validator(command).is_valid(extra)
    unversioned = copy.deepcopy(documents[command])
    del unversioned["schema_version"]
    assert not validator(command).is_valid(unversioned)
