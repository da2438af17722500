"""`numatune plan`: the roofline model, the machine profiles, and the CLI — all from profiles or
generated trees, never from this host's layout."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from numatune.bandwidth import BandwidthCell, BandwidthMatrix, BandwidthResult, ProbeBandwidth
from numatune.cli import main
from numatune.errors import ProfileError
from numatune.plan import (DEFAULT_LINE_TRANSFER_NS, GIB, Machine, MachineNode, PlanConfig, candidates, load_machine,
                           machine_from_probe, machine_profiles, make_plan, parse_machine_profile, predict,
                           prune_reason, reserved_by_node, traits_of)
from numatune.profiles import find_engine_profile
from numatune.stats import Measurement

SEED = "xeon-gold-6462c-2s"
MODEL = "deepseek-r1:Q4_K_M"
GB = 1e9


@pytest.fixture(scope="module")
def seed_plan():
    return make_plan(load_machine(SEED), MODEL, find_engine_profile("ktransformers"))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def seed_profile_data() -> dict:
    return yaml.safe_load(Path(load_machine(SEED).source).read_text())


def write_profile(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "machine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------------------------
# The seed's three measured configurations

def test_seed_configurations_rank_in_the_measured_order(seed_plan):
    measured = {p.measured.tokens_per_s: p.tokens_per_s for p in seed_plan.observed}
    assert set(measured) == {13.75, 5.24, 0.51}
    assert measured[13.75] > measured[5.24] > measured[0.51]
    assert [p.measured.tokens_per_s for p in seed_plan.observed] == [13.75, 5.24, 0.51]


def test_seed_predictions_carry_measured_values_and_efficiency(seed_plan):
    for p in seed_plan.observed:
        assert p.efficiency == pytest.approx(p.measured.tokens_per_s / p.tokens_per_s)
        assert 0 < p.efficiency < 1          # the roofline is a ceiling
        assert "issues/432" in p.measured.source
    worst = min(seed_plan.observed, key=lambda p: p.efficiency)
    assert worst.measured.tokens_per_s == 0.51   # the one bandwidth alone does not explain


def test_seed_bytes_per_token_are_the_routed_experts(seed_plan):
    # 58 MoE layers × 8 of 256 experts × 3 × 7168 × 2048 weights at 4.85 bits (ktransformers runs
    # attention and the shared expert on the GPU)
    assert seed_plan.bytes_per_token == pytest.approx(58 * 8 * 3 * 7168 * 2048 * 4.85 / 8, rel=1e-6)


def test_measured_configuration_is_marked_in_the_ranking(seed_plan):
    marked = [p for p in seed_plan.ranked if p.measured]
    assert [p.measured.tokens_per_s for p in marked] == [13.75]
    assert marked[0].config.policy == "replicate" and marked[0].config.total_workers == 64


def test_ktransformers_numa_build_replicates_on_every_node(seed_plan):
    for p in seed_plan.ranked:
        if p.config.numa_build:
            assert p.config.policy == "replicate" and p.config.worker_nodes == (0, 1)
        else:
            assert p.config.policy in ("bind", "first-touch", "interleave")


# ---------------------------------------------------------------------------------------------
# Monotonic sanity

def _scaled(machine: Machine, factor: float) -> Machine:
    return replace(machine, read_gbps=tuple(tuple(x * factor for x in row) for row in machine.read_gbps),
                   link_gbps=machine.link_gbps * factor, per_core_read_gbps=machine.per_core_read_gbps * factor)


def _predict(machine: Machine, config: PlanConfig, engine: str = "numatune"):
    traits = traits_of(find_engine_profile(engine))
    return predict(machine, config, int(12 * GB), int(380 * GB), 58, traits)


REPLICATE = PlanConfig("replicate", ((0, 32), (1, 32)), (0, 1), copy_groups=((0,), (1,)))
INTERLEAVE = PlanConfig("interleave", ((0, 32), (1, 32)), (0, 1))


@pytest.mark.parametrize("config", [REPLICATE, INTERLEAVE, PlanConfig("bind", ((0, 32),), (0,))])
def test_more_bandwidth_more_tokens(config):
    seed = load_machine(SEED)
    slow, fast = _predict(seed, config), _predict(_scaled(seed, 1.5), config)
    assert fast.tokens_per_s > slow.tokens_per_s


def test_more_threads_do_not_hurt_below_saturation():
    seed = load_machine(SEED)
    speeds = [_predict(seed, PlanConfig("bind", ((0, t),), (0,))).tokens_per_s for t in (1, 2, 4, 8, 16)]
    assert speeds == sorted(speeds)


def test_replicate_beats_interleave_on_two_sockets():
    seed = load_machine(SEED)
    local, spread = _predict(seed, REPLICATE), _predict(seed, INTERLEAVE)
    assert local.tokens_per_s > 1.5 * spread.tokens_per_s
    assert "memory of node" in local.bottleneck and "memory of node" not in spread.bottleneck


def test_replicate_pruned_when_a_copy_does_not_fit_a_node():
    snc = load_machine("xeon-platinum-8592plus-2s-snc2")         # 256 GiB nodes, DeepSeek copy ~370 GiB
    plan = make_plan(snc, MODEL, find_engine_profile("ktransformers"))
    assert not [p for p in plan.ranked if p.config.policy == "replicate"]
    reasons = [why for label, why in plan.pruned if label.startswith("replicate")]
    assert reasons and all("GiB" in why for why in reasons)
    seed = make_plan(load_machine(SEED), MODEL, find_engine_profile("ktransformers"))
    assert any(p.config.policy == "replicate" for p in seed.ranked)   # 512 GiB nodes: it fits


def test_sub_numa_clustering_offers_a_copy_per_socket():
    snc = load_machine("xeon-platinum-8592plus-2s-snc2")
    plan = make_plan(snc, MODEL, find_engine_profile("numatune"))
    per_socket = [p for p in plan.ranked if p.config.policy == "replicate"]
    assert per_socket and all(p.config.copy_groups == ((0, 1), (2, 3)) for p in per_socket)


def test_oversubscribed_node_collapses():
    seed = load_machine(SEED)
    fits = _predict(seed, PlanConfig("bind", ((0, 64),), (0,)), "ktransformers")
    over = _predict(seed, PlanConfig("bind", ((0, 70),), (0,)), "ktransformers")
    assert over.tokens_per_s < fits.tokens_per_s / 5
    assert any("preempted" in note for note in over.notes)


@pytest.mark.parametrize("machine", [SEED, "epyc-9654-2s-nps4"])
@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_plan_keeps_reserved_threads_where_the_command_builder_does(machine, objective):
    """Every engine, every candidate: the CPUs plan charges to a node (workers + reserved) are the
    CPUs that, given to the command builder, leave exactly the plan's workers computing there —
    vLLM's front-end CPU once per rank, ktransformers' spinning thread once per process."""
    from numatune.command import thread_budget
    from numatune.config import Configuration
    from numatune.profiles import engine_profiles
    for engine in engine_profiles().values():
        for config in candidates(load_machine(machine), engine, objective):
            processes = [((n, t),) for n, t in config.workers] if config.instances > 1 else [config.workers]
            for workers in processes:
                counts = [(n, config.busy_threads(n)) for n, _ in workers]
                starts = [sum(c for _, c in counts[:i]) for i in range(len(counts))]
                cpus = tuple(range(sum(c for _, c in counts)))
                node_of = lambda cpu: [n for (n, _), start in zip(counts, starts) if start <= cpu][-1]  # noqa: E731
                budget = thread_budget(Configuration(cpus, "first-touch", tuple(n for n, _ in counts)), engine,
                                       node_of)
                assert tuple((n, len(c)) for n, c in budget.compute) == workers, (engine.name, config.label())
            if engine.reserved_per == "rank" and engine.reserved_threads:
                assert all(config.busy_threads(n) == t + engine.reserved_threads for n, t in config.workers)


def _lopsided(threads_per_core: int) -> Machine:
    """Node 0: 8 cores, node 1: 4 (a probed machine whose nodes differ, e.g. under a cpuset)."""
    nodes = (MachineNode(0, 0, 8, threads_per_core, 512 * GIB), MachineNode(1, 1, 4, threads_per_core, 512 * GIB))
    return Machine(name="lopsided", description="", nodes=nodes, read_gbps=((200.0, 60.0), (60.0, 200.0)),
                   per_core_read_gbps=2.0, link_gbps=60.0, line_transfer_ns=DEFAULT_LINE_TRANSFER_NS,
                   bandwidth_kind="estimated", observations=(), source="test")


def test_vllm_front_end_cpu_is_counted_on_every_rank():
    vllm = find_engine_profile("vllm-cpu")
    traits = traits_of(vllm)
    machine = _lopsided(1)
    kept = {p.config.workers for p in make_plan(machine, MODEL, vllm).ranked}
    assert ((0, 4), (1, 4)) not in kept                # rank 1: 4 workers + its front-end CPU on 4 cores
    assert ((0, 3), (1, 3)) in kept                    # 3 + 1 on each rank fit
    config = next(c for c in candidates(machine, vllm) if c.workers == ((0, 4), (1, 4)))
    why = prune_reason(machine, config, int(380 * GB), traits)
    assert why and why.startswith("node 1: 5 busy threads")
    smt = _lopsided(2)                                 # with SMT it runs, the reserved CPU taking a share
    config = PlanConfig("partition", ((0, 8), (1, 8)), (0, 1), reserved=reserved_by_node(vllm, ((0, 8), (1, 8))))
    unreserved = replace(config, reserved=())
    placed = predict(smt, config, int(12 * GB), int(380 * GB), 58, traits)
    assert placed.tokens_per_s < predict(smt, unreserved, int(12 * GB), int(380 * GB), 58, traits).tokens_per_s
    assert any(note.startswith("node 1: 9 busy threads on 8") for note in placed.notes)


def test_candidates_never_exceed_cores_or_use_engines_beyond_their_profile():
    seed = load_machine(SEED)
    for config in candidates(seed, find_engine_profile("llama.cpp")):
        assert config.policy not in ("replicate", "partition")
        assert all(t <= 32 for _, t in config.workers)


def test_throughput_objective_adds_one_instance_per_node():
    plan = make_plan(load_machine(SEED), MODEL, find_engine_profile("llama.cpp"), objective="throughput")
    instances = [p for p in plan.ranked if p.config.instances == 2]
    assert instances
    single = {p.config.workers: p.tokens_per_s for p in plan.ranked
              if p.config.policy == "bind" and p.config.instances == 1 and p.config.worker_nodes == (0,)}
    for p in instances:
        assert p.tokens_per_s == pytest.approx(2 * single[(p.config.workers[0],)])


# ---------------------------------------------------------------------------------------------
# Profiles

def test_every_machine_profile_loads_with_sources():
    machines = machine_profiles()
    assert {SEED, "xeon-platinum-8592plus-2s-snc2", "epyc-9654-2s-nps1", "epyc-9654-2s-nps4"} <= set(machines)
    for machine in machines.values():
        data = yaml.safe_load(Path(machine.source).read_text())
        assert data["sources"]
        for i, row in enumerate(machine.read_gbps):
            assert row[i] == max(row)      # local is the fastest


def test_seed_profile_layout():
    seed = load_machine("seed")
    assert seed.name == SEED and len(seed.nodes) == 2
    assert all(n.cores == 32 and n.threads_per_core == 2 for n in seed.nodes)
    assert seed.bandwidth(0, 0) > seed.bandwidth(0, 1)


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("cores_per_node"), "cores_per_node"),
    (lambda d: d["bandwidth"].update(local_read_gbps=-3), "bandwidth.local_read_gbps"),
    (lambda d: d["bandwidth"].update(local_read_gbps=400), "bandwidth.local_read_gbps"),
    (lambda d: d["bandwidth"].update(remote_read_gbps=300), "bandwidth.remote_read_gbps"),
    (lambda d: d["bandwidth"].update(matrix=[[1, 2]]), "bandwidth.matrix"),
    (lambda d: d["link"].pop("gbps_per_direction"), "link.gbps_per_direction"),
    (lambda d: d["observations"][1].update(policy="spread"), "observations[1].policy"),
    (lambda d: d["observations"][0].update(nodes=[0, 7]), "observations[0].nodes"),
    (lambda d: d.update(threads_per_core="two"), "threads_per_core"),
])
def test_bad_profile_names_file_and_field(tmp_path, change, field):
    data = seed_profile_data()
    change(data)
    path = write_profile(tmp_path, data)
    with pytest.raises(ProfileError) as error:
        parse_machine_profile(data, str(path))
    message = str(error.value)
    assert str(path) in message and f"'{field}'" in message and "\n" not in message


def test_snc_profile_needs_same_socket_bandwidth(tmp_path):
    data = seed_profile_data()
    data["nodes_per_socket"] = 2
    with pytest.raises(ProfileError, match="bandwidth.same_socket_read_gbps"):
        parse_machine_profile(data, "x.yaml")


def test_explicit_matrix_is_used(tmp_path):
    data = seed_profile_data()
    data["bandwidth"]["matrix"] = [[200, 50], [60, 210]]
    machine = load_machine(str(write_profile(tmp_path, data)))
    assert machine.bandwidth(0, 1) == 50 and machine.bandwidth(1, 0) == 60


# ---------------------------------------------------------------------------------------------
# A probed machine (generated tree and a made-up measurement, not this host)

def _fake_bandwidth(nodes, local, remote, single):
    cells, curves = [], []
    for cpu_node in nodes:
        for memory in nodes:
            gbps = local if cpu_node == memory else remote
            cells.append(BandwidthCell(cpu_node, BandwidthResult((0,), memory, "read", 1 << 28,
                                                                 Measurement.of([gbps] * 3, "GB/s"), (), "avx2")))
        curves.append((cpu_node, (BandwidthResult((0,), cpu_node, "read", 1 << 28,
                                                  Measurement.of([single] * 3, "GB/s"), (), "avx2"),)))
    return ProbeBandwidth(BandwidthMatrix(tuple(cells)), tuple(curves))


def test_machine_from_probe(seed):
    machine = machine_from_probe(seed, _fake_bandwidth([0, 1], 240.0, 70.0, 11.0))
    assert [n.cores for n in machine.nodes] == [32, 32]
    assert [n.threads_per_core for n in machine.nodes] == [2, 2]
    assert machine.bandwidth(0, 1) == 70.0 and machine.per_core_read_gbps == 11.0 and machine.link_gbps == 70.0
    plan = make_plan(machine, MODEL, find_engine_profile("ktransformers"))
    assert plan.ranked[0].config.policy == "replicate"


# ---------------------------------------------------------------------------------------------
# CLI

def test_cli_json(capsys):
    code, out, err = run(capsys, "plan", "--machine", SEED, "--model", MODEL, "--engine", "ktransformers",
                         "--json", "--top", "3")
    assert code == 0, err
    data = json.loads(out)
    assert data["schema_version"] == 1 and data["machine"]["name"] == SEED
    assert len(data["ranked"]) == 3
    speeds = [p["predicted_tokens_per_s"] for p in data["ranked"]]
    assert speeds == sorted(speeds, reverse=True)
    observed = data["observed"]
    assert [o["measured"]["tokens_per_s"] for o in observed] == [13.75, 5.24, 0.51]
    assert all({"efficiency", "predicted_tokens_per_s", "bottleneck"} <= set(o) for o in observed)


def test_cli_machine_file_and_human_output(capsys):
    code, out, err = run(capsys, "plan", "--machine", load_machine(SEED).source, "--model", MODEL,
                         "--engine", "ktransformers", "--top", "2")
    assert code == 0, err
    assert "13.75" in out and "0.51" in out and "--cpu_infer" in out


@pytest.mark.parametrize("argv, needle", [
    (["--machine", "no-such-box", "--model", MODEL], "no-such-box"),
    (["--machine", SEED, "--model", "no-such-model"], "no-such-model"),
    (["--machine", SEED, "--model", MODEL, "--engine", "nonsense"], "nonsense"),
    (["--model", MODEL], "--bandwidth"),
])
def test_cli_bad_input_is_one_line(capsys, argv, needle):
    code, _, err = run(capsys, "plan", *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_cli_bad_profile_file_is_one_line(capsys, tmp_path):
    data = seed_profile_data()
    data["bandwidth"]["per_core_read_gbps"] = 0
    path = write_profile(tmp_path, data)
    code, _, err = run(capsys, "plan", "--machine", str(path), "--model", MODEL)
    assert code == 2 and str(path) in err and "bandwidth.per_core_read_gbps" in err
    assert len(err.strip().splitlines()) == 1


# ----- GGUF models and this host's own trials beside the predictions ---------------------------

def test_a_gguf_model_is_sized_from_its_moe_layers(small_gguf):
    from numatune.gguf_moe import read_moe_model
    from numatune.plan import make_plan, model_sizes, traits_of
    moe = read_moe_model(small_gguf)
    name, per_token, weights, layers = model_sizes(str(small_gguf), traits_of(find_engine_profile("numatune")))
    assert name == "small.gguf" and layers == 2
    assert per_token == moe.expert_bytes * 2 // 8 + moe.router_bytes      # top-2 of 8 experts, and the routers
    assert weights == moe.expert_bytes + moe.router_bytes
    plan = make_plan(load_machine("seed"), str(small_gguf), find_engine_profile("numatune"))
    assert plan.bytes_per_token == per_token and plan.ranked


def test_saved_trials_are_set_beside_the_predictions(small_gguf, seed):
    from numatune.config import Configuration
    from numatune.plan import make_plan, tune_observations
    from numatune.store import Trial, TuneResult, fingerprint
    machine = load_machine("seed")
    bind = Trial(Configuration(tuple(range(16)), "bind", (0,)), Measurement.of([90.0, 100.0, 110.0]), None, 1, 2)
    early = Trial(bind.config, Measurement.of([50.0] * 3), None, 1, 0)
    failed = Trial(Configuration(tuple(range(8)), "bind", (0,)), Measurement.of([0.0]), None, 0, 0, error="boom")
    result = TuneResult(fingerprint(seed), str(small_gguf), (early, bind, failed), bind, None, True, "x")
    observed = tune_observations(result, "saved.json", "small.gguf")
    assert len(observed) == 1 and observed[0].tokens_per_s == 100.0 and observed[0].workers == 16
    plan = make_plan(replace(machine, observations=observed), str(small_gguf), find_engine_profile("numatune"))
    assert len(plan.observed) == 1
    seen = plan.observed[0]
    assert seen.measured.tokens_per_s == 100.0 and seen.efficiency == pytest.approx(100.0 / seen.tokens_per_s)
