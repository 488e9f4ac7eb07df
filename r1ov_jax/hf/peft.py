"""LoRA runs → HF: a PEFT adapter folder (``save_adapter``) or merged full weights (``save_merged``).

The adapter folder is what ``peft.PeftModel.from_pretrained(Qwen2_5_VLForConditionalGeneration, DIR)`` loads on
top of the base HF folder: ``adapter_config.json`` (LORA, r, lora_alpha, target_modules as one regex over
transformers 5.x runtime module names) and ``adapter_model.safetensors`` with
``base_model.model.<module>.lora_A.weight [r, in]`` / ``lora_B.weight [out, r]`` (torch Linear layout: our
``A [in, r]`` and ``B [r, out]`` transposed). PEFT scales by ``lora_alpha / r``, as qwix does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import numpy as np

from r1ov_jax.hf.io import save_pretrained, write_safetensors
from r1ov_jax.hf.mapping import ours_to_hf
from r1ov_jax.models import lora

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# the on-disk HF prefixes (hf.mapping) → transformers 5.x module names of Qwen2_5_VLForConditionalGeneration
_RUNTIME = ((re.compile(r"^visual\."), "model.visual."), (re.compile(r"^model\."), "model.language_model."))


def runtime_module_name(path: str) -> str:
    """Our module path (``language_model/layers/0/self_attn/q_proj``) → transformers' module name
    (``model.language_model.layers.0.self_attn.q_proj``), through the one HF name table."""
    name, kind = ours_to_hf(path.replace("/", ".") + ".kernel")
    if kind != "linear":
        raise ValueError(f"{path}: LoRA export supports linear layers, not {kind!r} ({name})")
    name = name[: -len(".weight")]
    for pattern, repl in _RUNTIME:
        if pattern.match(name):
            return pattern.sub(repl, name, count=1)
    return name


def target_regex(names: list[str]) -> str:
    """One regex that fully matches exactly ``names`` (PEFT applies a string ``target_modules`` with
    ``re.fullmatch`` to every module name); layer indices are collapsed per module kind."""
    groups: dict[str, list[str]] = {}
    for n in names:
        m = re.match(r"^(.*?\.(?:layers|blocks)\.)(\d+)(\..*)$", n)
        key, idx = ((m.group(1), m.group(3)), m.group(2)) if m else ((n, ""), None)
        groups.setdefault(key, []).append(idx)
    parts = []
    for (head, tail), idxs in groups.items():
        if idxs == [None]:
            parts.append(re.escape(head))
        else:
            parts.append(f"{re.escape(head)}({'|'.join(sorted(set(idxs), key=int))}){re.escape(tail)}")
    return "|".join(f"(?:{p})" for p in parts)


def save_adapter(model, out_dir: str, *, base_name_or_path: str | None = None) -> str:
    """Writes the PEFT adapter folder of a LoRA ``model``; atomic like ``save_pretrained``."""
    if not lora.is_lora(model):
        raise ValueError("the model has no LoRA adapters: export merged weights instead")
    spec = lora.spec_of(model)
    pairs = lora.adapter_pairs(model)
    entries, names = [], []
    for path, (_, a, b) in sorted(pairs.items()):
        name = runtime_module_name(path)
        names.append(name)
        for suffix, x in (("lora_A", a), ("lora_B", b)):
            arr = np.ascontiguousarray(np.asarray(x).T)  # [r, in] / [out, r], torch Linear layout
            entries.append(
                (f"base_model.model.{name}.{suffix}.weight", arr.dtype, arr.shape, lambda v=arr: v)
            )
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_name_or_path,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": target_regex(names),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    if spec.base_qtype is not None:
        config["r1ov_base_qtype"] = spec.base_qtype  # informative: PEFT loads onto the unquantized base
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-adapter-", dir=parent)
    try:
        write_safetensors(os.path.join(tmp, ADAPTER_WEIGHTS), entries, metadata={"format": "pt"})
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(config, f, indent=2)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def save_merged(
    model, out_dir: str, max_shard_size: int | str = "5GB", *, side_files_from: str | None = None
):
    """Full HF weights with the adapters folded in (``lora.merged``); a plain model is saved as is."""
    return save_pretrained(lora.merged(model), out_dir, max_shard_size, side_files_from=side_files_from)


__all__ = ["save_adapter", "save_merged", "runtime_module_name", "target_regex"]
