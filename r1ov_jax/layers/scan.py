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


def stacked_state(blocks) -> tuple[nnx.GraphDef, nnx.State]:
    """(block 0's graphdef, every block's state stacked on axis 0); ValueError if the blocks' states differ in
    structure or shapes (e.g. adapters on some layers only), which a scan cannot express.

    The graphdefs themselves are not compared: qwix records each module's path in it (``qwix_path``). Block 0's
    stands for all, which is exact because one ``model.lora`` spec (one rank, alpha and base qtype) adapts
    every targeted layer alike, and a layer it skips has a different state structure."""
    graphdef, first = nnx.split(blocks[0])
    states, sig = [first], _signature(first)
    for i, block in enumerate(blocks[1:], 1):
        _, s = nnx.split(block)
        if _signature(s) != sig:
            raise ValueError(
                f"model.scan_layers: block {i} differs in structure from block 0 (e.g. LoRA targets that adapt "
                "some layers only); set model.scan_layers=False"
            )
        states.append(s)
    stacked = jax.tree.map(_stack, *states)

    def pin(var):  # keep the per-layer sharding of every weight, the layer axis unsharded
        axes = var.get_metadata().get("logical_axes")
        if axes is not None and len(axes) + 1 == var.value.ndim:
            return var.replace(constrain(var.value, (None, *axes)))
        return var

    return graphdef, jax.tree.map(pin, stacked, is_leaf=lambda x: isinstance(x, nnx.Variable))


def scan_blocks(blocks, body: Callable, x, per_block=None, *, remat: str = "none", unroll: int = 1):
    """``x = body(block_i, x, per_block[i])`` for every block, as one scan.

    ``body`` must not change the blocks' state (a forward pass); ``per_block`` is a pytree of arrays with a
    leading axis of ``len(blocks)`` (or None); ``remat`` names the policy applied to each step
    (:mod:`r1ov_jax.layers.remat`); ``unroll`` block bodies per loop iteration (``lax.scan``'s ``unroll``).
    """
    graphdef, stacked = stacked_state(blocks)

    def step(carry, xs):
        state, extra = xs
        return body(nnx.merge(graphdef, state), carry, extra), None

    out, _ = jax.lax.scan(checkpoint_fn(step, remat), x, (stacked, per_block), unroll=unroll)
    return out
