"""Rematerialization policies for the decoder and vision blocks (``model.remat`` in the configs).

    none           keep every activation (fastest, most memory)
    full           keep only each block's input; recompute the block in the backward pass (least memory)
    dots           keep matmul outputs, recompute the cheap elementwise work
    dots_no_batch  keep matmul outputs without batch dimensions (the weight projections, not attention scores)
    offload        like dots_no_batch, but move the kept activations to pinned host memory (TPU/GPU only)

``True`` / ``False`` are accepted as ``"full"`` / ``"none"``.
"""

from __future__ import annotations

import jax
from flax import nnx

from r1ov_jax.errors import InvalidInputError

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "offload")


def normalize(remat: bool | str) -> str:
    name = {True: "full", False: "none"}.get(remat, remat) if isinstance(remat, bool) else remat
    if name not in REMAT_POLICIES:
        raise InvalidInputError(
            f"model.remat {remat!r} unknown; choose from {REMAT_POLICIES} (or true/false)"
        )
    return name


def _policy(name: str):
    cp = jax.checkpoint_policies
    if name == "full":
        return None  # save nothing but the inputs
    if name == "dots":
        return cp.checkpoint_dots
    if name == "dots_no_batch":
        return cp.dots_with_no_batch_dims_saveable
    if name == "offload":
        return cp.offload_dot_with_no_batch_dims(offload_src="device", offload_dst="pinned_host")
    raise AssertionError(name)


def remat(fn, name: str):
    """``fn`` (an unbound block ``__call__``) wrapped in ``nnx.remat`` with the named policy."""
    if name == "none":
        return fn
    return nnx.remat(fn, policy=_policy(name))


def checkpoint_fn(fn, name: str):
    """A pure function (e.g. a ``lax.scan`` step) wrapped in ``jax.checkpoint`` with the named policy.

    ``prevent_cse=False``: inside a scan the loop already keeps XLA from merging the recomputation with the
    forward, and the CSE barriers would only cost speed (the JAX docs' advice for scanned remat)."""
    if name == "none":
        return fn
    return jax.checkpoint(fn, policy=_policy(name), prevent_cse=False)
