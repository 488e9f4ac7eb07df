"""DAPO dynamic sampling: a fixture reward that ties on known prompts keeps exactly the mixed groups, in order,
up to the step's prompt count; drawing stops at max_draws; overlong shaping and truncation masking."""

import re

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import r1ov_jax.train.grpo as grpo
from r1ov_jax.config_utils import ConfigError
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.train.dynamic_sampling import Rollout, collect_mixed, concat_rollouts, mixed_groups
from r1ov_jax.train.grpo_config import default_grpo_config, resolve_options
from r1ov_jax.train.loop import default_train_config
from r1ov_jax.train.metrics import read_jsonl
from r1ov_jax.train.optim import default_optim_config

G = 4


def ties_on_known_prompts(completions, golds, choices, **kwargs):
    """User reward: every completion of a prompt whose gold is "tie" scores 1 (a tied group); otherwise the
    parity of the answered token (mixed for a random policy)."""
    return [
        1.0 if g == "tie" else float(int(re.search(r"\d+", c).group()) % 2)
        for c, g in zip(completions, golds)
    ]


def fake_rollout(names, totals, prompt_len=3):
    """Prompts named ``names`` with the given per-completion total rewards ([B, G])."""
    b = len(names)
    totals = np.asarray(totals, np.float32).reshape(b * G)
    rows = np.arange(b * G)
    return Rollout(
        inputs={"input_ids": np.tile(np.arange(prompt_len), (b, 1)) + rows[::G, None],
                "segment_ids": np.ones((b, prompt_len), np.int32),
                "positions": np.zeros((3, b, prompt_len), np.int32) + rows[None, ::G, None]},
        answers=list(names), choices=[None] * b, tokens=rows[:, None].repeat(2, 1),
        logprobs=np.zeros((b * G, 2), np.float32), lengths=np.full(b * G, 2, np.int32),
        truncated=np.zeros(b * G, bool), rewards={"total": totals}, group=G,
    )  # fmt: skip


MIXED, TIED = [0, 1, 0, 1], [1, 1, 1, 1]


def test_mixed_groups():
    assert mixed_groups(np.array(MIXED + TIED + [0, 0, 0, 0.5]), G).tolist() == [True, False, True]


def test_keeps_exactly_the_mixed_groups_in_order():
    draws = iter([
        fake_rollout(["a", "b", "c"], [TIED, MIXED, TIED]),
        fake_rollout(["d", "e", "f"], [MIXED, TIED, MIXED]),
        fake_rollout(["g", "h", "i"], [MIXED, MIXED, MIXED]),
    ])  # fmt: skip
    kept, stats, seen = collect_mixed(lambda: next(draws), None, max_draws=5)
    assert kept.answers == ["b", "d", "f"]  # 3 = one draw's prompts; the third draw was never needed
    assert stats == {"draws": 2, "groups_drawn": 6, "groups_kept": 3} and seen["total"].shape == (24,)
    # rows, prompts and positions travel with their group
    np.testing.assert_array_equal(kept.tokens[:, 0], np.r_[4:8, 0:4, 8:12])
    np.testing.assert_array_equal(kept.inputs["positions"][0, :, 0], [4, 0, 8])
    assert kept.inputs["input_ids"].shape == (3, 3)


def test_trims_to_the_step_and_stops_at_max_draws():
    draws = iter([fake_rollout(["a", "b"], [MIXED, MIXED]), fake_rollout(["c", "d"], [MIXED, MIXED])])
    kept, stats, _ = collect_mixed(lambda: next(draws), 3, max_draws=5)
    assert kept.answers == ["a", "b", "c"] and stats["groups_kept"] == 3
    n = {"draws": 0}

    def all_tied():
        n["draws"] += 1
        return fake_rollout(["x", "y"], [TIED, TIED])

    kept, stats, _ = collect_mixed(all_tied, None, max_draws=3)
    assert kept is None and n["draws"] == 3 and stats == {"draws": 3, "groups_drawn": 6, "groups_kept": 0}
    few = iter([fake_rollout(["a", "b"], [TIED, MIXED]), fake_rollout(["c", "d"], [TIED, TIED])])
    kept, stats, _ = collect_mixed(lambda: next(few), None, max_draws=2)
    assert kept.answers == ["b"] and stats["draws"] == 2  # out of draws: trains on what it has


def test_prompt_shapes_must_agree():
    with pytest.raises(ConfigError, match="max_prompt_len"):
        concat_rollouts([fake_rollout(["a"], [MIXED]), fake_rollout(["b"], [MIXED], prompt_len=4)])


def test_truncated_completions_leave_the_loss_when_asked():
    args = (None, np.zeros((2 * 4, 3), np.int32), np.array([3, 2, 3, 1, 3, 3, 3, 3]), np.zeros((8, 3)),
            np.arange(8.0), np.array([1, 0, 1, 0, 0, 0, 0, 0], bool))  # fmt: skip
    opts = resolve_options(
        ml_collections.ConfigDict({**default_grpo_config().to_dict(), "num_generations": 4})
    )
    masked = resolve_options(
        ml_collections.ConfigDict(
            {**default_grpo_config().to_dict(), "num_generations": 4, "mask_truncated": True}
        )
    )
    plain = grpo._train_batch(*args, opts, 2)
    cut = grpo._train_batch(*args, masked, 2)
    assert bool(jnp.all(plain.loss_mask == plain.comp_mask))
    np.testing.assert_array_equal(np.asarray(cut.loss_mask.sum(1)), [0, 2, 0, 1, 3, 3, 3, 3])
    assert bool(jnp.all(cut.comp_mask == plain.comp_mask))  # attention still sees every generated token


def _run(tmp_path, golds, **grpo_kw):
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    cfg = ml_collections.ConfigDict({"optim": default_optim_config(), "train": default_train_config()})
    cfg.grpo = default_grpo_config()
    cfg.grpo.num_generations, cfg.grpo.max_new_tokens = G, 3
    cfg.grpo.update(grpo_kw)
    cfg.rewards = {"ties": 1.0}
    cfg.reward_fns = {"ties": f"{__name__}:ties_on_known_prompts"}
    cfg.optim.lr, cfg.optim.warmup_ratio = 1e-2, 0.0
    cfg.train.steps, cfg.train.log_every, cfg.train.ckpt_every = 1, 1, 100
    ids = np.array([[3, 4, 5], [9, 8, 7]])

    class Prompts:
        def __next__(self):
            return {"inputs": model.prepare_inputs(ids), "answers": list(golds), "choices": [None, None]}

    decode = lambda toks: f"<answer>{int(toks[0])}</answer>"  # noqa: E731
    grpo.run_grpo(model, nnx.clone(model), Prompts(), decode, cfg, out_dir=str(tmp_path), eos_ids=(), pad_id=0,
                  progress=False)  # fmt: skip
    return read_jsonl(str(tmp_path / "metrics.jsonl"))[-1]


def test_run_grpo_dynamic_sampling_draws_until_enough_mixed_groups(tmp_path):
    m = _run(tmp_path / "a", ["tie", "7"], preset="dapo", max_draws=4, overlong_buffer=0)
    # one of the two groups of each draw ties: two draws give the step its two mixed groups
    assert (m["grpo/draws"], m["grpo/groups_drawn"], m["grpo/groups_kept"]) == (2, 4, 2)
    assert m["grpo/updates"] == 1
    m = _run(tmp_path / "b", ["tie", "tie"], preset="dapo", max_draws=3, overlong_buffer=0)
    assert (m["grpo/draws"], m["grpo/groups_drawn"], m["grpo/groups_kept"]) == (3, 6, 0)
    assert m["grpo/skipped_update"] == 1 and m["grpo/reward"] == 1.0
