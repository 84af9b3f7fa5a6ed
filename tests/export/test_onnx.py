from pathlib import Path

import numpy as np
import onnx
import torch
from vit_zoo import make_vit

from export.compact import build_compact, padded_structure
from export.onnx_io import onnx_cost, ort_run, torch2onnx
from hiap.cost import BlockStructure, Structure, structure_macs, structure_params
from hiap.gated import GatedViT


def test_compact_onnx_parity_and_counts(tmp_path: Path) -> None:
    vit = make_vit("registers", fused=False)
    geom = GatedViT(vit).geometry
    blocks = (
        BlockStructure(heads=(0, 2), value_dims=((1, 2, 3), tuple(range(11))), ffn=True, neurons=tuple(range(50))),
        BlockStructure(heads=(1,), value_dims=((4,),), ffn=False, neurons=()),
    )
    structure = Structure(blocks=blocks)
    compact = build_compact(vit, structure, align=8)
    path = tmp_path / "m.onnx"
    torch2onnx(compact, (3, 32, 32), path, metadata={"plan_hash": "abc"})
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = compact(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(path, x) - ref).max() <= 1e-4
    emitted = padded_structure(structure, geom.head_dim, 8)
    macs, params = onnx_cost(path)
    assert macs == structure_macs(geom, emitted)
    assert params == structure_params(geom, emitted)
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}["plan_hash"] == "abc"
