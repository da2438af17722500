"""Model profiles, their validation errors, and the ELF reader behind the NUMA-build check."""
from __future__ import annotations

import glob
import subprocess
from pathlib import Path

import pytest

from numatune.elf import needed_libraries
from numatune.engines import inspect_engine
from numatune.errors import NumatuneError, ProfileError
from numatune.profiles import find_model_profile, model_profiles, parse_model_profile, read_yaml


def test_shipped_model_profiles_load():
    profiles = model_profiles()
    assert {"deepseek-r1", "qwen3-235b-a22b", "qwen3-30b-a3b", "mixtral-8x7b"} <= set(profiles)
    r1 = find_model_profile("DeepSeek-V3")
    assert (r1.hidden, r1.expert_intermediate, r1.experts, r1.top_k) == (7168, 2048, 256, 8)
    # published DeepSeek-R1 Q4_K_M GGUFs weigh about 404 GB
    assert 380e9 < r1.weight_bytes("Q4_K_M") < 430e9


@pytest.mark.parametrize("change, field", [
    ({"experts": "many"}, "experts"),
    ({"top_k": 300}, "top_k"),
    ({"gating": "relu"}, "gating"),
    ({"moe_layers": 99}, "moe_layers"),
])
def test_bad_model_profile_names_file_and_field(tmp_path, change, field):
    data = read_yaml(Path(model_profiles()["deepseek-r1"].source))
    data.update(change)
    with pytest.raises(ProfileError) as err:
        parse_model_profile(data, "x/bad.yaml")
    assert "x/bad.yaml" in str(err.value) and field in str(err.value)


def test_missing_field_and_bad_yaml(tmp_path):
    with pytest.raises(ProfileError, match="field 'layers' is missing"):
        parse_model_profile({"name": "m"}, "m.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match=r"bad.yaml:.*line"):
        read_yaml(bad)


def test_elf_needed_of_built_library(tmp_path):
    src = tmp_path / "lib.c"
    src.write_text("int f(void) { return 1; }\n")
    plain, numa = tmp_path / "libplain.so", tmp_path / "cpuinfer_ext.cpython-311-x86_64-linux-gnu.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(plain)], check=True)
    lib = glob.glob("/usr/lib/*/libnuma.so.1") + glob.glob("/lib/*/libnuma.so.1")
    assert lib, "libnuma.so.1 is not installed (Debian package libnuma1, which numactl brings; .ci/run installs it)"
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(numa), "-Wl,--no-as-needed", lib[0]],
                   check=True)
    assert not any(n.startswith("libnuma") for n in needed_libraries(plain))
    assert any(n.startswith("libnuma") for n in needed_libraries(numa))
    found = inspect_engine("ktransformers", tmp_path)
    assert found.numa_aware is True and found.location.endswith(numa.name)
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain.rename(plain_dir / "cpuinfer_ext.so")
    assert inspect_engine("ktransformers", plain_dir).numa_aware is False


def test_elf_rejects_non_elf(tmp_path):
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an elf")
    with pytest.raises(NumatuneError, match="not an ELF"):
        needed_libraries(junk)
    truncated = tmp_path / "trunc.so"
    truncated.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 20)
    with pytest.raises(NumatuneError, match="malformed"):
        needed_libraries(truncated)
