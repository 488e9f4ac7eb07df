"""Rewards by name: ``rl.rewards = {"format": 1.0, "accuracy": 1.0, "length": 0.5, "mine": 1.0}``.

Built-ins: ``format`` and ``accuracy`` (per completion, see their modules), ``length`` (Kimi k1.5's group-relative
length reward), ``iou`` / ``iou_soft`` (box answers ``[x1, y1, x2, y2]`` as in VLM-R1's REC reward: 1 when
IoU > 0.5 / the IoU itself). Any other name is a user reward: ``"module:function"`` itself, or a name mapped to
one in ``rl.reward_fns = {"mine": "my_pkg.rewards:score"}`` (config keys cannot hold dots).

A user reward is called once per GRPO group: ``fn(completions, golds, choices, **kwargs) -> sequence of float``
(one per completion; ``kwargs`` holds ``lengths``, the completions' token counts, or None). ``resolve_rewards``
imports and dry-runs every function at start-up, so a bad one fails before the first rollout. User rewards run
in-process: the per-answer time budget bounds the built-in symbolic checks only.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.rewards.accuracy import accuracy_reward, extract_answer_block
from r1ov_jax.rewards.format import format_reward

PER_COMPLETION = {"format": lambda c, g, ch, **kw: format_reward(c), "accuracy": accuracy_reward}
GroupFn = Callable[..., Sequence[float]]


@dataclasses.dataclass(frozen=True)
class RewardTerm:
    name: str
    weight: float
    fn: Callable  # PER_COMPLETION signature when per_completion, else GroupFn
    per_completion: bool
    source: str  # "built-in" or "module:function"


# ------------------------------------------------------------------------------------------------ built-ins
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    """The first ``[x1, y1, x2, y2]`` in ``text`` (VLM-R1's bbox pattern, also accepting decimals), or None."""
    m = _BOX.search(text or "")
    return tuple(float(v) for v in m.groups()) if m else None


def box_iou(a, b) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (continuous coordinates; 0 for empty boxes)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def _answer_iou(completion: str, gold: str) -> float:
    pred = parse_box(extract_answer_block(completion))
    ref = parse_box(extract_answer_block(gold) if "<answer>" in str(gold) else str(gold))
    return box_iou(pred, ref) if pred is not None and ref is not None else 0.0


def iou_reward(completions, golds, choices, **kwargs) -> list[float]:
    """1.0 when the first box of the ``<answer>`` overlaps the gold box with IoU > 0.5 (VLM-R1 REC), else 0."""
    return [1.0 if _answer_iou(c, g) > 0.5 else 0.0 for c, g in zip(completions, golds)]


def iou_soft_reward(completions, golds, choices, **kwargs) -> list[float]:
    """The IoU of the answer's first box with the gold box (0 without a box)."""
    return [_answer_iou(c, g) for c, g in zip(completions, golds)]


def length_reward(completions, golds, choices, *, lengths=None, correct=None, **kwargs) -> list[float]:
    """Kimi k1.5's length reward within a group: λ_i = 0.5 − (len_i − min) / (max − min); λ_i for a correct
    answer, min(0, λ_i) for a wrong one (short right answers gain, long wrong ones lose); 0 when all lengths tie.
    Lengths are token counts when given, else characters."""
    n = [len(c) for c in completions] if lengths is None else [int(x) for x in lengths]
    lo, hi = min(n, default=0), max(n, default=0)
    if hi == lo:
        return [0.0] * len(n)
    if correct is None:
        correct = [accuracy_reward(c, g, ch) for c, g, ch in zip(completions, golds, choices)]
    lam = [0.5 - (x - lo) / (hi - lo) for x in n]
    return [v if ok else min(0.0, v) for v, ok in zip(lam, correct)]


GROUP_BUILTINS: dict[str, GroupFn] = {"length": length_reward, "iou": iou_reward, "iou_soft": iou_soft_reward}
BUILTINS = (*PER_COMPLETION, *GROUP_BUILTINS)


# ------------------------------------------------------------------------------------------------ user rewards
def load_reward_fn(spec: str, name: str | None = None) -> GroupFn:
    """Imports ``"module:function"``; InvalidInputError naming the reward for anything that would fail later."""
    label = f"reward {name!r} ({spec!r})" if name and name != spec else f"reward {spec!r}"
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise InvalidInputError(
            f"unknown {label}: not a built-in ({', '.join(BUILTINS)}) and not 'module:function' "
            "(map a name to one in rl.reward_fns)"
        )
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module: its failure is a config error, named
        raise InvalidInputError(f"{label}: cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InvalidInputError(f"{label}: {module_name!r} has no callable {attr!r}")
    try:
        inspect.signature(fn).bind(["x"], ["x"], [None], lengths=None)
    except TypeError:
        raise InvalidInputError(
            f"{label}: must accept (completions, golds, choices, **kwargs); its signature is "
            f"{attr}{inspect.signature(fn)}"
        ) from None
    except ValueError:  # builtins without a signature: the dry run decides
        pass
    return fn


_DRY_RUN = (
    ["<think>a</think><answer>1</answer>", "<think>b</think><answer>2</answer>"],
    ["1", "1"],
    [None, None],
)


def check_group_output(values, n: int, label: str) -> np.ndarray:
    """float32 [n] from what a group reward returned; InvalidInputError naming it for a wrong length or type."""
    try:
        out = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(
            f"{label} returned {type(values).__name__}, not a sequence of floats: {e}"
        ) from None
    if out.shape != (n,):
        raise InvalidInputError(f"{label} returned {out.size} values for {n} completions")
    return np.nan_to_num(out, nan=0.0).astype(np.float32)  # NaN never earns reward


def resolve_rewards(
    weights: Mapping[str, float], reward_fns: Mapping[str, str] | None = None, *, dry_run: bool = True
) -> list[RewardTerm]:
    """The weighted reward terms of a run, every user function imported and (``dry_run``) called once on a
    two-completion group. InvalidInputError naming the reward for an unknown name, a failed import, a wrong
    signature, a raise or a wrong output."""
    reward_fns = dict(reward_fns or {})
    if not weights:
        raise InvalidInputError(
            f"rl.rewards is empty: give at least one of {', '.join(BUILTINS)} with a weight"
        )
    terms = []
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise InvalidInputError(f"reward {name!r}: weight must be a finite number, got {weight!r}")
        if name in PER_COMPLETION and name not in reward_fns:
            terms.append(RewardTerm(name, float(weight), PER_COMPLETION[name], True, "built-in"))
            continue
        if name in GROUP_BUILTINS and name not in reward_fns:
            terms.append(RewardTerm(name, float(weight), GROUP_BUILTINS[name], False, "built-in"))
            continue
        spec = reward_fns.get(name, name)
        fn = load_reward_fn(spec, name)
        if dry_run:
            label = f"reward {name!r} ({spec})"
            try:
                out = fn(*_DRY_RUN, lengths=[3, 3])
            except Exception as e:
                raise InvalidInputError(
                    f"{label} raised {type(e).__name__}: {e} when called as "
                    "fn(completions, golds, choices, lengths=...) on a two-completion group"
                ) from None
            check_group_output(out, 2, label)
        terms.append(RewardTerm(name, float(weight), fn, False, spec))
    unused = set(reward_fns) - set(weights)
    if unused:
        raise InvalidInputError(f"rl.reward_fns names {sorted(unused)} but rl.rewards gives them no weight")
    return terms
