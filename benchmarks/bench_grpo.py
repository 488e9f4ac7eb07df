"""GRPO step breakdown per preset (rollout / reference / old log-probs / update) and the extra rollout cost of
DAPO dynamic sampling per kept group, CPU.

Model: the demo's tiny Qwen2.5-VL text stack (hidden 128 x 4 layers, vocab 800), random weights; 4 prompts of 24
tokens per step, G = 8, 48 new tokens (no EOS: every row decodes all 48). The reward is the parity of the
first answered token, except that half of the prompts always score 1 (their groups tie), so dynamic sampling
must draw about twice per step. Each preset runs ``--steps`` steps; the first (compilation) is dropped and the
medians of the others are printed, with each preset's total as a ratio of plain GRPO's measured in this run.
Presets run in alternation over ``--rounds`` so that drift of a shared machine hits all alike.

    python benchmarks/bench_grpo.py [--steps 4 --rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny  # noqa: E402
from r1ov_jax.train import grpo  # noqa: E402
from r1ov_jax.train.grpo_config import default_grpo_config  # noqa: E402
from r1ov_jax.train.loop import default_train_config  # noqa: E402
from r1ov_jax.train.metrics import read_jsonl  # noqa: E402
from r1ov_jax.train.optim import default_optim_config  # noqa: E402

PROMPTS, G, NEW, PROMPT_LEN = 4, 8, 48, 24
RUNS = {
    "grpo": dict(preset="grpo"),
    "dapo (no dyn. sampling)": dict(preset="dapo", dynamic_sampling=False),
    "dapo": dict(preset="dapo", max_draws=4),
    "dr_grpo": dict(preset="dr_grpo"),
    "gspo": dict(preset="gspo"),
    "grpo mu=2 x 2 minibatches": dict(preset="grpo", num_iterations=2, num_minibatches=2),
}


def half_tied(completions, golds, choices, **kwargs):
    return [
        1.0 if g == "tie" else float(int(re.search(r"\d+", c).group()) % 2)
        for c, g in zip(completions, golds)
    ]


def run(model0, options: dict, steps: int, out_dir: str) -> list[dict]:
    model = nnx.clone(model0)
    cfg = ml_collections.ConfigDict({"optim": default_optim_config(), "train": default_train_config()})
    cfg.grpo = default_grpo_config()
    cfg.grpo.num_generations, cfg.grpo.max_new_tokens = G, NEW
    cfg.grpo.update(options)
    cfg.rewards, cfg.reward_fns = {"half_tied": 1.0}, {"half_tied": f"{__name__}:half_tied"}
    cfg.optim.lr, cfg.optim.warmup_ratio = 1e-4, 0.0
    cfg.train.steps, cfg.train.log_every, cfg.train.ckpt_every = steps, 1, 10_000
    rng = np.random.default_rng(0)

    class Prompts:
        def __next__(self):
            ids = rng.integers(1, 240, (PROMPTS, PROMPT_LEN))  # below the special-token ids
            golds = ["tie", "7"] * (PROMPTS // 2)
            return {"inputs": model.prepare_inputs(ids), "answers": golds, "choices": [None] * PROMPTS}

    decode = lambda toks: f"<answer>{int(toks[0])}</answer>"  # noqa: E731
    grpo.run_grpo(model, nnx.clone(model0), Prompts(), decode, cfg, out_dir=out_dir, eos_ids=(), pad_id=0,
                  progress=False)  # fmt: skip
    return read_jsonl(os.path.join(out_dir, "metrics.jsonl"))[1:]  # drop the compiling step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cfg = tiny(800)
    text = dataclasses.replace(cfg.text, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                               mrope_section=(4, 6, 6))  # fmt: skip
    vision = dataclasses.replace(cfg.vision, out_hidden_size=128)
    model0 = Qwen25VL(dataclasses.replace(cfg, text=text, vision=vision), rngs=nnx.Rngs(0))
    load0 = os.getloadavg()[0]
    rows = {name: [] for name in RUNS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, options) in enumerate(RUNS.items()):
                rows[name] += run(model0, options, args.steps, os.path.join(tmp, f"{r}-{i}"))
    load1 = os.getloadavg()[0]
    parts = ("rollout_s", "ref_s", "old_logp_s", "update_s")
    med = {n: {p: statistics.median(m[f"grpo/{p}"] for m in ms) for p in parts} for n, ms in rows.items()}
    base = sum(med["grpo"].values())
    print(f"GRPO step on CPU ({os.cpu_count()} cores, load average {load0:.1f} -> {load1:.1f}); {PROMPTS} prompts x "
          f"G={G}, {NEW} new tokens; medians of {len(rows['grpo'])} steps per preset")  # fmt: skip
    print(f"{'preset':28s} {'rollout':>8s} {'reference':>9s} {'old logp':>8s} {'update':>8s} {'total':>8s} "
          f"{'vs grpo':>7s} {'draws':>5s} {'kept/drawn':>10s}")  # fmt: skip
    for name, ms in rows.items():
        m, tot = med[name], sum(med[name].values())
        draws = statistics.mean(x["grpo/draws"] for x in ms)
        kept = statistics.mean(x["grpo/groups_kept"] for x in ms)
        drawn = statistics.mean(x["grpo/groups_drawn"] for x in ms)
        print(f"{name:28s} {m['rollout_s']:8.3f} {m['ref_s']:9.3f} {m['old_logp_s']:8.3f} {m['update_s']:8.3f} "
              f"{tot:8.3f} {tot / base:7.2f} {draws:5.2f} {kept:4.1f}/{drawn:4.1f}")  # fmt: skip
    plain = statistics.median(
        x["grpo/rollout_s"] / x["grpo/groups_kept"] for x in rows["dapo (no dyn. sampling)"]
    )
    dyn = statistics.median(x["grpo/rollout_s"] / max(x["grpo/groups_kept"], 1) for x in rows["dapo"])
    print(
        f"dynamic sampling: rollout per kept group {dyn:.3f} s vs {plain:.3f} s without filtering "
        f"(x{dyn / plain:.2f}; half the groups tie by construction, so ~x2 is the expected cost)"
    )


if __name__ == "__main__":
    main()
