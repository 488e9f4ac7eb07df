"""Run a list of identical blocks as one ``jax.lax.scan`` (``model.scan_layers``).

The parameters stay one module per block (HF names, checkpoints and LoRA adapters are per layer); at call time
the blocks' states are stacked along a new leading axis and scanned over, so XLA compiles one block body
instead of ``depth`` copies. That is what makes a 7B pod program compile in minutes instead of most of an hour;
the price is one stacked copy of the blocks' weights (sharded like the weights themselves) while the step runs.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from r1ov_jax.layers.remat import checkpoint_fn
from r1ov_jax.sharding.rules import constrain


def _stack(*values):
    return jnp.stack(values)


def _signature(state) -> tuple:
    return jax.tree.structure(state), [(x.shape, x.dtype) for x in jax.tree.leaves(state)]


def stacked_state(blocks, period: int = 1) -> tuple[list[nnx.GraphDef], nnx.State]:
    """(the graphdefs of blocks ``0..period-1``, every block's state stacked as ``[n / period, period, ...]``, or
    ``[n, ...]`` for period 1); ValueError if the blocks' states differ in structure or shapes (e.g. adapters on
    some layers only), which a scan cannot express.

    The graphdefs themselves are not compared: qwix records each module's path in it (``qwix_path``). Block j's
    stands for every block at position j of the period, which is exact because one ``model.lora`` spec (one
    rank, alpha and base qtype) adapts every targeted layer alike, and a layer it skips has a different state
    structure; static attributes (a vision block's attention kind) repeat with the period by the caller's
    choice of period."""
    if len(blocks) % period:
        raise ValueError(f"scan period {period} does not divide {len(blocks)} blocks")
    graphdefs, states = [], []
    sig = None
    for i, block in enumerate(blocks):
        graphdef, s = nnx.split(block)
        if i < period:
            graphdefs.append(graphdef)
        if sig is None:
            sig = _signature(s)
        elif _signature(s) != sig:
            raise ValueError(
                f"model.scan_layers: block {i} differs in structure from block 0 (e.g. LoRA targets that adapt "
                "some layers only); set model.scan_layers=False"
            )
        states.append(s)
    stacked = jax.tree.map(_stack, *states)
    lead = (None,) if period == 1 else (None, None)
    if period > 1:
        stacked = jax.tree.map(lambda a: a.reshape(len(blocks) // period, period, *a.shape[1:]), stacked)

    def pin(var):  # keep the per-layer sharding of every weight, the layer axes unsharded
        axes = var.get_metadata().get("logical_axes")
        if axes is not None and len(axes) + len(lead) == var.value.ndim:
            return var.replace(constrain(var.value, (*lead, *axes)))
        return var

    return graphdefs, jax.tree.map(pin, stacked, is_leaf=lambda x: isinstance(x, nnx.Variable))


def scan_blocks(
    blocks, body: Callable, x, per_block=None, *, remat: str = "none", unroll: int = 1, period: int = 1
):
    """``x = body(block_i, x, per_block[i])`` for every block, as one scan.

    ``body`` must not change the blocks' state (a forward pass); ``per_block`` is a pytree of arrays with a
    leading axis of ``len(blocks)`` (or None); ``remat`` names the policy applied to each block
    (:mod:`r1ov_jax.layers.remat`). ``period`` > 1: each scan step runs ``period`` consecutive blocks, each its
    own graphdef, so blocks whose static attributes repeat with that period (the vision tower's window and
    full-attention blocks) keep them; the loop then has ``len(blocks) / period`` iterations. ``unroll``: loop
    iterations per compiled loop body (``lax.scan``'s ``unroll``).
    """
    graphdefs, stacked = stacked_state(blocks, period)
    if period == 1:

        def step(carry, xs):
            state, extra = xs
            return body(nnx.merge(graphdefs[0], state), carry, extra), None

        step = checkpoint_fn(step, remat)
    else:
        n = len(blocks) // period
        if per_block is not None:
            per_block = jax.tree.map(lambda a: a.reshape(n, period, *a.shape[1:]), per_block)

        def inner(j):
            def run(state, carry, extra):  # slices inside the checkpoint: its residual is the scanned state
                pick = lambda a: a[j]
                block = nnx.merge(graphdefs[j], jax.tree.map(pick, state))
                return body(block, carry, None if extra is None else jax.tree.map(pick, extra))

            return checkpoint_fn(run, remat)

        runs = [inner(j) for j in range(period)]

        def step(carry, xs):
            state, extra = xs
            for run in runs:
                carry = run(state, carry, extra)
            return carry, None

    out, _ = jax.lax.scan(step, x, (stacked, per_block), unroll=unroll)
    return out
