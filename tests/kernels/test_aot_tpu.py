"""Every Mosaic (TPU) kernel compiled ahead of time for v5e and v5p on this CPU host, no TPU needed.

``jax.experimental.topologies`` (libtpu) gives real TPU device objects of a deviceless topology; ``jit(...)
.lower(...).compile()`` on them runs the full XLA:TPU pipeline including the Mosaic compiler, so a kernel
that Mosaic rejects (tiling, layouts, unsupported ops) fails here, not on the first TPU VM. The kernels pick
flavour and interpret mode from the default device (``common.target_platform``), which is why every
compile runs under ``jax.default_device(tpu_device)``; each test also asserts the compiled HLO holds the
Mosaic custom calls, so a silent fallback to XLA or to the interpreter cannot pass. Numerics are the
interpret-mode tests' job (and ``test_compiled.py`` on a real TPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip(
    "libtpu", reason="deviceless TPU compilation needs libtpu (pip install -e '.[tpu]')", exc_type=ImportError
)

from flax import nnx  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402
from r1ov_kernels.decode_attention import decode_attention  # noqa: E402
from r1ov_kernels.flash_attention import flash_attention  # noqa: E402
from r1ov_kernels.varlen_attention import varlen_attention  # noqa: E402

S = jax.ShapeDtypeStruct
MOSAIC = 'custom_call_target="tpu_custom_call"'

# name -> get_topology_desc arguments (one host of 4 chips; the first device is all a kernel compile needs)
TOPOLOGIES = {
    "v5e": dict(topology_name="v5e:2x2", chip_config_name="default"),
    "v5p": dict(topology_name="v5p:2x2x1", chip_config_name="megacore"),
}


@pytest.fixture(scope="module", params=sorted(TOPOLOGIES))
def tpu(request):
    """The first TPU device of a deviceless topology of the requested generation."""
    try:
        topo = topologies.get_topology_desc(
            platform="tpu", chips_per_host_bounds=(2, 2, 1), num_slices=1, **TOPOLOGIES[request.param]
        )
    except Exception as e:  # noqa: BLE001 - libtpu present but unable to describe this topology
        pytest.skip(f"libtpu cannot build a deviceless {request.param} topology: {e}")
    return topo.devices[0]


def compile_tpu(device, fn, *specs) -> str:
    """Compiled HLO text of ``fn`` for ``device``; the kernels see it as the default device.

    Under the strictest matmul-precision setting: in-kernel dots must not inherit it (Mosaic rejects bf16
    operands at fp32 contract precision), whatever the caller's ``jax_default_matmul_precision``.
    """
    sharding = SingleDeviceSharding(device)
    with jax.default_device(device), jax.default_matmul_precision("highest"):
        compiled = jax.jit(fn, in_shardings=sharding, out_shardings=sharding).lower(*specs).compile()
    return compiled.as_text()


def assert_mosaic(hlo: str, n: int):
    assert hlo.count(MOSAIC) == n, f"expected {n} Mosaic kernels, found {hlo.count(MOSAIC)}"


def grad_of(fn, argnums=(0, 1, 2)):
    return jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32)), argnums=argnums)


def test_kernels_target_the_default_device(tpu):
    from r1ov_kernels import common

    with jax.default_device(tpu):
        assert common.target_platform() == "tpu"
        assert common.kernel_backend() == "tpu" and not common.use_interpret(None)
    assert common.use_interpret(None) == (jax.default_backend() == "cpu")


# d, tq, tk, causal, dtype: packed segment ids and GQA 2 everywhere; tq, tk off the 256 tile (padding) and
# above it (a multi-block grid with skipped blocks); tq < tk is a chunked prefill.
FLASH = [
    (64, 300, 300, True, jnp.bfloat16),
    (80, 300, 300, True, jnp.bfloat16),  # the Qwen2.5-VL vision head dim
    (128, 300, 300, True, jnp.bfloat16),
    (80, 264, 264, False, jnp.float32),  # vision-like: bidirectional windows, fp32 (HIGHEST-precision dots)
    (128, 40, 520, True, jnp.float32),
]


@pytest.mark.parametrize("case", FLASH, ids=lambda c: f"d{c[0]}-{c[1]}x{c[2]}-causal{c[3]}-{c[4].__name__}")
def test_flash_forward_and_backward_compile(tpu, case):
    d, tq, tk, causal, dtype = case
    b, hq, hkv = 2, 4, 2
    specs = (S((b, tq, hq, d), dtype), S((b, tk, hkv, d), dtype), S((b, tk, hkv, d), dtype))
    ids = (S((b, tq), jnp.int32), S((b, tk), jnp.int32))

    def fn(q, k, v, q_seg, kv_seg):
        return flash_attention(q, k, v, q_seg, kv_seg, causal=causal)

    assert_mosaic(compile_tpu(tpu, fn, *specs, *ids), 1)
    assert_mosaic(compile_tpu(tpu, grad_of(fn), *specs, *ids), 3)  # fwd, dq, dk/dv


def test_flash_kernels_declare_their_flops_to_the_cost_model(tpu):
    """A pallas_call counts 0 FLOPs in XLA's cost analysis unless it declares a CostEstimate: the kernels
    declare the dense (causal-halved) count, so `r1ov preflight` FLOPs and step-time estimates include
    attention. tq, tk on the 256 tile: the padded problem is the unpadded one."""
    b, hq, hkv, t, d = 2, 4, 2, 512, 128
    specs = (S((b, t, hq, d), jnp.bfloat16), S((b, t, hkv, d), jnp.bfloat16), S((b, t, hkv, d), jnp.bfloat16))
    ids = (S((b, t), jnp.int32), S((b, t), jnp.int32))
    logits = b * hq * t * t // 2  # causal

    def fn(q, k, v, q_seg, kv_seg):
        return flash_attention(q, k, v, q_seg, kv_seg, causal=True)

    def flops(f):
        sharding = SingleDeviceSharding(tpu)
        with jax.default_device(tpu):
            ca = jax.jit(f, in_shardings=sharding).lower(*specs, *ids).compile().cost_analysis()
        return float((ca[0] if isinstance(ca, (list, tuple)) else ca)["flops"])

    fwd = flops(fn)
    assert 2 * 2 * logits * d <= fwd <= 1.1 * 2 * 2 * logits * d  # + XLA's own ops around the kernel
    both = flops(grad_of(fn))
    assert 2 * (2 + 3 + 4) * logits * d <= both <= 1.1 * 2 * (2 + 3 + 4) * logits * d  # fwd, dq, dk/dv


def test_max_seqlen_shrinks_the_declared_flops(tpu):
    """With 64-token windows (max_seqlen) the kernels declare the tiles their shrunk grid visits: 3 of the 8
    key blocks of 256 per query block (and 3 of 8 query blocks per key block in dk/dv)."""
    b, hq, t, d = 1, 2, 2048, 80
    specs = (S((b, t, hq, d), jnp.bfloat16),) * 3
    seg = S((b, t), jnp.int32)

    def flops(f):
        sharding = SingleDeviceSharding(tpu)
        with jax.default_device(tpu):
            ca = jax.jit(f, in_shardings=sharding).lower(*specs, seg).compile().cost_analysis()
        return float((ca[0] if isinstance(ca, (list, tuple)) else ca)["flops"])

    def fn(bound):
        return lambda q, k, v, s: flash_attention(q, k, v, s, s, max_seqlen=bound)

    dense = b * hq * t * t
    windowed = b * hq * t * 3 * 256
    for f, matmuls in ((fn, 2), (lambda bound: grad_of(fn(bound), (0, 1, 2)), 2 + 3 + 4)):
        full, shrunk = flops(f(None)), flops(f(64))
        assert 2 * matmuls * dense * d <= full <= 1.1 * 2 * matmuls * dense * d
        assert 2 * matmuls * windowed * d <= shrunk <= 2 * matmuls * windowed * d + 0.1 * full


def test_varlen_forward_and_backward_compile(tpu):
    t, hq, hkv, d = 512, 4, 2, 80  # 64-patch windows with head dim 80, as in the vision tower

    def fn(q, k, v, cu):
        return varlen_attention(q, k, v, cu, max_seqlen=64)

    specs = (S((t, hq, d), jnp.bfloat16), S((t, hkv, d), jnp.bfloat16), S((t, hkv, d), jnp.bfloat16))
    cu = S((t // 64 + 1,), jnp.int32)
    assert_mosaic(compile_tpu(tpu, fn, *specs, cu), 1)
    assert_mosaic(compile_tpu(tpu, grad_of(fn), *specs, cu), 3)


# layout, tq, d, S: head-major is the model's cache; token-major d=128 with S a multiple of the tile is read
# in place ([b, S, hkv * d] lane blocks), d=80 / ragged S goes through a padded head-major copy.
DECODE = [
    ("heads_major", 1, 128, 2048),
    ("heads_major", 4, 80, 1000),  # a few speculative tokens, head dim and cache length off the tiles
    ("heads_major", 1, 64, 512),
    ("token_major", 1, 128, 2048),  # in place
    ("token_major", 1, 80, 1000),  # copied
]


@pytest.mark.parametrize("case", DECODE, ids=lambda c: f"{c[0]}-tq{c[1]}-d{c[2]}-S{c[3]}")
def test_decode_compiles(tpu, case):
    layout, tq, d, s_len = case
    b, hq, hkv = 2, 8, 2
    heads_major = layout == "heads_major"
    kv = (b, hkv, s_len, d) if heads_major else (b, s_len, hkv, d)

    def fn(q, k, v, lengths):
        q_pos = lengths[:, None] - tq + jnp.arange(tq, dtype=jnp.int32)[None]
        return decode_attention(
            q, k, v, q_positions=q_pos, lengths=lengths, causal=True, kv_heads_major=heads_major
        )

    specs = (S((b, tq, hq, d), jnp.bfloat16), S(kv, jnp.bfloat16), S(kv, jnp.bfloat16), S((b,), jnp.int32))
    assert_mosaic(compile_tpu(tpu, fn, *specs), 1)


# ----------------------------------------------------------------------------------------------------------
# The whole tiny model with attn_impl="pallas": every attention it issues goes through a Mosaic kernel.


@pytest.fixture(scope="module")
def tiny_model():
    from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny

    cfg = tiny().replace(attn_impl="pallas")
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    return cfg, model, graphdef, state


def _tiny_inputs(cfg, model, kind):
    if kind == "text":  # left padding
        return model.prepare_inputs(
            np.array([[0, 0, 5, 6, 7, 8, 9, 10]]), np.array([[0, 0, 1, 1, 1, 1, 1, 1]])
        )
    grid = np.array([[1, 8, 8]])  # one 112x112 image: 64 patches, 16 merged tokens, windows + full attention
    n_feats = int(grid.prod()) // cfg.vision.spatial_merge_size**2
    ids = [1, 2, cfg.vision_start_token_id] + [cfg.image_token_id] * n_feats + [cfg.vision_end_token_id, 3]
    pixels = np.zeros((int(grid.prod()), cfg.vision.patch_dim), np.float32)
    return model.prepare_inputs(np.array([ids]), None, pixels, grid)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_tiny_model_forward_compiles_with_pallas_attention(tpu, tiny_model, kind):
    cfg, model, graphdef, state = tiny_model
    inputs = _tiny_inputs(cfg, model, kind)
    specs = jax.tree.map(lambda x: S(np.shape(x), np.asarray(x).dtype), inputs)

    def forward(state, inputs):
        return nnx.merge(graphdef, state).forward(**inputs)

    hlo = compile_tpu(tpu, forward, state, specs)
    n_attn = cfg.text.num_hidden_layers + (cfg.vision.depth if kind == "image" else 0)
    assert_mosaic(hlo, n_attn)


# ----------------------------------------------------------------------------------------------------------
# A multi-chip mesh: GSPMD cannot partition a Mosaic call, so the model's attention runs the kernels under
# shard_map (batch over data/fsdp, heads over tensor). Forward + SFT gradients of the tiny model, 4 chips.


@pytest.mark.parametrize("mesh_shape", [(2, 1, 2), (1, 4, 1)])
def test_tiny_model_sft_gradients_compile_with_pallas_on_a_4_chip_mesh(mesh_shape):
    from r1ov_jax.preflight import abstract_model
    from r1ov_jax.sharding import activation_sharding, make_mesh, rules_for
    from r1ov_jax.sharding.mesh import batch_sharding
    from r1ov_jax.train.sft import sft_loss

    try:
        topo = topologies.get_topology_desc(
            platform="tpu", chips_per_host_bounds=(2, 2, 1), num_slices=1, **TOPOLOGIES["v5p"]
        )
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"libtpu cannot build a deviceless v5p topology: {e}")
    from r1ov_jax.models.qwen2_5_vl import tiny

    mesh = make_mesh(*mesh_shape, devices=list(topo.devices))
    with jax.default_device(topo.devices[0]):
        model = abstract_model(tiny().replace(attn_impl="pallas"), mesh)
        graphdef, state = nnx.split(model)
        b, t = 8, 24

        def sds(shape, dtype=jnp.int32):
            return S(shape, dtype, sharding=batch_sharding(mesh, len(shape), 1 if len(shape) == 3 else 0))

        batch = {
            "input_ids": sds((b, t)),
            "segment_ids": sds((b, t)),
            "loss_mask": sds((b, t), jnp.bool_),
            "positions": sds((3, b, t)),
        }

        def grads(state, batch):
            return jax.grad(lambda s: sft_loss(nnx.merge(graphdef, s), batch)[0])(state)

        with activation_sharding(mesh, rules_for(model.cfg, mesh)):
            hlo = jax.jit(grads).lower(state, batch).compile().as_text()
    # forward + backward kernels of each text layer (the flash backward is one or two calls per layer)
    assert hlo.count(MOSAIC) >= 2 * model.cfg.text.num_hidden_layers
