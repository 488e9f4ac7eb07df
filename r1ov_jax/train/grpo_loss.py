"""GRPO-family losses and advantages as pure, jit-able functions (no model, no config).

Symbols: ρ_t = exp(logp_t − old_t) the token ratio; s_i = exp(mean_t (logp − old)) the sequence ratio (GSPO);
A_i the group advantage; ε / ε_high the lower / upper clip range (DAPO "clip-higher"); β the KL weight.

    per-token loss  ℓ_t = −w_t · min(ρ_t A_i, clip(ρ_t, 1 − ε, 1 + ε_high) A_i) + β KL_t
    loss_agg  "seq-mean-token-mean"      mean_i [ Σ_t m ℓ / Σ_t m ]             (GRPO paper, TRL default)
              "token-mean"               Σ_{i,t} m ℓ / Σ_{i,t} m                (DAPO)
              "seq-mean-token-sum-norm"  Σ_{i,t} m ℓ / (B · L), L = max_completion_len   (Dr. GRPO)

w_t are optional truncated importance weights min(exp(old_trainer − logp_sampler), C) (off by default).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

LOSS_AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
RATIO_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")
ADVANTAGE_SCALES = ("std", "none")


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """The ``grpo_loss`` keyword options (hashable: a static argument of the jitted update)."""

    epsilon_high: float | None = None
    loss_agg: str = "seq-mean-token-mean"
    ratio_level: str = "token"
    kl_estimator: str = "k3"
    max_completion_len: int | None = None
    tis_cap: float | None = None  # C of the truncated importance weights; None = off

    def loss_kwargs(self) -> dict:
        return dict(
            epsilon_high=self.epsilon_high,
            loss_agg=self.loss_agg,
            ratio_level=self.ratio_level,
            kl_estimator=self.kl_estimator,
            max_completion_len=self.max_completion_len,
        )


def group_advantages(rewards: jax.Array, group_size: int, eps: float = 1e-4, scale: str = "std") -> jax.Array:
    """Advantages within contiguous groups of ``group_size`` rows.

    ``scale="std"``: (r − mean_g) / (std_g + eps), torch-style unbiased std as TRL computes it (GRPO, DAPO, GSPO);
    ``scale="none"``: r − mean_g (Dr. GRPO: dividing by the std up-weights groups that are nearly all tied).
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"group_advantages: scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    r = rewards.reshape(-1, group_size)
    centred = r - r.mean(-1, keepdims=True)
    if scale == "none":
        return centred.reshape(-1)
    std = jnp.std(r, axis=-1, keepdims=True, ddof=1) if group_size > 1 else jnp.zeros_like(centred[:, :1])
    return (centred / (std + eps)).reshape(-1)


def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Per-token k3 estimate of KL(policy || reference): ``exp(ref − logp) − (ref − logp) − 1`` (≥ 0)."""
    diff = ref_logp - logp
    return jnp.exp(diff) - diff - 1.0


def token_kl(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token KL(policy || reference) estimates (Schulman's k1, k2, k3) from sampled-token log-probs."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k2":
        return 0.5 * jnp.square(logp - ref_logp)
    if estimator == "k3":
        return k3_kl(logp, ref_logp)
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x`` over the tokens where ``mask`` is set (0 when none is)."""
    mask = mask.astype(jnp.float32)
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def log_ratios(logp, old_logp, mask, ratio_level: str = "token") -> jax.Array:
    """log ρ ``[B, T]``. ``"sequence"`` (GSPO): every token carries log s_i = mean_t (logp − old) in value, with
    the gradient of log s_{i,t} = sg(log s_i) + logp_t − sg(logp_t), so ∇ s_{i,t} = s_i ∇ logp_t (GSPO eq. 11)."""
    if ratio_level == "token":
        return logp - old_logp
    if ratio_level == "sequence":
        m = mask.astype(jnp.float32)
        seq = ((logp - old_logp) * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
        return jax.lax.stop_gradient(seq)[:, None] + logp - jax.lax.stop_gradient(logp)
    raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")


def aggregate(per_token, mask, loss_agg: str = "seq-mean-token-mean", max_completion_len: int | None = None):
    """Scalar loss from per-token terms (see the module docstring). Sequence means skip rows with no tokens."""
    m = mask.astype(jnp.float32)
    summed = per_token * m
    if loss_agg == "seq-mean-token-mean":
        per_seq = summed.sum(-1) / jnp.maximum(m.sum(-1), 1.0)
        has_tokens = (m.sum(-1) > 0).astype(jnp.float32)
        return (per_seq * has_tokens).sum() / jnp.maximum(has_tokens.sum(), 1.0)
    if loss_agg == "token-mean":
        return summed.sum() / jnp.maximum(m.sum(), 1.0)
    if loss_agg == "seq-mean-token-sum-norm":
        length = mask.shape[1] if max_completion_len is None else max_completion_len
        return summed.sum() / (mask.shape[0] * length)
    raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")


def grpo_loss(
    logp,
    old_logp,
    ref_logp,
    advantages,
    mask,
    beta: float,
    epsilon: float,
    *,
    epsilon_high: float | None = None,
    loss_agg: str = "seq-mean-token-mean",
    ratio_level: str = "token",
    kl_estimator: str = "k3",
    max_completion_len: int | None = None,
    is_weights=None,
) -> jax.Array:
    """GRPO-family objective (scalar, to minimize).

    Args:
      logp, old_logp, ref_logp, mask: ``[batch, completion_len]`` (mask 1 on real completion tokens).
        ``ref_logp`` may be None when ``beta == 0`` (no reference pass at all).
      advantages: ``[batch]``.
      epsilon / epsilon_high: clip(ρ, 1 − epsilon, 1 + epsilon_high); epsilon_high None = epsilon.
      loss_agg, ratio_level, kl_estimator, max_completion_len: see the module docstring.
      is_weights: optional per-token importance weights ``[batch, completion_len]`` (treated as constants).
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = jnp.exp(log_ratios(logp, old_logp, mask, ratio_level))
    a = advantages[:, None]
    surrogate = jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - epsilon, 1.0 + eps_high) * a)
    if is_weights is not None:
        surrogate = surrogate * jax.lax.stop_gradient(is_weights)
    per_token = -surrogate
    if not _is_zero(beta):
        if ref_logp is None:
            raise ValueError("grpo_loss: beta != 0 needs ref_logp")
        per_token = per_token + beta * token_kl(logp, ref_logp, kl_estimator)
    return aggregate(per_token, mask, loss_agg, max_completion_len)


def clip_fraction(logp, old_logp, mask, epsilon, epsilon_high=None, ratio_level="token") -> jax.Array:
    """Share of completion tokens whose ratio lies outside [1 − ε, 1 + ε_high]."""
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = jnp.exp(log_ratios(logp, old_logp, mask, ratio_level))
    return masked_mean(((ratio < 1 - epsilon) | (ratio > 1 + eps_high)).astype(jnp.float32), mask)


def truncated_is_weights(old_logp_trainer, sampler_logp, cap: float) -> jax.Array:
    """min(exp(old_trainer − logp_sampler), C): corrects for the sampler's numerics differing from the trainer's
    (truncated importance sampling, Yao et al. 2025)."""
    return jnp.minimum(jnp.exp(old_logp_trainer - sampler_logp), cap)


def overlong_penalty(lengths, max_len: int, buffer: int, factor: float = 1.0) -> np.ndarray:
    """DAPO's soft overlong punishment (eq. 13): 0 up to L_max − L_cache tokens, then falling linearly to
    −factor at L_max (``buffer`` = L_cache). float32 ``[n]``; all zeros when ``buffer`` is 0."""
    lengths = np.asarray(lengths, np.float64)
    if buffer <= 0:
        return np.zeros(lengths.shape, np.float32)
    exceed = lengths - (max_len - buffer)
    return np.clip(-exceed / buffer, -1.0, 0.0).astype(np.float32) * np.float32(factor)


def _is_zero(beta) -> bool:
    return isinstance(beta, (int, float, np.floating, np.integer)) and float(beta) == 0.0
