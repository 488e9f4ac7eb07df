"""The kernel oracles (``r1ov_kernels.reference``): self-contained, and equal to the project's definition.

``r1ov_jax.layers.attention.attention(impl="xla")`` is what the model runs on CPU; the references are what the
kernels are tested against. They are written independently, so these cases keep the two from drifting.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from r1ov_kernels.reference import (
    reference_decode_attention,
    reference_flash_attention,
    reference_varlen_attention,
)

from r1ov_jax.layers import attention as attn
from tests.kernels.helpers import FP32_TOL, assert_close, qkv, segments, value_and_grads

KERNELS = pathlib.Path(__file__).resolve().parents[2] / "kernels"


def test_reference_imports_no_r1ov_jax_module():
    code = (
        "import sys, r1ov_kernels.reference\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('r1ov_jax'))))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"r1ov_kernels.reference pulled in: {res.stdout.strip()}"


def test_kernel_modules_import_no_private_names_from_each_other():
    """Shared helpers live in ``common`` under public names; no ``from r1ov_kernels.x import _y``."""
    bad = []
    for path in sorted(KERNELS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("r1ov_kernels"):
                bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id in ("common", "reference", "flash_attention") and node.attr.startswith("_"):
                    bad.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not bad, bad


# b, tq, tk, hq, hkv, d, causal, segment layout, positions offset (decode-like), kv_heads_major
CASES = [
    (2, 24, 24, 4, 4, 8, True, "none", False, False),  # plain causal MHA
    (2, 30, 30, 4, 2, 16, True, "packed", False, False),  # packed causal GQA, one fully padded row
    (2, 20, 20, 6, 2, 8, False, "left_pad", False, False),  # bidirectional with left padding, GQA 3
    (2, 3, 40, 8, 2, 16, True, "left_pad", True, True),  # a few new tokens against a head-major cache
    (1, 1, 33, 7, 1, 8, True, "none", True, True),  # MQA decode step, head-major
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_references_match_library_xla_attention(case):
    b, tq, tk, hq, hkv, d, causal, seg_kind, offset, heads_major = case
    rng = np.random.default_rng(tq * 100 + tk + hq)
    q, k, v = qkv(rng, b, tq, tk, hq, hkv, d)
    kv_seg = segments(rng, b, tk, seg_kind)
    q_seg = None if kv_seg is None else kv_seg[:, tk - tq :]
    q_pos = jnp.broadcast_to(jnp.arange(tk - tq, tk, dtype=jnp.int32), (b, tq)) if offset else None
    kw = {"q_segment_ids": q_seg, "kv_segment_ids": kv_seg, "causal": causal, "q_positions": q_pos}
    heads = (lambda x: x.transpose(0, 2, 1, 3)) if heads_major else (lambda x: x)
    library = lambda q, k, v: attn.attention(  # noqa: E731
        q, heads(k), heads(v), **kw, impl="xla", kv_heads_major=heads_major
    )
    ids = (q_seg, kv_seg, q_pos, None)
    if heads_major:
        oracle = lambda q, k, v: reference_decode_attention(  # noqa: E731
            q, heads(k), heads(v), *ids, causal=causal, kv_heads_major=True
        )
    else:
        oracle = lambda q, k, v: reference_flash_attention(q, k, v, *ids, causal=causal)  # noqa: E731
    cot = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    out, grads = value_and_grads(library, q, k, v, cot)
    ref, ref_grads = value_and_grads(oracle, q, k, v, cot)
    assert_close(out, ref, FP32_TOL, "output")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(g, rg, FP32_TOL, name)


def test_decode_lengths_and_varlen_match_library():
    rng = np.random.default_rng(5)
    q, k, v = qkv(rng, 2, 1, 40, 4, 2, 8)
    lengths = jnp.asarray([13, 40], jnp.int32)
    kv_seg = (jnp.arange(40)[None] < lengths[:, None]).astype(jnp.int32)
    q_pos = (lengths - 1)[:, None]
    expect = attn.attention(q, k, v, kv_segment_ids=kv_seg, causal=True, q_positions=q_pos, impl="xla")
    got = reference_decode_attention(q, k, v, q_positions=q_pos, lengths=lengths, causal=True)
    assert_close(got, expect, FP32_TOL)

    t = 40
    q, k, v = (jnp.asarray(rng.standard_normal((t, h, 8)), jnp.float32) for h in (4, 2, 2))
    cu = jnp.asarray([0, 7, 7, 20, 36], jnp.int32)  # an empty sequence and 4 padding tokens
    seg = np.zeros(t, np.int32)
    for i in range(len(cu) - 1):
        seg[int(cu[i]) : int(cu[i + 1])] = i + 1
    seg = jnp.asarray(seg)[None]
    expect = attn.attention(q[None], k[None], v[None], q_segment_ids=seg, kv_segment_ids=seg, impl="xla")[0]
    assert_close(reference_varlen_attention(q, k, v, cu), expect, FP32_TOL)
