"""FLOPs: the analytic model count, and the compiled count with every loop iteration included (XLA's cost model
counts a ``while_loop`` body once)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from r1ov_jax.layers.scan import runs_of
from r1ov_jax.models.qwen2_5_vl.vision import scan_kinds
from r1ov_jax.preflight.compile import PhaseReport, Target, compile_phase
from r1ov_jax.preflight.shapes import ParamCounts


def _text_attn(cfg, rows: int, q: int, kv: float) -> float:
    """Forward attention FLOPs: QK^T and PV, 2·q·kv·(heads·head_dim) each, per layer and row."""
    t = cfg.text
    return 4.0 * rows * q * kv * t.num_attention_heads * t.head_dim * t.num_hidden_layers


def _vision_fwd(cfg, pc: ParamCounts, rows: int, patches: int, image_cap: int) -> float:
    """Vision tower forward FLOPs over ``rows`` × ``patches``: 2·N_v per patch, window attention over each
    window's patches ((window/patch)² of them) and the full-attention blocks over one image (≤ image_cap)."""
    if not patches:
        return 0.0
    v = cfg.vision
    window = v.geometry().window_patches
    full_layers = len(v.fullatt_block_indexes)
    keys = (v.depth - full_layers) * min(window, patches) + full_layers * min(image_cap, patches)
    return 2.0 * pc.vision * rows * patches + 4.0 * rows * patches * keys * v.hidden_size


def analytic_flops(kind: str, cfg, pc: ParamCounts, **shape) -> float:
    """Model FLOPs (global, useful work) of one call.

    sft:      6·(N_text + N_head)·B·S + 3·causal attention (2·S²·H·d per layer and row) + 3·vision forward
    rollout:  prefill 2·N·b·L + causal attention + vision forward; decode 2·N per generated token
              (b·G·T of them) + attention against the cache (4·(L + t)·H·d per token and layer)
    logprobs: 2·N_text·bG·(L+T) + 2·N_head·bG·T + causal attention over L+T + vision forward (once per prompt)
    update:   3 × logprobs (forward + backward)
    """
    cap = shape.get("image_cap", 0)
    if kind == "sft":
        b, s, p = shape["batch"], shape["seq_len"], shape["patches"]
        fwd = (
            2.0 * (pc.text + pc.head) * b * s + _text_attn(cfg, b, s, s / 2) + _vision_fwd(cfg, pc, b, p, cap)
        )
        return 3.0 * fwd
    b, length, p, g, t = (
        shape["batch"],
        shape["length"],
        shape["patches"],
        shape["group"],
        shape["new_tokens"],
    )
    vision = _vision_fwd(cfg, pc, b, p, cap)
    if kind == "rollout":
        prefill = 2.0 * (pc.text + pc.head) * b * length + _text_attn(cfg, b, length, length / 2) + vision
        decode = 2.0 * (pc.text + pc.head) * b * g * t + _text_attn(cfg, b * g, t, length + t / 2)
        return prefill + decode
    total = length + t
    fwd = 2.0 * pc.text * b * g * total + 2.0 * pc.head * b * g * t + _text_attn(cfg, b * g, total, total / 2)
    fwd += vision
    if kind == "logprobs":
        return fwd
    if kind == "update":
        return 3.0 * fwd
    raise ValueError(kind)


# Options of the FLOP-counting compiles. On large meshes XLA on TPU rewrites an FSDP all-gather (or
# reduce-scatter) + matmul as a windowed-einsum loop, and the cost model counts a loop body once: on v5p-64 an
# FSDP [8192, 3584] x [3584, 18944] matmul counts 0.13x its FLOPs (v5p-8 and v5e-256: 1.0x). The memory figures
# come from the default compile, the program a run executes.
COUNT_OPTIONS = {
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}


def count_flops(rep: PhaseReport, lower_fn, models, target: Target, towers=("text", "vision")) -> None:
    """Replaces ``rep``'s FLOP and step-time counts with ones that include every loop iteration (in place).

    XLA's cost model counts a ``while_loop`` body once. The loops a phase runs: XLA's windowed einsums (turned
    off by ``COUNT_OPTIONS``), the chunked LM-head loss (unrolled: ``head_unroll``) and, with
    ``model.scan_layers``, the towers' scans: the text blocks; the vision steps (one period of window / full
    blocks) and, inside a step, the scan over a run of window blocks. Compiling again with one of these scans
    unrolled twice puts its body in the program 1 + (length mod 2) more times (an odd length leaves one
    iteration outside the loop), which gives one body (forward, remat recompute and backward, as compiled);
    the iterations the base count misses are added. ``models``: the modules the phase traces (their runtime
    options are varied); ``towers``: the scans the phase runs. The sampler's decode loop is scaled by
    `preflight_grpo`.
    """
    if not rep.fits:
        return
    if not target.loop_flops:  # what XLA counted would be a fraction of the step: report none
        rep.flops_per_chip, rep.est_step_seconds = 0.0, None
        rep.add_note("FLOPs and time not counted (--memory-only)")
        return
    mc = target.mcfg

    def counting_compile(unroll):
        for m in models:
            m.set_runtime(scan_unroll=unroll, head_unroll=True)
        try:
            r, _ = compile_phase(rep.name, lower_fn, default_device=target.default_device,
                                 compiler_options=COUNT_OPTIONS)  # fmt: skip
        finally:
            for m in models:
                m.set_runtime(scan_unroll=(1, 1, 1), head_unroll=False)
        rep.compile_seconds += r.compile_seconds
        return r

    base = counting_compile((1, 1, 1))
    if not base.fits:
        rep.add_note(
            "FLOPs as XLA counted the default program (loops once): the counting compile did not fit"
        )
        return
    flops, seconds, parts = base.flops_per_chip, base.est_step_seconds, []
    if mc.scan_layers:
        for name, unroll, length, missed in _scans(mc, towers):
            twice = counting_compile(unroll)
            if not twice.fits:
                parts.append(f"{name} not counted (the x2-unrolled program did not fit)")
                continue
            copies = 1 + length % 2
            body = max(twice.flops_per_chip - base.flops_per_chip, 0.0) / copies
            flops += missed * body
            if seconds is not None and twice.est_step_seconds is not None:
                seconds += missed * max(twice.est_step_seconds - base.est_step_seconds, 0.0) / copies
            parts.append(f"{name} {body:.3g} x {missed} more")
    note = f"FLOPs counted with windowed einsums off and the LM-head loop unrolled ({base.flops_per_chip:.3g}"
    note += f" FLOP/chip; the default program counts {rep.flops_per_chip:.3g})"
    if parts:
        note += f"; per scanned body: {', '.join(parts)}"
    rep.flops_per_chip, rep.est_step_seconds = flops, seconds
    rep.add_note(note)


def _scans(mc, towers) -> list[tuple[str, tuple, int, int]]:
    """(name, scan_unroll that doubles it, loop length, loop bodies the base count misses) per scan.

    Vision: ``steps`` iterations of one period; inside each, runs of one kind of block, those of length > 1
    scanned. The base count holds the step body once and each run's body once; the inner runs' bodies are
    taken as equal (exact for Qwen2.5-VL: one run of 7 window blocks per step)."""
    out = []
    if "text" in towers:
        n = mc.text.num_hidden_layers
        out.append(("text block", (2, 1, 1), n, n - 1))
    if "vision" in towers:
        kinds = scan_kinds(mc.vision)
        steps = mc.vision.depth // len(kinds)
        out.append(("vision step", (1, 2, 1), steps, steps - 1))
        inner = [length for _, length in runs_of(kinds) if length > 1]
        if inner:  # per step: (length - 1) bodies of each run missed; a step is counted `steps` times by now
            out.append(("vision window block", (1, 1, 2), inner[0], steps * sum(n - 1 for n in inner)))
    return [scan for scan in out if scan[3]]  # a loop of one iteration is counted already


def rollout_flops(compiled_flops: float, decode_body: float, new_tokens: int) -> float:
    """The cost model counts a ``while_loop`` body once: add the other ``new_tokens - 1`` decode steps."""
    return compiled_flops + decode_body * max(new_tokens - 1, 0)


def pallas_flops_probe(device) -> dict:
    """What the cost model counts for a Pallas (Mosaic) kernel: compiled FLOPs of a 256³ matmul as an XLA dot,
    as a pallas_call without a cost estimate, and with ``pl.CostEstimate`` (expected 2·256³ = 33.6 M)."""
    from jax.experimental import pallas as pl

    n = 256
    x = jax.ShapeDtypeStruct((n, n), jnp.float32)

    def kernel(a_ref, b_ref, o_ref):
        o_ref[...] = jnp.dot(a_ref[...], b_ref[...], preferred_element_type=jnp.float32)

    def pallas(estimate):
        cost = (
            pl.CostEstimate(flops=2 * n**3, transcendentals=0, bytes_accessed=3 * 4 * n * n)
            if estimate
            else None
        )
        return lambda a, b: pl.pallas_call(kernel, out_shape=x, cost_estimate=cost)(a, b)

    out = {}
    with jax.default_device(device):
        for name, fn in (
            ("xla_dot", jnp.dot),
            ("pallas", pallas(False)),
            ("pallas_cost_estimate", pallas(True)),
        ):
            sharding = jax.sharding.SingleDeviceSharding(device)
            arg = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
            ca = jax.jit(fn).lower(arg, arg).compile().cost_analysis()
            ca = ca[0] if isinstance(ca, (list, tuple)) else ca
            out[name] = float(ca.get("flops", 0.0))
    return out
