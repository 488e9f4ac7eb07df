"""Test-only helpers building tiny random transformers Qwen2.5-VL models (the parity references).

torch and transformers are test dependencies only; the library never imports them.
"""

from __future__ import annotations

import numpy as np

VOCAB, V_START, V_END, IMG, VID = 256, 250, 251, 252, 253


def tiny_hf_config(*, window_size=56, fullatt=(1,), depth=2, tie=False, layers=2, attn="eager", kv_heads=2):
    from transformers import Qwen2_5_VLConfig

    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=kv_heads,
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=depth,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            out_hidden_size=64,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            in_channels=3,
            window_size=window_size,
            fullatt_block_indexes=list(fullatt),
            tokens_per_second=2,
        ),
        image_token_id=IMG,
        video_token_id=VID,
        vision_start_token_id=V_START,
        vision_end_token_id=V_END,
        tie_word_embeddings=tie,
    )
    cfg._attn_implementation = attn
    cfg.text_config._attn_implementation = attn
    cfg.vision_config._attn_implementation = attn
    return cfg


def tiny_hf_model(seed=0, scale=1.0, **cfg_kw):
    """Random model with randomized biases and norm weights too (zeros/ones would hide mapping bugs)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_hf_config(**cfg_kw)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(scale)
    return model


def random_image(h, w, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def hf_pixels(images, **kw):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Qwen2VLImageProcessorPil(**kw)(images=images, return_tensors="np")
    return np.asarray(out["pixel_values"], np.float32), np.asarray(out["image_grid_thw"], np.int64)


def build_ids(segments, grids, merge=2):
    """Token ids from a list of segments: ints are text tokens, "img" inserts the next image's pads
    wrapped in vision start/end."""
    ids, k = [], 0
    for s in segments:
        if s == "img":
            t, h, w = grids[k]
            ids += [V_START] + [IMG] * int(t * h * w // merge**2) + [V_END]
            k += 1
        else:
            ids.append(int(s))
    return ids


def hf_forward(model, input_ids, attention_mask, pixel_values=None, image_grid_thw=None, position_ids=None):
    """transformers forward with mm_token_type_ids (without it 5.x silently uses 1D positions)."""
    import torch

    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    kw = dict(
        input_ids=ids,
        attention_mask=torch.as_tensor(np.asarray(attention_mask), dtype=torch.long),
        mm_token_type_ids=(ids == IMG).int(),
        output_hidden_states=True,
    )
    if pixel_values is not None:
        kw["pixel_values"] = torch.as_tensor(pixel_values)
        kw["image_grid_thw"] = torch.as_tensor(image_grid_thw)
    if position_ids is not None:
        kw["position_ids"] = torch.as_tensor(np.asarray(position_ids), dtype=torch.long)
    with torch.no_grad():
        return model(**kw)
