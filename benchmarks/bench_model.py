"""Forward of a small VLM: our jit-compiled NNX Qwen2.5-VL vs transformers eager, same weights, same inputs.

Config (issue 3): text hidden 512 x 8 layers, vision 8 blocks, one 448x448 image (1024 patches, 256 image
tokens) + 64 text tokens, fp32 on CPU. Prints medians and the ratio measured in this run, and the max logit
difference (the two must compute the same function).

    python benchmarks/bench_model.py [--repeats 7]
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
from flax import nnx  # noqa: E402

from r1ov_jax import hf  # noqa: E402
from r1ov_jax.testing.hf_reference import IMG, V_END, V_START, hf_pixels, random_image  # noqa: E402


def hf_model():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=4096,
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
        ),
        vision_config=dict(
            depth=8,
            hidden_size=256,
            intermediate_size=768,
            num_heads=4,
            out_hidden_size=512,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            in_channels=3,
            window_size=112,
            fullatt_block_indexes=[3, 7],
            tokens_per_second=2,
        ),
        image_token_id=IMG,
        video_token_id=253,
        vision_start_token_id=V_START,
        vision_end_token_id=V_END,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def timeit(fn, repeats):
    fn()  # warm-up / compile
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ref = hf_model()
    d = tempfile.mkdtemp()
    ref.save_pretrained(d)
    ours = hf.from_pretrained(d)
    pv, thw = hf_pixels([random_image(448, 448, seed=0)])
    n = int(thw.prod()) // 4
    ids = np.array([[1, 2, 3, V_START] + [IMG] * n + [V_END] + list(range(10, 70))])
    mask = np.ones_like(ids)

    t_ids = torch.as_tensor(ids)
    kw = dict(
        input_ids=t_ids,
        attention_mask=torch.as_tensor(mask),
        pixel_values=torch.as_tensor(pv),
        image_grid_thw=torch.as_tensor(thw),
        mm_token_type_ids=(t_ids == IMG).int(),
    )

    def run_ref():
        with torch.no_grad():
            return ref(**kw).logits

    inputs = jax.tree.map(jax.numpy.asarray, ours.prepare_inputs(ids, mask, pv, thw))
    fwd = nnx.jit(lambda m, x: m.forward(**x))

    def run_ours():
        return jax.block_until_ready(fwd(ours, inputs))

    def run_call():  # the documented call: processor outputs in, logits out (prepare + cached jit)
        return jax.block_until_ready(ours(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=thw))

    diff = float(np.abs(np.asarray(run_ours()) - run_ref().numpy()).max())
    diff_call = float(np.abs(np.asarray(run_call()) - run_ref().numpy()).max())
    t_ref, t_ours = timeit(run_ref, args.repeats), timeit(run_ours, args.repeats)
    t_call = timeit(run_call, args.repeats)
    # host-side preparation (rope index, window geometry) is part of a real call: time it too
    t_prep = timeit(lambda: ours.prepare_inputs(ids, mask, pv, thw), args.repeats)
    print(f"tokens {ids.shape[1]}, patches {pv.shape[0]}, cpu threads {os.cpu_count()}")
    print(f"transformers eager   {t_ref * 1e3:8.1f} ms")
    print(f"ours jit             {t_ours * 1e3:8.1f} ms   (+ host prepare_inputs {t_prep * 1e3:.1f} ms)")
    print(f"ours model(...)      {t_call * 1e3:8.1f} ms   (the documented call, everything included)")
    print(f"speed-up             {t_ref / t_ours:8.2f}x   (incl. prepare: {t_ref / (t_ours + t_prep):.2f}x)")
    print(f"model(...) vs eager  {t_ref / t_call:8.2f}x")
    print(f"max |logits diff|    {diff:.2e} (forward), {diff_call:.2e} (model(...))")


if __name__ == "__main__":
    main()
