"""The memory bandwidth benchmark: placement, errors, verification, JSON. Never its speed."""
import json
import os

import pytest

from numatune import _kernels, bandwidth
from numatune.errors import PlacementError

SMALL_ARRAY = 1 << 20  # cache-resident: these tests check behaviour, so they only need to be quick
CPUS = sorted(os.sched_getaffinity(0))
CPU = CPUS[0]


def pattern_sum(elements: int) -> float:
    """Sum of the benchmark's fill pattern (element i holds i mod 251), computed independently."""
    full_cycles, rest = divmod(elements, 251)
    return full_cycles * (250 * 251 // 2) + rest * (rest - 1) // 2


@pytest.fixture(params=_kernels.supported_isas())
def isa(request):
    """Runs a test once per loop variant this CPU supports, restoring the variant in force."""
    previous = _kernels.active_isa()
    _kernels.set_active_isa(request.param)
    yield request.param
    _kernels.set_active_isa(previous)


@pytest.mark.parametrize("kernel", bandwidth.KERNELS)
def test_each_kernel_runs_on_one_cpu(kernel):
    result = bandwidth.measure([CPU], None, kernel, SMALL_ARRAY, repeats=3)
    assert (result.cpus, result.kernel, result.array_bytes) == ((CPU,), kernel, SMALL_ARRAY)
    assert result.gbps.n == 3 and result.gbps.unit == "GB/s"
    assert all(sample > 0 for sample in result.gbps.samples)


@pytest.mark.parametrize("kernel, factor", [("read", 1), ("copy", 1), ("triad", 4)])
@pytest.mark.parametrize("array_bytes", [SMALL_ARRAY, SMALL_ARRAY + 8 * 4093])
def test_checksum_is_what_the_kernel_must_compute(isa, kernel, factor, array_bytes):
    # An odd element count exercises the loops' scalar tails; several threads
    # exercise the slicing. Triad writes b + 3·c with b = c = pattern.
    raw = _kernels.membench_run(kernel, CPUS[:2], -1, array_bytes, 2)
    assert raw["isa"] == ("scalar" if isa == "scalar" else "avx2")
    assert raw["checksum"] == factor * pattern_sum(array_bytes // 8)


def test_binding_to_a_node_puts_the_pages_there(host_memory_node):
    result = bandwidth.measure([CPU], host_memory_node, "read", SMALL_ARRAY, repeats=1)
    assert result.memory_node == host_memory_node
    assert result.fraction_on(host_memory_node) == pytest.approx(1.0)


def test_nonexistent_node_is_a_placement_error_naming_it():
    with pytest.raises(PlacementError, match="memory node 63"):
        bandwidth.measure([CPU], 63, "read", SMALL_ARRAY, repeats=1)


@pytest.mark.parametrize("cpu", [-1, max(CPUS) + 1, 100_000])
def test_unusable_cpu_is_a_placement_error_naming_it(cpu):
    with pytest.raises(PlacementError, match=f"CPU {cpu} "):
        bandwidth.measure([cpu], None, "read", SMALL_ARRAY, repeats=1)


def test_a_cpu_given_twice_is_a_placement_error():
    with pytest.raises(PlacementError, match=f"CPU {CPU} is given twice"):
        bandwidth.measure([CPU, CPU], None, "read", SMALL_ARRAY, repeats=1)


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="scale"):
        bandwidth.measure([CPU], None, "scale", SMALL_ARRAY)


def test_thread_curve_ends_with_all_cpus():
    curve = bandwidth.thread_curve(CPUS, None, "read", array_bytes=SMALL_ARRAY, repeats=1)
    assert [len(result.cpus) for result in curve] == list(bandwidth.thread_counts(len(CPUS)))
    assert curve[-1].cpus == tuple(CPUS)


@pytest.mark.parametrize("cpu_count, counts", [(1, (1,)), (4, (1, 2, 4)), (6, (1, 2, 4, 6)),
                                               (8, (1, 2, 4, 8))])
def test_thread_counts_double_and_include_every_cpu(cpu_count, counts):
    assert bandwidth.thread_counts(cpu_count) == counts


def test_thread_curve_refuses_counts_beyond_the_cpus():
    with pytest.raises(PlacementError, match=f"thread count {len(CPUS) + 1}"):
        bandwidth.thread_curve(CPUS, None, counts=[len(CPUS) + 1], array_bytes=SMALL_ARRAY)


def test_default_array_size_is_large_and_fits_free_memory():
    mib = 1 << 20
    assert bandwidth.default_array_bytes("read", 0, llc_bytes=32 * mib) == 256 * mib
    assert bandwidth.default_array_bytes("read", 0, llc_bytes=105 * mib) == 420 * mib
    # Triad's three arrays share half of 1 GiB free.
    assert bandwidth.default_array_bytes("triad", 0, 32 * mib, free_bytes=1024 * mib) == 512 * mib // 3


def test_default_array_size_refuses_a_node_too_small_for_the_cache():
    with pytest.raises(PlacementError, match="memory node 3 has 200 MiB free"):
        bandwidth.default_array_bytes("copy", 3, llc_bytes=32 * (1 << 20), free_bytes=200 << 20)


def test_result_json_round_trip():
    result = bandwidth.measure([CPU], None, "copy", SMALL_ARRAY, repeats=2)
    assert bandwidth.BandwidthResult.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_matrix_measures_every_pair_and_round_trips_through_json(host_memory_node):
    matrix = bandwidth.measure_matrix({0: [CPU]}, [host_memory_node], kernels=("read", "triad"),
                                      array_bytes=SMALL_ARRAY, repeats=1)
    assert [(c.cpu_node, c.result.memory_node, c.result.kernel) for c in matrix.cells] == [
        (0, host_memory_node, "read"), (0, host_memory_node, "triad")]
    assert matrix.gbps(0, host_memory_node, "triad").n == 1
    assert bandwidth.BandwidthMatrix.from_json(json.loads(json.dumps(matrix.to_json()))) == matrix


def test_json_of_another_schema_version_is_refused():
    data = bandwidth.measure([CPU], None, "read", SMALL_ARRAY, repeats=1).to_json()
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema version 99"):
        bandwidth.BandwidthResult.from_json(data)
