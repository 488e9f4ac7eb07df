"""Rewards by name: built-ins (IoU as VLM-R1, Kimi length reward) against hand values, user rewards as
``module:function``, and every bad reward failing at start-up with an error naming it."""

import numpy as np
import pytest

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.rewards import compute_rewards, resolve_rewards
from r1ov_jax.rewards.registry import box_iou, length_reward, parse_box


def answer_length(completions, golds, choices, **kwargs):
    return [float(len(c)) for c in completions]


def two_args(completions, golds):
    return [0.0] * len(completions)


def raises(completions, golds, choices, **kwargs):
    raise RuntimeError("boom")


def wrong_length(completions, golds, choices, **kwargs):
    return [1.0]


def not_numbers(completions, golds, choices, **kwargs):
    return ["a"] * len(completions)


NOT_CALLABLE = 3


def test_iou():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0 and box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert (
        parse_box("the box is [10, 20.5, 30,40] ok") == (10.0, 20.5, 30.0, 40.0)
        and parse_box("[1, 2]") is None
    )
    comps = ["<think>x</think><answer>[0, 0, 10, 10]</answer>", "<think>x</think><answer>[0, 0, 10, 4]</answer>",
             "<think>x</think><answer>no box</answer>", "[0, 0, 10, 10]"]  # fmt: skip
    r = compute_rewards(comps, ["[0, 0, 10, 10]"] * 3 + ["<answer>[0, 0, 10, 10]</answer>"], None,
                        {"iou": 1.0, "iou_soft": 1.0})  # fmt: skip
    np.testing.assert_allclose(r["iou_soft"], [1.0, 0.4, 0.0, 0.0])  # the box must be inside <answer>
    np.testing.assert_allclose(r["iou"], [1.0, 0.0, 0.0, 0.0])  # VLM-R1: 1 when IoU > 0.5


def test_length_reward_is_kimi_k15():
    lengths = [10, 20, 30, 40]
    correct = [True, False, True, False]
    lam = [0.5 - (n - 10) / 30 for n in lengths]
    want = [v if ok else min(0.0, v) for v, ok in zip(lam, correct)]
    np.testing.assert_allclose(
        length_reward(["a"] * 4, ["1"] * 4, [None] * 4, lengths=lengths, correct=correct), want
    )
    assert length_reward(["a", "b"], ["1", "1"], [None, None], lengths=[5, 5]) == [0.0, 0.0]
    # through compute_rewards: per group, correctness from the accuracy reward, token lengths passed in
    comps = ["<think>x</think><answer>3</answer>", "<think>x</think><answer>4</answer>"] * 2
    r = compute_rewards(
        comps, ["3"] * 4, None, {"accuracy": 1.0, "length": 0.5}, group_size=2, lengths=[4, 8, 8, 4]
    )
    np.testing.assert_allclose(r["length"], [0.5, -0.5, -0.5, 0.0])  # short right +, long wrong -
    np.testing.assert_allclose(r["total"], r["accuracy"] + 0.5 * r["length"])


def test_user_reward_by_module_function():
    comps = ["<think>a</think><answer>1</answer>", "xy"]
    spec = f"{__name__}:answer_length"
    terms = resolve_rewards({"format": 1.0, "mine": 2.0}, {"mine": spec})
    assert [(t.name, t.source) for t in terms] == [("format", "built-in"), ("mine", spec)]
    r = compute_rewards(comps, ["1", "1"], None, terms=terms, group_size=2)
    np.testing.assert_allclose(r["mine"], [len(comps[0]), 2.0])
    np.testing.assert_allclose(r["total"], r["format"] + 2 * r["mine"])
    # a name without dots can be the module:function itself
    with pytest.raises(InvalidInputError, match="cannot import 'nodots_r1ov'"):
        resolve_rewards({"nodots_r1ov:fn": 1.0})


@pytest.mark.parametrize(
    "weights, fns, match",
    [
        ({"lenght": 1.0}, {}, "unknown reward 'lenght'"),
        ({"mine": 1.0}, {"mine": "no_such_module_r1ov:fn"}, "cannot import 'no_such_module_r1ov'"),
        ({"mine": 1.0}, {"mine": f"{__name__}:missing"}, "no callable 'missing'"),
        ({"mine": 1.0}, {"mine": f"{__name__}:NOT_CALLABLE"}, "no callable 'NOT_CALLABLE'"),
        ({"mine": 1.0}, {"mine": f"{__name__}:two_args"}, r"must accept \(completions, golds, choices"),
        ({"mine": 1.0}, {"mine": f"{__name__}:raises"}, "raised RuntimeError: boom"),
        ({"mine": 1.0}, {"mine": f"{__name__}:wrong_length"}, "returned 1 values for 2 completions"),
        ({"mine": 1.0}, {"mine": f"{__name__}:not_numbers"}, "not a sequence of floats"),
        ({"format": "high"}, {}, "weight must be a finite number"),
        ({}, {}, "rl.rewards is empty"),
        ({"format": 1.0}, {"extra": "json:loads"}, "gives them no weight"),
    ],
)
def test_bad_rewards_fail_at_resolve_time_naming_the_reward(weights, fns, match):
    with pytest.raises(InvalidInputError, match=match):
        resolve_rewards(weights, fns)


def test_bad_reward_stops_the_grpo_stage_before_anything_is_built():
    from r1ov_jax.config_utils import load_config
    from r1ov_jax.train import recipes

    cfg = load_config("configs/tiny_cpu.py", ["rl.reward_fns={'mine': 'no_such_module_r1ov:fn'}",
                                              "rl.rewards={'mine': 1.0}", "rl.init_from=/nonexistent"])  # fmt: skip
    with pytest.raises(InvalidInputError, match="reward 'mine'"):
        recipes.run_grpo_stage(cfg, out_dir="/nonexistent/out", progress=False)
