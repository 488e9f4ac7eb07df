"""Config → running stage: the glue behind ``r1ov sft``, ``r1ov grpo`` and ``r1ov demo``.

Config layout (see ``configs/``)::

    data.train / data.eval      ArrayRecord shard folders (``r1ov synth`` output) or files
    pipeline                    r1ov_jax.data.pipeline config (pixels, seq_len, packing, prompts)
    tokenizer.path              HF folder / sentencepiece model; empty = the model's own (model.hf_path)
    model                       preset or hf_path, dtype, attention impl, remat
    sft.optim / sft.train       SFT stage;   rl.optim / rl.train / rl.grpo / rl.rewards / rl.init_from   GRPO stage
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
from flax import nnx

from r1ov_jax import runs
from r1ov_jax.data.pipeline import grpo_dataset, image_processor, prompt_format, sft_dataset
from r1ov_jax.data.record import shard_paths
from r1ov_jax.processing.tokenizer import Tokenizer
from r1ov_jax.train import grpo as grpo_lib
from r1ov_jax.train import sft as sft_lib
from r1ov_jax.models import lora
from r1ov_jax.train.builders import build_model, with_adapters
from r1ov_jax.train.loop import default_train_config

log = logging.getLogger(__name__)
from r1ov_jax.errors import InvalidInputError, MissingInputError


def data_paths(spec: str) -> list[str]:
    if not spec:
        raise InvalidInputError("data path is empty: set --config.data.train=DIR (an `r1ov synth` output)")
    if os.path.isdir(spec):
        paths = shard_paths(spec)
        if not paths:
            raise MissingInputError(f"{spec}: no ArrayRecord shards inside")
        return paths
    if not os.path.exists(spec):
        raise MissingInputError(f"data {spec} does not exist")
    return [spec]


def load_tokenizer(cfg: ml_collections.ConfigDict) -> Tokenizer:
    path = cfg.tokenizer.path or cfg.model.hf_path
    if not path:
        raise InvalidInputError(
            "no tokenizer: set tokenizer.path (HF folder or sentencepiece .model) or model.hf_path"
        )
    if path.endswith(".model"):
        return Tokenizer.from_sentencepiece(path)
    return Tokenizer.from_pretrained(path)


def per_process(pipeline_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``pipeline.batch_size`` / ``prompt_batch_size`` are global; each process builds its share."""
    n = jax.process_count()
    cfg = pipeline_cfg.copy_and_resolve_references()
    for key in ("batch_size", "prompt_batch_size"):
        if cfg[key] % n:
            raise InvalidInputError(f"pipeline.{key}={cfg[key]} is not divisible by the {n} processes")
        cfg[key] = cfg[key] // n
    return cfg


def make_mesh_if_needed(cfg: ml_collections.ConfigDict):
    """The mesh of ``cfg.mesh``; None for a plain single-device run (mesh 1x1x1 or no mesh section)."""
    from r1ov_jax.sharding import initialize_distributed, make_mesh

    initialize_distributed()
    mc = cfg.get("mesh")
    if mc is None or (mc.data, mc.fsdp, mc.tensor) == (1, 1, 1):
        return None
    return make_mesh(mc.data, mc.fsdp, mc.tensor)


def stage_config(cfg: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    """The flat view a trainer reads: ``optim``, ``train`` (+ ``grpo``) of one stage."""
    s = cfg[stage]
    view = ml_collections.ConfigDict({"optim": s.optim, "train": s.train})
    if stage == "rl":
        view.grpo = s.grpo
        view.rewards, view.reward_fns = s.get("rewards"), s.get("reward_fns")
    return view


def check_batch_split(mesh, what: str, rows: int) -> None:
    """At start-up, before weights are read: a batch the mesh's batch shards do not divide stops a multi-process
    run (`sharding.batch_split_problem`) and is replicated (a warning) on one process."""
    from r1ov_jax.sharding import batch_split_problem

    problem = mesh is not None and batch_split_problem(what, int(rows), dict(mesh.shape), jax.process_count())
    if problem:
        fatal, msg = problem
        if fatal:
            raise InvalidInputError(msg)
        log.warning("%s", msg)


def run_sft_stage(cfg: ml_collections.ConfigDict, out_dir: str | None = None, progress: bool = True) -> dict:
    out_dir = out_dir or cfg.sft.train.out_dir
    mesh = make_mesh_if_needed(cfg)
    check_batch_split(mesh, "pipeline.batch_size", cfg.pipeline.batch_size)
    tok = load_tokenizer(cfg)
    model = build_model(cfg.model, tok)
    geometry = model.cfg.vision.geometry()
    runs.create(
        out_dir, model, tok, image_processor(cfg.pipeline, geometry), stage="sft", base=cfg.model.hf_path or None,
        prompt_format=prompt_format(cfg.pipeline, "prompt"),
    )  # fmt: skip
    train_ds = sft_dataset(
        data_paths(cfg.data.train),
        tok,
        per_process(cfg.pipeline),
        geometry=geometry,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    eval_batches = None
    if cfg.data.get("eval"):
        ev_cfg = per_process(cfg.pipeline)
        ev_cfg.shuffle, ev_cfg.num_epochs = False, 1
        it = iter(
            sft_dataset(
                data_paths(cfg.data.eval),
                tok,
                ev_cfg,
                geometry=geometry,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
        )
        eval_batches = [b for _, b in zip(range(cfg.sft.eval_batches), it)]
    return sft_lib.run_sft(
        model,
        iter(train_ds),
        stage_config(cfg, "sft"),
        out_dir=out_dir,
        eval_batches=eval_batches,
        progress=progress,
        mesh=mesh,
    )


def run_grpo_stage(cfg: ml_collections.ConfigDict, out_dir: str | None = None, progress: bool = True) -> dict:
    out_dir = out_dir or cfg.rl.train.out_dir
    # options and rewards checked (user rewards imported and dry-run) before anything is built
    opts, _ = grpo_lib.check_config(stage_config(cfg, "rl"), cfg.pipeline.prompt_batch_size)
    mesh = make_mesh_if_needed(cfg)
    check_batch_split(mesh, "pipeline.prompt_batch_size", cfg.pipeline.prompt_batch_size)
    if cfg.rl.init_from:  # an SFT run directory (the paper starts RL from the SFT model)
        loaded = runs.load(cfg.rl.init_from, attn_impl=cfg.model.attn_impl, remat=cfg.model.remat)
        loaded.model.set_runtime(scan_layers=bool(cfg.model.scan_layers))
        model, tok = with_adapters(loaded.model, cfg.model), loaded.tokenizer or load_tokenizer(cfg)
    else:
        tok = load_tokenizer(cfg)
        model = build_model(cfg.model, tok)
    geometry = model.cfg.vision.geometry()
    if cfg.pipeline.max_prompt_len is None or cfg.pipeline.max_prompt_patches is None:
        log.warning(
            "pipeline.max_prompt_len / max_prompt_patches unset: prompt shapes are unbounded and the sampler "
            "recompiles whenever the longest prompt or image of a batch changes (minutes per step on a pod)"
        )
    runs.create(
        out_dir, model, tok, image_processor(cfg.pipeline, geometry), stage="grpo",
        base=cfg.rl.init_from or cfg.model.hf_path or None, prompt_format=prompt_format(cfg.pipeline, "prompt"),
    )  # fmt: skip
    ref = None  # the frozen SFT policy for the KL term (β > 0); with LoRA the policy itself, adapters off
    if opts.needs_reference:
        ref = lora.AdaptersOff(model) if lora.is_lora(model) else nnx.clone(model)
    prompts = grpo_dataset(
        data_paths(cfg.data.rl or cfg.data.train),
        tok,
        per_process(cfg.pipeline),
        geometry=geometry,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    def decode(ids):
        return tok.decode([int(i) for i in ids], skip_special_tokens=True)

    return grpo_lib.run_grpo(
        model,
        ref,
        iter(prompts),
        decode,
        stage_config(cfg, "rl"),
        out_dir=out_dir,
        eos_ids=(tok.eos_id,),
        pad_id=tok.pad_id,
        progress=progress,
        mesh=mesh,
    )


def run_stage(kind: str, cfg: ml_collections.ConfigDict) -> dict:
    if kind == "sft":
        return run_sft_stage(cfg)
    if kind == "grpo":
        return run_grpo_stage(cfg)
    raise InvalidInputError(f"unknown stage {kind!r}")


def base_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with neutral defaults; configs/*.py start from it and override."""
    from r1ov_jax.data.pipeline import default_pipeline_config
    from r1ov_jax.train.builders import default_model_config
    from r1ov_jax.train.optim import default_optim_config

    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict(dict(train="", eval="", rl=""))
    cfg.pipeline = default_pipeline_config()
    cfg.tokenizer = ml_collections.ConfigDict(dict(path=""))
    from r1ov_jax.sharding import default_mesh_config

    cfg.mesh = default_mesh_config()  # data=-1: pure data parallel over all devices by default
    cfg.model = default_model_config()
    cfg.sft = ml_collections.ConfigDict(
        dict(optim=default_optim_config(), train=default_train_config(), eval_batches=8)
    )
    cfg.sft.train.out_dir = "runs/sft"
    cfg.rl = ml_collections.ConfigDict(
        dict(
            optim=default_optim_config(),
            train=default_train_config(),
            grpo=grpo_lib.default_grpo_config(),
            rewards={"format": 1.0, "accuracy": 1.0},  # reward name -> weight (rewards.registry)
            reward_fns={},  # reward name -> "module:function" for user rewards
            init_from="",
        )
    )
    cfg.rl.train.out_dir = "runs/grpo"
    cfg.rl.optim.lr = 1e-6
    return cfg
