"""kernels/iq_grids.h is exactly what tools/gen_iq_grids.py makes from the gguf package's codebooks."""
import importlib.util
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_iq_grids", ROOT / "tools" / "gen_iq_grids.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_header_matches_gguf_codebooks():
    out = io.StringIO()
    _generator().main(out)
    assert (ROOT / "kernels" / "iq_grids.h").read_text() == out.getvalue()


def test_first_entries_decode_to_gguf_values():
    import numpy as np
    from gguf import quants
    gen = _generator()
    quants.IQ2_XXS.init_grid()
    entry = gen.packed_entries(quants.IQ2_XXS, 8)[1]
    values = [np.int8(np.uint8((entry >> (8 * i)) & 0xFF)) for i in range(8)]
    assert values == list(np.asarray(quants.IQ2_XXS.grid).reshape(-1, 8)[1].astype(np.int8))
    assert len(gen.packed_entries(quants.IQ1_S, 8)) == 2048


def test_sign_table_is_the_index_with_even_parity():
    """kernels/dot_x86_iq.h builds its sign masks at compile time from this rule, not from
    the table: byte i is i with bit 7 set when i has an odd number of set bits."""
    from gguf import quants
    table = list(quants.IQ2_XXS.ksigns)
    assert table == [i | ((bin(i).count("1") & 1) << 7) for i in range(128)]


def test_no_isa_specific_file_runs_code_when_the_library_loads():
    """Files compiled with AVX2/AVX-512 flags must not have load-time initializers: they would run
    those instructions on any CPU that imports numatune (a SIGILL in the AVX2-only guests)."""
    import shutil
    import subprocess

    import pytest

    from numatune import _kernels
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.fail("objdump (binutils) is needed to read the extension's symbols")
    symbols = subprocess.run([objdump, "-t", _kernels.__file__], check=True, capture_output=True, text=True).stdout
    assert "_kernels" in _kernels.__file__ and ".text" in symbols     # a real symbol table was read
    initializers = [line.split()[-1] for line in symbols.splitlines() if "_GLOBAL__sub_I_" in line]
    assert not [name for name in initializers if "avx" in name.lower()], initializers
