"""DAPO dynamic sampling (Yu et al. 2025, §3.2): keep drawing prompt batches until the step has enough groups
whose rewards do not all tie.

A group whose G rewards are equal has zero advantage for every completion: it adds no policy gradient and, under
token-mean aggregation, only dilutes the others (verl ``filter_groups``, EasyR1 online filtering). Rollouts here
are host-side NumPy (single-process runs): draws are filtered, concatenated and cut to ``prompt_batch_size``
groups; after ``max_draws`` the step trains on the mixed groups it has (fewer; none: no update).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass
class Rollout:
    """One prompt batch and its G completions per prompt (row i*G + j = sample j of prompt i), on the host."""

    inputs: dict  # model.prepare_inputs of the prompts (positions [3, B, L]; every other array [B, ...])
    answers: list
    choices: list
    tokens: np.ndarray  # int32 [B*G, T]
    logprobs: np.ndarray  # float32 [B*G, T], the sampler's
    lengths: np.ndarray  # int32 [B*G]
    truncated: np.ndarray  # bool [B*G]: hit max_new_tokens without EOS
    rewards: dict  # name -> float32 [B*G], with "total"
    group: int

    @property
    def num_prompts(self) -> int:
        return len(self.answers)


def mixed_groups(total_rewards: np.ndarray, group: int) -> np.ndarray:
    """bool [num_groups]: the groups whose rewards are not all equal."""
    r = np.asarray(total_rewards).reshape(-1, group)
    return (r != r[:, :1]).any(-1)


def take_prompts(inputs: dict, idx: np.ndarray) -> dict:
    """Rows ``idx`` of prepared prompt inputs (``positions`` has the batch on axis 1, the rest on axis 0)."""

    def take(key, x):
        if isinstance(x, dict):
            return {k: take(k, v) for k, v in x.items()}
        return np.take(np.asarray(x), idx, axis=1 if key == "positions" else 0)

    return {k: take(k, v) for k, v in inputs.items()}


def select_groups(ro: Rollout, keep: np.ndarray) -> Rollout:
    """The rollout restricted to prompt groups ``keep`` (indices, in order)."""
    keep = np.asarray(keep, np.int64)
    rows = (keep[:, None] * ro.group + np.arange(ro.group)[None]).reshape(-1)
    return Rollout(
        inputs=take_prompts(ro.inputs, keep),
        answers=[ro.answers[i] for i in keep],
        choices=[ro.choices[i] for i in keep],
        tokens=ro.tokens[rows],
        logprobs=ro.logprobs[rows],
        lengths=ro.lengths[rows],
        truncated=ro.truncated[rows],
        rewards={k: v[rows] for k, v in ro.rewards.items()},
        group=ro.group,
    )


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """One rollout from several draws; their prompt shapes must agree (static ``max_prompt_len`` / patches)."""
    if len(parts) == 1:
        return parts[0]
    shapes = {_shapes(p.inputs) for p in parts}
    if len(shapes) > 1:
        from r1ov_jax.config_utils import ConfigError

        raise ConfigError(
            "dynamic sampling joins prompt batches of different shapes "
            f"{sorted(shapes)}: set pipeline.max_prompt_len and pipeline.max_prompt_patches (static shapes)"
        )

    def cat(key, xs):
        if isinstance(xs[0], dict):
            return {k: cat(k, [x[k] for x in xs]) for k in xs[0]}
        return np.concatenate([np.asarray(x) for x in xs], axis=1 if key == "positions" else 0)

    return Rollout(
        inputs={k: cat(k, [p.inputs[k] for p in parts]) for k in parts[0].inputs},
        answers=[a for p in parts for a in p.answers],
        choices=[c for p in parts for c in p.choices],
        tokens=np.concatenate([p.tokens for p in parts]),
        logprobs=np.concatenate([p.logprobs for p in parts]),
        lengths=np.concatenate([p.lengths for p in parts]),
        truncated=np.concatenate([p.truncated for p in parts]),
        rewards={k: np.concatenate([p.rewards[k] for p in parts]) for k in parts[0].rewards},
        group=parts[0].group,
    )


def collect_mixed(draw: Callable[[], Rollout], prompt_batch_size: int | None, max_draws: int):
    """Draws until ``prompt_batch_size`` mixed groups are kept (None: as many as the first draw has prompts) or
    ``max_draws`` batches were drawn.

    Returns (rollout of the kept groups, at most ``prompt_batch_size`` of them, or None when none is mixed;
    stats ``{"draws", "groups_drawn", "groups_kept"}``, where kept counts the groups trained on). Also returns
    the draws' rewards (all groups), for the metrics of what the policy produced."""
    kept, n_kept, drawn, draws, all_rewards = [], 0, 0, 0, []
    while draws < max_draws and (prompt_batch_size is None or n_kept < prompt_batch_size):
        ro = draw()
        draws += 1
        prompt_batch_size = prompt_batch_size or ro.num_prompts
        drawn += ro.num_prompts
        all_rewards.append(ro.rewards)
        idx = np.flatnonzero(mixed_groups(ro.rewards["total"], ro.group))[: prompt_batch_size - n_kept]
        if len(idx):
            kept.append(select_groups(ro, idx))
            n_kept += len(idx)
    stats = {"draws": draws, "groups_drawn": drawn, "groups_kept": n_kept}
    seen = {k: np.concatenate([r[k] for r in all_rewards]) for k in all_rewards[0]}
    return (concat_rollouts(kept) if kept else None), stats, seen


def _shapes(inputs: dict) -> tuple:
    """Per-prompt shapes (the batch axis dropped) of prepared inputs."""
    out = []
    for k in sorted(inputs):
        v = inputs[k]
        if isinstance(v, dict):
            out.append((k, _shapes(v)))
            continue
        shape = tuple(np.shape(v))
        out.append((k, shape[:1] + shape[2:] if k == "positions" else shape[1:]))
    return tuple(out)
