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
