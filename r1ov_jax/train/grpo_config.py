"""The ``rl.grpo`` config block, its presets, and the resolved options a GRPO run uses.

Symbols (paper → config): G = ``num_generations``, β = ``beta``, ε = ``epsilon`` (ε_low in DAPO), ε_high =
``epsilon_high``, μ = ``num_iterations`` (policy updates per batch of rollouts), T = ``max_new_tokens`` (L_max in
DAPO), L_cache = ``overlong_buffer``, C = ``tis_cap``.

``preset`` fills every option left at None (and β / ε while they hold the plain-GRPO values 0.04 / 0.2, which
predate presets) as its paper does:

  preset    β     ε      ε_high  loss_agg                 ratio     advantages  dynamic sampling  overlong
  grpo      0.04  0.2    ε       seq-mean-token-mean      token     (r−μ)/σ     off               off
  dapo      0     0.2    0.28    token-mean               token     (r−μ)/σ     on                soft, L_cache = T/5
  dr_grpo   0     0.2    ε       seq-mean-token-sum-norm  token     r−μ         off               off
  gspo      0     3e-4   4e-4    seq-mean-token-mean      sequence  (r−μ)/σ     off               off

GRPO: Shao et al. 2024 (DeepSeekMath) as R1-Onevision ran it (β 0.04, k3 KL). DAPO: Yu et al. 2025 (arXiv
2503.14476; no KL, clip-higher, token-level loss, dynamic sampling, overlong reward shaping with L_cache = 4096 of
L_max = 20480). Dr. GRPO: Liu et al. 2025 (arXiv 2503.20783; no std scaling, constant normalizer, β = 0).
GSPO: Zheng et al. 2025 (arXiv 2507.18071; sequence ratio s_i, clip 3e-4 / 4e-4, no KL).
"""

from __future__ import annotations

import dataclasses
import logging

import ml_collections

from r1ov_jax.config_utils import ConfigError
from r1ov_jax.train.grpo_loss import ADVANTAGE_SCALES, KL_ESTIMATORS, LOSS_AGGS, RATIO_LEVELS, LossOptions

log = logging.getLogger(__name__)

GRPO_BETA, GRPO_EPSILON = 0.04, 0.2  # the plain-GRPO defaults of beta / epsilon (see the module docstring)
OVERLONG_AUTO = -1  # overlong_buffer = -1: T / 5, DAPO's 4096 / 20480
OLD_LOGP_SOURCES = ("trainer", "sampler")

PRESETS = {
    "grpo": dict(beta=GRPO_BETA, epsilon=GRPO_EPSILON, epsilon_high=None, loss_agg="seq-mean-token-mean",
                 ratio_level="token", kl_estimator="k3", advantage_scale="std", dynamic_sampling=False,
                 overlong_buffer=0, mask_truncated=False),
    "dapo": dict(beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_agg="token-mean", ratio_level="token",
                 kl_estimator="k3", advantage_scale="std", dynamic_sampling=True, overlong_buffer=OVERLONG_AUTO,
                 mask_truncated=False),
    "dr_grpo": dict(beta=0.0, epsilon=0.2, epsilon_high=None, loss_agg="seq-mean-token-sum-norm",
                    ratio_level="token", kl_estimator="k3", advantage_scale="none", dynamic_sampling=False,
                    overlong_buffer=0, mask_truncated=False),
    "gspo": dict(beta=0.0, epsilon=3e-4, epsilon_high=4e-4, loss_agg="seq-mean-token-mean",
                 ratio_level="sequence", kl_estimator="k3", advantage_scale="std", dynamic_sampling=False,
                 overlong_buffer=0, mask_truncated=False),
}  # fmt: skip
_PRESET_ONLY = ("epsilon_high", "loss_agg", "ratio_level", "kl_estimator", "advantage_scale",
                "dynamic_sampling", "overlong_buffer", "mask_truncated")  # fmt: skip


def default_grpo_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            preset="grpo",
            num_generations=8,
            beta=GRPO_BETA,
            epsilon=GRPO_EPSILON,
            num_iterations=1,
            num_minibatches=1,  # optimizer updates per iteration, each on 1/n of the prompt groups
            max_new_tokens=256,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            reward_weights=None,  # legacy spelling of rl.rewards (used when set)
            skip_zero_advantage=True,
            # None: the preset's value
            epsilon_high=None,
            loss_agg=None,
            ratio_level=None,
            kl_estimator=None,
            max_completion_len=None,  # Dr. GRPO's constant normalizer; None = max_new_tokens
            advantage_scale=None,
            dynamic_sampling=None,
            max_draws=4,  # dynamic sampling: prompt batches drawn per step at most
            overlong_buffer=None,  # L_cache (tokens); -1 = max_new_tokens // 5; 0 = off
            overlong_penalty=1.0,  # the penalty reached at max_new_tokens
            mask_truncated=None,  # drop completions that hit max_new_tokens without EOS from the loss
            old_logp="trainer",  # "trainer": recomputed by the policy before updating; "sampler": the sampler's
            tis_cap=None,  # C: weight tokens by min(exp(old_trainer - logp_sampler), C); None = off
        )
    )


@dataclasses.dataclass(frozen=True)
class GRPOOptions:
    """``rl.grpo`` with the preset applied and every value checked."""

    preset: str
    group: int
    beta: float
    epsilon: float
    num_iterations: int
    num_minibatches: int
    advantage_scale: str
    dynamic_sampling: bool
    max_draws: int
    overlong_buffer: int
    overlong_penalty: float
    mask_truncated: bool
    old_logp: str
    skip_zero_advantage: bool
    loss: LossOptions

    @property
    def needs_reference(self) -> bool:
        return self.beta != 0.0

    @property
    def on_policy(self) -> bool:
        """One update per rollout batch from the trainer's own log-probs: old = sg(logp), no extra pass."""
        return self.num_iterations == 1 and self.num_minibatches == 1 and self.old_logp == "trainer"

    @property
    def updates_per_step(self) -> int:
        return self.num_iterations * self.num_minibatches


def resolve_options(g: ml_collections.ConfigDict, prompt_batch_size: int | None = None) -> GRPOOptions:
    """The run's options from ``rl.grpo``; ConfigError naming the field for a bad value."""
    name = g.get("preset", "grpo") or "grpo"
    if name not in PRESETS:
        raise ConfigError(f"rl.grpo.preset must be one of {sorted(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    v = {k: (preset[k] if g.get(k) is None else g.get(k)) for k in _PRESET_ONLY}
    beta = float(preset["beta"] if g.beta in (None, GRPO_BETA) else g.beta)
    epsilon = float(preset["epsilon"] if g.epsilon in (None, GRPO_EPSILON) else g.epsilon)
    t = int(g.max_new_tokens)
    _choice("loss_agg", v["loss_agg"], LOSS_AGGS)
    _choice("ratio_level", v["ratio_level"], RATIO_LEVELS)
    _choice("kl_estimator", v["kl_estimator"], KL_ESTIMATORS)
    _choice("advantage_scale", v["advantage_scale"], ADVANTAGE_SCALES)
    old_source = g.get("old_logp", "trainer")
    _choice("old_logp", old_source, OLD_LOGP_SOURCES)
    for key in ("num_generations", "num_iterations", "num_minibatches", "max_draws", "max_new_tokens"):
        val = g.get(key, 1)
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(f"rl.grpo.{key} must be an integer >= 1, got {val!r}")
    if beta < 0 or not 0 < epsilon < 1:
        raise ConfigError(f"rl.grpo: need beta >= 0 and 0 < epsilon < 1, got beta={beta}, epsilon={epsilon}")
    if v["epsilon_high"] is not None and float(v["epsilon_high"]) <= 0:
        raise ConfigError(f"rl.grpo.epsilon_high must be > 0, got {v['epsilon_high']!r}")
    buffer = int(v["overlong_buffer"])
    buffer = t // 5 if buffer == OVERLONG_AUTO else buffer
    if not 0 <= buffer <= t:
        raise ConfigError(f"rl.grpo.overlong_buffer must be -1 or in [0, max_new_tokens={t}], got {buffer}")
    tis_cap = g.get("tis_cap")
    if tis_cap is not None and (float(tis_cap) < 1.0 or old_source != "trainer"):
        raise ConfigError(
            f"rl.grpo.tis_cap={tis_cap!r}: needs a cap C >= 1 and old_logp='trainer' (the weights compare the "
            "trainer's old log-probs with the sampler's)"
        )
    n_mb = int(g.get("num_minibatches", 1))
    if prompt_batch_size is not None and prompt_batch_size % n_mb:
        raise ConfigError(
            f"rl.grpo.num_minibatches={n_mb} must divide the {prompt_batch_size} prompts of a step "
            "(pipeline.prompt_batch_size): a minibatch holds whole groups"
        )
    max_len = g.get("max_completion_len")
    opts = GRPOOptions(
        preset=name,
        group=int(g.num_generations),
        beta=beta,
        epsilon=epsilon,
        num_iterations=int(g.num_iterations),
        num_minibatches=n_mb,
        advantage_scale=v["advantage_scale"],
        dynamic_sampling=bool(v["dynamic_sampling"]),
        max_draws=int(g.get("max_draws", 1)),
        overlong_buffer=buffer,
        overlong_penalty=float(g.get("overlong_penalty", 1.0)),
        mask_truncated=bool(v["mask_truncated"]),
        old_logp=old_source,
        skip_zero_advantage=bool(g.get("skip_zero_advantage", True)),
        loss=LossOptions(
            epsilon_high=None if v["epsilon_high"] is None else float(v["epsilon_high"]),
            loss_agg=v["loss_agg"],
            ratio_level=v["ratio_level"],
            kl_estimator=v["kl_estimator"],
            max_completion_len=int(max_len) if max_len is not None else t,
            tis_cap=None if tis_cap is None else float(tis_cap),
        ),
    )
    return opts


def describe(opts: GRPOOptions) -> str:
    """One line for the start-up log: every resolved option."""
    lo = opts.loss
    return (
        f"GRPO preset={opts.preset}: G={opts.group} beta={opts.beta} epsilon={opts.epsilon} "
        f"epsilon_high={lo.epsilon_high if lo.epsilon_high is not None else opts.epsilon} loss_agg={lo.loss_agg} "
        f"ratio_level={lo.ratio_level} kl={lo.kl_estimator} advantages={opts.advantage_scale} "
        f"mu={opts.num_iterations} minibatches={opts.num_minibatches} dynamic_sampling={opts.dynamic_sampling} "
        f"(max_draws={opts.max_draws}) overlong_buffer={opts.overlong_buffer} mask_truncated={opts.mask_truncated} "
        f"old_logp={opts.old_logp} tis_cap={lo.tis_cap}"
    )


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"rl.grpo.{key} must be one of {allowed}, got {value!r}")
