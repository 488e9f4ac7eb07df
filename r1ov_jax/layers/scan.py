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


def _signature(state) -> tuple:
    return jax.tree.structure(state), [(x.shape, x.dtype) for x in jax.tree.leaves(state)]


def split_blocks(blocks) -> tuple[list[nnx.GraphDef], list[nnx.State]]:
    """Every block's (graphdef, state); ValueError if the states differ in structure or shapes (e.g. adapters on
    some layers only), which a scan cannot express.

    The graphdefs themselves are not compared: qwix records each module's path in it (``qwix_path``). The
    graphdef of the first block of a run stands for the run, which is exact because one ``model.lora`` spec
    (one rank, alpha and base qtype) adapts every targeted layer alike, and a layer it skips has a different
    state structure; static attributes (a vision block's attention kind) are the caller's ``kinds``."""
    graphdefs, states, sig = [], [], None
    for i, block in enumerate(blocks):
        graphdef, state = nnx.split(block)
        if sig is None:
            sig = _signature(state)
        elif _signature(state) != sig:
            raise ValueError(
                f"model.scan_layers: block {i} differs in structure from block 0 (e.g. LoRA targets that adapt "
                "some layers only); set model.scan_layers=False"
            )
        graphdefs.append(graphdef)
        states.append(state)
    return graphdefs, states


def stack_states(states, lead: tuple[int, ...]) -> nnx.State:
    """The states stacked and shaped ``[*lead, ...]``, each weight keeping its per-layer sharding (the layer
    axes unsharded)."""
    stacked = jax.tree.map(lambda *v: jnp.stack(v).reshape(*lead, *v[0].shape), *states)

    def pin(var):
        axes = var.get_metadata().get("logical_axes")
        if axes is not None and len(axes) + len(lead) == var.value.ndim:
            return var.replace(constrain(var.value, (*([None] * len(lead)), *axes)))
        return var

    return jax.tree.map(pin, stacked, is_leaf=lambda x: isinstance(x, nnx.Variable))


def runs_of(kinds) -> list[tuple[int, int]]:
    """(start, length) of each run of equal consecutive kinds."""
    runs = []
    for j, kind in enumerate(kinds):
        if runs and kinds[runs[-1][0]] == kind:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((j, 1))
    return runs


def scan_blocks(
    blocks,
    body: Callable,
    x,
    per_block=None,
    *,
    remat: str = "none",
    unroll: int = 1,
    kinds: tuple | None = None,
    inner_unroll: int = 1,
):
    """``x = body(block_i, x, per_block[i])`` for every block, as one scan.

    ``body`` must not change the blocks' state (a forward pass); ``per_block`` is a pytree of arrays with a
    leading axis of ``len(blocks)`` (or None); ``remat`` names the policy applied to each block
    (:mod:`r1ov_jax.layers.remat`); ``unroll``: loop iterations per compiled loop body (``lax.scan``'s).

    ``kinds``: for blocks whose static attributes differ in a repeating pattern (the vision tower's window and
    full-attention blocks), one hashable per position of the period (its length must divide the depth). Each
    scan step then runs one period; a run of equal consecutive kinds inside it is an inner scan (unrolled
    ``inner_unroll`` times) with the graphdef of its first block, so XLA compiles one body per kind, not one
    per position.
    """
    graphdefs, states = split_blocks(blocks)
    n = len(blocks)
    if kinds is None or len(kinds) == 1:
        graphdef = graphdefs[0]

        def step(carry, xs):
            state, extra = xs
            return body(nnx.merge(graphdef, state), carry, extra), None

        out, _ = jax.lax.scan(
            checkpoint_fn(step, remat), x, (stack_states(states, (n,)), per_block), unroll=unroll
        )
        return out
    period = len(kinds)
    if n % period:
        raise ValueError(f"scan period {period} does not divide {n} blocks")
    steps, runs = n // period, runs_of(kinds)
    if per_block is not None:
        per_block = jax.tree.map(lambda a: a.reshape(steps, period, *a.shape[1:]), per_block)
    run_states, run_extra, runners = [], [], []
    for start, length in runs:
        idx = [g * period + start + j for g in range(steps) for j in range(length)]
        run_states.append(stack_states([states[i] for i in idx], (steps, length)))
        run_extra.append(
            None if per_block is None else jax.tree.map(lambda a: a[:, start : start + length], per_block)
        )
        runners.append(_runner(graphdefs[start], body, length, remat, inner_unroll))

    def step(carry, xs):
        for run, state, extra in zip(runners, *xs):
            carry = run(state, carry, extra)
        return carry, None

    out, _ = jax.lax.scan(step, x, (run_states, run_extra), unroll=unroll)
    return out


def _runner(graphdef, body, length: int, remat: str, inner_unroll: int):
    """One run of ``length`` blocks of one kind: ``(state [length, ...], carry, extra) -> carry``; every block
    checkpointed alone (its residual is its input and the scanned state)."""
    first = lambda tree: None if tree is None else jax.tree.map(lambda a: a[0], tree)
    if length == 1:
        return checkpoint_fn(lambda state, c, e: body(nnx.merge(graphdef, first(state)), c, first(e)), remat)

    def one(carry, xs):
        state, extra = xs
        return body(nnx.merge(graphdef, state), carry, extra), None

    one = checkpoint_fn(one, remat)
    return lambda state, c, e: jax.lax.scan(one, c, (state, e), unroll=inner_unroll)[0]
