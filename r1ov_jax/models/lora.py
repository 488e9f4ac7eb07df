"""LoRA and QLoRA adapters on Qwen2.5-VL through qwix (``LoraProvider``), with merge and reference views.

``apply_lora(model, spec)`` returns a new model whose targeted ``Dense`` kernels gain ``kernel_lora_a [in, r]``
and ``kernel_lora_b [r, out]`` (``nnx.LoRAParam``; B starts at zero, so the adapted model equals the base
exactly). With ``spec.base_qtype`` ("int8" | "nf4") qwix also quantizes the base kernels it adapts (QLoRA).

Why the adapters are applied per tower (``model.language_model``, ``model.visual``) and not on the whole
model: qwix intercepts exactly one method of the module it is given, while training and sampling enter the
model through several (``forward``, ``embed`` + ``decoder``, ``prefill``/``decode``). Every one of them goes
through the two towers' ``__call__``, so intercepting those covers all entry points. See docs/LORA.md.

``spec.targets`` are regular expressions over module paths of the whole model (e.g.
``language_model/layers/3/self_attn/q_proj``); a target that matches no module is an error.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

DECODER_TARGETS = (r"language_model/layers/\d+/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)",)
VISION_TARGETS = (r"visual/blocks/\d+/(attn/(qkv|proj)|mlp/(gate|up|down)_proj)", r"visual/merger/mlp(0|2)")
TOWERS = ("language_model", "visual")  # the submodules qwix intercepts (their __call__)
QTYPES = {"int8": jnp.int8, "nf4": "nf4"}
NF4_TILE = 64  # the QLoRA paper's block size for NF4 absmax scales


class LoraConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """What ``model.lora`` asks for. ``rank = 0`` means no adapters (full fine-tuning)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DECODER_TARGETS
    base_qtype: str | None = None  # None | "int8" | "nf4" (QLoRA: the adapted base kernels are quantized)

    def __post_init__(self):
        from r1ov_jax.errors import InvalidInputError

        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise InvalidInputError(f"model.lora.rank must be an integer >= 0, got {self.rank!r}")
        if float(self.dropout) != 0.0:
            # qwix applies LoRA dropout unconditionally (also while sampling, evaluating and in the old-policy
            # / reference passes) from an RNG stream stored in every module: see docs/LORA.md
            raise InvalidInputError(
                f"model.lora.dropout={self.dropout!r}: only 0.0 is supported (qwix's LoRA dropout is never "
                "switched off for sampling and evaluation; docs/LORA.md)"
            )
        if self.base_qtype not in (None, *QTYPES):
            raise InvalidInputError(
                f"model.lora.base_qtype must be one of None, {sorted(QTYPES)}, got {self.base_qtype!r}"
            )
        if self.enabled and not self.targets:
            raise InvalidInputError("model.lora.targets is empty: name at least one module path regex")
        for t in self.targets:
            try:
                re.compile(t)
            except re.error as e:
                raise InvalidInputError(
                    f"model.lora.targets: {t!r} is not a regular expression ({e})"
                ) from None

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    @classmethod
    def from_config(cls, lc) -> LoraSpec:
        """From the ``model.lora`` ConfigDict (or a plain dict; missing fields take the defaults)."""
        if lc is None:
            return cls()
        d = dict(lc)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            from r1ov_jax.errors import InvalidInputError

            raise InvalidInputError(f"model.lora has unknown fields {sorted(unknown)}")
        if "targets" in d:
            t = d["targets"]
            d["targets"] = (t,) if isinstance(t, str) else tuple(t)
        if d.get("base_qtype") in ("", "none", "None"):
            d["base_qtype"] = None
        if "alpha" in d:
            d["alpha"] = float(d["alpha"])
        if "dropout" in d:
            d["dropout"] = float(d["dropout"])
        return cls(**d)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}


# ------------------------------------------------------------------------------------------ module paths
def _path_str(path) -> str:
    return "/".join(str(p) for p in path)


def adapted_modules(model: nnx.Module, targets) -> list[str]:
    """Paths (of the whole model) of the ``Dense`` modules that ``targets`` select; error on a dead target."""
    from r1ov_jax.errors import InvalidInputError
    from r1ov_jax.layers.basic import Dense

    dense = [_path_str(p) for p, m in model.iter_modules() if isinstance(m, Dense)]
    chosen = []
    for t in targets:
        hits = [p for p in dense if re.fullmatch(t, p)]
        if not hits:
            raise InvalidInputError(
                f"model.lora.targets: {t!r} matches no linear layer (e.g. {dense[0]!r}, {dense[-1]!r})"
            )
        chosen += [p for p in hits if p not in chosen]
    return chosen


def _tower_rules(spec: LoraSpec, model, paths: list[str], tower: str) -> list[qwix.LoraRule]:
    """qwix rules for one tower; NF4 scales per 64-row tile where the input dim allows, else per channel."""
    rel = [p[len(tower) + 1 :] for p in paths if p.startswith(tower + "/")]
    modules = {_path_str(p): m for p, m in getattr(model, tower).iter_modules()}
    groups: dict[int | None, list[str]] = {}
    for p in rel:
        tile = None
        if spec.base_qtype == "nf4" and modules[p].kernel.shape[0] % NF4_TILE == 0:
            tile = NF4_TILE
        groups.setdefault(tile, []).append(p)
    rules = []
    for tile, group in groups.items():
        kw = {} if spec.base_qtype is None else dict(weight_qtype=QTYPES[spec.base_qtype], tile_size=tile)
        # one exact alternation: the user's regexes were already matched on full paths (adapted_modules)
        pattern = "|".join(re.escape(p) for p in group)
        rules.append(
            qwix.LoraRule(module_path=pattern, rank=spec.rank, alpha=spec.alpha, dropout=spec.dropout, **kw)
        )
    return rules


def _tower_inputs(model, tower: str):
    """Smallest inputs that run a tower once (qwix creates the adapters on a first call)."""
    cfg = model.cfg
    if tower == "language_model":
        length = 2
        x = jnp.zeros((1, length, cfg.text.hidden_size), cfg.dtype)
        pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (3, 1, length))
        return (x, pos, jnp.ones((1, length), jnp.int32)), {}
    merge = cfg.vision.spatial_merge_size
    ids = np.array([[cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id]], np.int32)
    grid = np.array([[1, merge, merge]])
    pixels = np.zeros((merge * merge, cfg.vision.patch_dim), np.float32)
    inputs = model.prepare_inputs(ids, None, pixels, grid)
    return (jnp.asarray(inputs["pixel_values"]), jax.tree.map(jnp.asarray, inputs["vision"])), {}


# ------------------------------------------------------------------------------------------ building
def apply_lora(model: nnx.Module, spec: LoraSpec, *, seed: int = 0) -> nnx.Module:
    """A new model with adapters on ``spec.targets`` (``model`` itself is left as it was).

    The base weights must already be loaded: for QLoRA qwix quantizes them on the first call.
    """
    if not spec.enabled:
        return model
    if is_lora(model):
        raise LoraConfigError("the model already has adapters: merge them first (lora.merged)")
    paths = adapted_modules(model, spec.targets)
    model = nnx.clone(model)
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    # remat/scan-free first call: adapters are created eagerly, outside any nnx transform
    runtime = dict(remat=model.cfg.remat, scan_layers=model.cfg.scan_layers)
    model.cfg = model.cfg.replace(remat="none", scan_layers=False)
    for tower in TOWERS:
        rules = _tower_rules(spec, model, paths, tower)
        if not rules:
            continue
        sub = getattr(model, tower)
        sub.cfg = model.cfg
        args, kw = _tower_inputs(model, tower)
        provider = qwix.LoraProvider(rules)
        setattr(model, tower, qwix.apply_lora_to_model(sub, provider, *args, rngs=rngs, **kw))
    model.cfg = model.cfg.replace(**runtime)
    for tower in TOWERS:
        getattr(model, tower).cfg = model.cfg
    _name_adapter_axes(model)
    model.lora_spec = spec
    return model


def _name_adapter_axes(model: nnx.Module) -> None:
    """qwix copies the kernel's metadata onto A and B unchanged; our sharding reads ``logical_axes``, so A gets
    (in axis, None) and B (None, out axis): the rank dimension is never sharded."""
    for _, m in model.iter_modules():
        a, b = getattr(m, "kernel_lora_a", None), getattr(m, "kernel_lora_b", None)
        if a is None:
            continue
        axes = _kernel_axes(m)
        a.set_metadata("logical_axes", (axes[0], None))
        b.set_metadata("logical_axes", (None, axes[1]))


def _kernel_axes(m) -> tuple:
    k = m.kernel
    if isinstance(k, nnx.Variable):
        return tuple(k.get_metadata()["logical_axes"])
    return tuple(k.array.qvalue.get_metadata()["logical_axes"])  # QLoRA: WithAux(QArray(boxed qvalue))


def is_lora(model: nnx.Module) -> bool:
    return getattr(model, "lora_spec", None) is not None


def spec_of(model: nnx.Module) -> LoraSpec:
    return getattr(model, "lora_spec", None) or LoraSpec()


def trainable(model: nnx.Module):
    """The nnx filter of what training updates: the adapters of a LoRA model, else every parameter."""
    return nnx.LoRAParam if is_lora(model) else nnx.Param


def adapter_state(model: nnx.Module) -> nnx.State:
    return nnx.state(model, nnx.LoRAParam)


def adapter_pairs(model: nnx.Module) -> dict[str, tuple[Any, Any, Any]]:
    """{module path: (module, A, B)} for every adapted linear layer."""
    out = {}
    for path, m in model.iter_modules():
        if getattr(m, "kernel_lora_a", None) is not None:
            out[_path_str(path)] = (m, m.kernel_lora_a[...], m.kernel_lora_b[...])
    return out


def base_kernel(m) -> jax.Array:
    """The kernel the adapted forward uses: the parameter itself, or qwix's dequantized QLoRA weight."""
    k = m.kernel
    if isinstance(k, nnx.Variable):
        return k[...]
    from qwix._src.core import qarray

    return qarray.dequantize(jax.tree.map(lambda v: v[...] if isinstance(v, nnx.Variable) else v, k.array))


# ------------------------------------------------------------------------------------------ views
def merged(model: nnx.Module) -> nnx.Module:
    """A plain model (no adapters, no quantization) with ``W + A @ B * alpha / r`` in every adapted kernel
    (QLoRA: W is the dequantized kernel the adapted forward uses). A model without adapters is returned as is."""
    return _plain(model, with_adapters=True)


def base_model(model: nnx.Module) -> nnx.Module:
    """The frozen base of a LoRA model as a plain model (QLoRA: dequantized kernels)."""
    return _plain(model, with_adapters=False)


def _plain(model: nnx.Module, *, with_adapters: bool) -> nnx.Module:
    from r1ov_jax.hf.io import abstract_model

    if not is_lora(model):
        return model
    spec = spec_of(model)
    plain = abstract_model(model.cfg)
    pairs = adapter_pairs(model)
    plain_modules = {_path_str(p): m for p, m in plain.iter_modules()}
    lora_modules = {_path_str(p): m for p, m in model.iter_modules()}
    for path, m in plain_modules.items():
        src = lora_modules[path]
        for name, var in list(vars(m).items()):
            if not isinstance(var, nnx.Param):
                continue
            if name == "kernel" and path in pairs:
                _, a, b = pairs[path]
                w = base_kernel(src).astype(jnp.float32)
                if with_adapters:
                    w = w + (a.astype(jnp.float32) @ b.astype(jnp.float32)) * spec.scale
                value = w.astype(a.dtype)  # qwix gives A the base kernel's (or QLoRA scale's) dtype
            else:
                value = getattr(src, name)[...]
            var.set_value(jnp.asarray(value))
    return plain


class AdaptersOff(nnx.Module):
    """The frozen base of a LoRA policy: the policy's own weights with the adapters switched off.

    It holds the policy (a shared reference, not a copy) and, at trace time, merges the policy's graph with
    zeroed B matrices, so a jitted reference pass reads the same base buffers the policy trains on. GRPO's
    reference log-probs use it in place of a frozen second model.
    """

    def __init__(self, policy: nnx.Module):
        if not is_lora(policy):
            raise LoraConfigError("AdaptersOff needs a LoRA model")
        self.policy = policy

    def base(self) -> nnx.Module:
        graphdef, adapters, rest = nnx.split(self.policy, nnx.LoRAParam, ...)
        off = jax.tree.map(jnp.zeros_like, adapters)
        return nnx.merge(graphdef, off, rest)

    # the model surface the trainers' log-prob passes use
    @property
    def cfg(self):
        return self.policy.cfg

    def set_runtime(self, **options) -> "AdaptersOff":
        self.policy.set_runtime(**options)  # one config: the policy's
        return self

    def embed(self, *a, **k):
        return self.base().embed(*a, **k)

    def decoder(self, *a, **k):
        return self.base().decoder(*a, **k)

    def decoder_outputs(self, *a, **k):
        return self.base().decoder_outputs(*a, **k)

    def forward(self, *a, **k):
        return self.base().forward(*a, **k)

    def output_projection(self):
        return self.base().output_projection()

    def logits(self, hidden):
        return self.base().logits(hidden)
