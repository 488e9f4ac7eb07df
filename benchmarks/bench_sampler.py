"""KV-cache sampler throughput vs transformers ``generate`` on the same weights (issue 7), CPU.

Small config (text hidden 256 x 4 layers, 4 heads / 2 kv heads, vocab 4096; vision 2 blocks), batch 8 prompts of
one 112x112 image + text, 128 new tokens each (greedy, no EOS so every row decodes all 128). Also checks that
both produce the same greedy tokens. Prints tokens/s and the ratio measured in this run. The two are timed in
alternation (ours, transformers, ours, ...) so that drift of a shared machine hits both alike; the ratio is the
median of the per-pair ratios.

    python benchmarks/bench_sampler.py [--new 128 --batch 8 --repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from r1ov_jax import hf  # noqa: E402
from r1ov_jax.rollout.sampler import SamplingConfig, generate, left_pad  # noqa: E402
from r1ov_jax.testing.hf_reference import IMG, V_END, V_START, hf_pixels, random_image  # noqa: E402


def hf_model(attn: str):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=4096,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=128,
            intermediate_size=256,
            num_heads=4,
            out_hidden_size=256,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            in_channels=3,
            window_size=56,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        ),
        image_token_id=IMG,
        video_token_id=253,
        vision_start_token_id=V_START,
        vision_end_token_id=V_END,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # sharper logits so greedy paths do not hinge on float ties
        model.lm_head.weight.mul_(20.0)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ref = hf_model("sdpa")
    d = tempfile.mkdtemp()
    ref.save_pretrained(d)
    ours = hf.from_pretrained(d)

    pv, thw = hf_pixels([random_image(112, 112, seed=i) for i in range(args.batch)])
    n = int(thw[0].prod()) // 4
    rng = np.random.default_rng(0)
    prompts = [
        [1, V_START] + [IMG] * n + [V_END] + rng.integers(300, 4000, size=8 + 2 * i).tolist()
        for i in range(args.batch)
    ]
    ids, mask = left_pad(prompts)
    total = args.batch * args.new

    inputs = jax.tree.map(jax.numpy.asarray, ours.prepare_inputs(ids, mask, pv, thw))
    cfg = SamplingConfig(max_new_tokens=args.new, temperature=0.0)

    def run_ours():
        return generate(ours, inputs, 0, cfg)

    t_ids = torch.as_tensor(ids, dtype=torch.long)
    kw = dict(
        input_ids=t_ids,
        attention_mask=torch.as_tensor(mask, dtype=torch.long),
        pixel_values=torch.as_tensor(pv),
        image_grid_thw=torch.as_tensor(thw),
        mm_token_type_ids=(t_ids == IMG).int(),
        max_new_tokens=args.new,
        min_new_tokens=args.new,
        do_sample=False,
        pad_token_id=0,
    )

    def run_ref():
        with torch.no_grad():
            return ref.generate(**kw)[:, ids.shape[1] :].numpy()

    ours_tokens, ref_tokens = run_ours().tokens, run_ref()  # also warms up / compiles
    agree = float((ours_tokens == ref_tokens).mean())

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    pairs = [(timed(run_ours), timed(run_ref)) for _ in range(args.repeats)]
    t_ours = statistics.median(p[0] for p in pairs)
    t_ref = statistics.median(p[1] for p in pairs)
    ratios = sorted(r / o for o, r in pairs)
    print(
        f"batch {args.batch} x {args.new} new tokens, prompt {ids.shape[1]} tokens, cpu threads {os.cpu_count()}"
    )
    print(f"transformers generate (sdpa)   {total / t_ref:9.1f} tokens/s   ({t_ref:.3f} s median)")
    print(
        f"ours (jit prefill + while_loop) {total / t_ours:8.1f} tokens/s   ({t_ours:.3f} s median, compile excluded)"
    )
    print(
        f"speed-up (median of {args.repeats} paired runs) {statistics.median(ratios):5.2f}x   "
        f"(range {ratios[0]:.2f}-{ratios[-1]:.2f})"
    )
    print(f"greedy tokens identical          {agree * 100:6.1f}%")


if __name__ == "__main__":
    main()
