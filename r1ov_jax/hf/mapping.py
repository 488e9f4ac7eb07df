"""One table HF ⇄ NNX for Qwen2.5-VL weights, used by import *and* export.

HF names are the on-disk ("legacy hub") layout that transformers 5.x still writes: ``visual.*``, ``model.*``,
``lm_head.weight``. The 5.x runtime layout (``model.visual.*``, ``model.language_model.*``) and the 4.x
layouts are normalized to it on import. Transforms: torch ``Linear`` (out, in) ⇄ our kernel (in, out);
``Conv3d`` (D, C, T, P, P) ⇄ patch-embedding kernel (C*T*P*P, D); everything else is copied. ``to_ours`` applies
a transform on import; export applies its inverse while gathering (``hf.io._gather_hf``).
"""

from __future__ import annotations

import re


# (our NNX path, HF name, transform); "{i}" stands for a layer/block index.
RULES: tuple[tuple[str, str, str], ...] = (
    ("visual.patch_embed.kernel", "visual.patch_embed.proj.weight", "conv"),
    ("visual.blocks.{i}.norm1.scale", "visual.blocks.{i}.norm1.weight", "copy"),
    ("visual.blocks.{i}.norm2.scale", "visual.blocks.{i}.norm2.weight", "copy"),
    ("visual.blocks.{i}.attn.qkv.kernel", "visual.blocks.{i}.attn.qkv.weight", "linear"),
    ("visual.blocks.{i}.attn.qkv.bias", "visual.blocks.{i}.attn.qkv.bias", "copy"),
    ("visual.blocks.{i}.attn.proj.kernel", "visual.blocks.{i}.attn.proj.weight", "linear"),
    ("visual.blocks.{i}.attn.proj.bias", "visual.blocks.{i}.attn.proj.bias", "copy"),
    ("visual.blocks.{i}.mlp.{p}.kernel", "visual.blocks.{i}.mlp.{p}.weight", "linear"),
    ("visual.blocks.{i}.mlp.{p}.bias", "visual.blocks.{i}.mlp.{p}.bias", "copy"),
    ("visual.merger.ln_q.scale", "visual.merger.ln_q.weight", "copy"),
    ("visual.merger.mlp0.kernel", "visual.merger.mlp.0.weight", "linear"),
    ("visual.merger.mlp0.bias", "visual.merger.mlp.0.bias", "copy"),
    ("visual.merger.mlp2.kernel", "visual.merger.mlp.2.weight", "linear"),
    ("visual.merger.mlp2.bias", "visual.merger.mlp.2.bias", "copy"),
    ("language_model.embed_tokens.embedding", "model.embed_tokens.weight", "copy"),
    ("language_model.layers.{i}.self_attn.{p}.kernel", "model.layers.{i}.self_attn.{p}.weight", "linear"),
    ("language_model.layers.{i}.self_attn.{p}.bias", "model.layers.{i}.self_attn.{p}.bias", "copy"),
    ("language_model.layers.{i}.mlp.{p}.kernel", "model.layers.{i}.mlp.{p}.weight", "linear"),
    ("language_model.layers.{i}.input_layernorm.scale", "model.layers.{i}.input_layernorm.weight", "copy"),
    (
        "language_model.layers.{i}.post_attention_layernorm.scale",
        "model.layers.{i}.post_attention_layernorm.weight",
        "copy",
    ),
    ("language_model.norm.scale", "model.norm.weight", "copy"),
    ("lm_head.kernel", "lm_head.weight", "linear"),
)

_HOLES = {"{i}": r"(?P<i>\d+)", "{p}": r"(?P<p>[a-z]_proj|gate_proj|up_proj|down_proj)"}


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for hole, group in _HOLES.items():
        pattern = pattern.replace(re.escape(hole), group)
    return re.compile(pattern + "$")


_OURS = [(_compile(o), h, t) for o, h, t in RULES]
_HF = [(_compile(h), o, t) for o, h, t in RULES]

# Other HF layouts → the on-disk layout above (transformers 5.x runtime names; 4.52-era names are the same).
_HF_ALIASES = (
    (re.compile(r"^model\.visual\."), "visual."),
    (re.compile(r"^model\.language_model\."), "model."),
)


def _fill(template: str, m: re.Match) -> str:
    out = template
    for name, value in m.groupdict().items():
        out = out.replace("{" + name + "}", value)
    return out


def normalize_hf_name(name: str) -> str:
    for pattern, repl in _HF_ALIASES:
        name = pattern.sub(repl, name)
    return name


def ours_to_hf(path: str) -> tuple[str, str]:
    """Our dotted NNX path → (HF on-disk name, transform). KeyError when the path has no HF counterpart."""
    for pattern, template, kind in _OURS:
        m = pattern.match(path)
        if m:
            return _fill(template, m), kind
    raise KeyError(path)


def hf_to_ours(name: str) -> tuple[str, str] | None:
    """HF tensor name (any supported layout) → (our NNX path, transform); None for unknown tensors."""
    name = normalize_hf_name(name)
    for pattern, template, kind in _HF:
        m = pattern.match(name)
        if m:
            return _fill(template, m), kind
    return None


def to_ours(value, kind: str, target_shape: tuple[int, ...]):
    """HF tensor → our layout (works on NumPy and JAX arrays)."""
    if kind == "linear":
        value = value.T
    elif kind == "conv":
        value = value.reshape(value.shape[0], -1).T
    if tuple(value.shape) != tuple(target_shape):
        raise ValueError(
            f"shape {tuple(value.shape)} after '{kind}' transform, expected {tuple(target_shape)}"
        )
    return value
