"""``r1ov preflight``: prove a config fits a TPU topology before renting it (deviceless compile).

    r1ov preflight --config configs/qwen2_5_vl_7b_sft.py --topology v5p-64 [--stage sft|grpo|all] [--json PATH]

What it does, with no TPU attached (libtpu from ``pip install -e .[tpu]``) and no weights or data read:

1. the target's devices from ``jax.experimental.topologies.get_topology_desc`` (:func:`parse_topology` maps
   MaxText-style names: ``v4-N`` / ``v5p-N`` count TensorCores, two per megacore chip; ``v5e-N`` / ``v6e-N``
   count chips) and the config's ``(data, fsdp, tensor)`` mesh over them (``sharding.make_mesh``);
2. the abstract model (``nnx.eval_shape``), its optimizer state and batches of the configured shapes
   (:func:`sft_batch_shapes`, :func:`prompt_batch_shapes`, :func:`completion_shapes`) as ``ShapeDtypeStruct``s
   carrying the shardings the trainers give them (``param_shardings``, the ``shard_optimizer`` rule, the
   ``shard_batch`` rule);
3. ``.lower(...).compile()`` of **the trainers' own jitted functions** under the trainers' activation-sharding
   context: SFT ``train.sft.train_step``; GRPO the sampler ``rollout.sampler._generate_jit`` (prefill and the
   whole decode ``while_loop``), the reference / old log-prob pass ``train.grpo._logprobs_jit`` and the update
   ``train.grpo.grpo_update``.

Per stage (GRPO: per phase, then the step's peak) and per chip it reports XLA's ``memory_analysis()``
(arguments, outputs, temporaries; total = arguments + outputs − donated aliases + temporaries + program code),
the chip's HBM and whether it fits, ``cost_analysis()`` FLOPs per chip against the analytic model FLOPs
(:func:`analytic_flops`), XLA's cost-model time (``optimal_seconds``) and the MFU it implies at the chip's peak
bf16 FLOP/s. A GRPO phase also counts what stays resident on the chip while it runs (the policy, the frozen
reference copy and the optimizer state not among its arguments). A program that does not fit fails to compile
with RESOURCE_EXHAUSTED; that is reported as "does not fit" with the required and available bytes.

``model.attn_impl = "auto"`` resolves by the *host's* backend (XLA on this CPU machine); preflight resolves it
as the target would, i.e. compiles with ``"pallas"`` (the Mosaic kernels, lowered with the topology's first
device as the default device so they target its chip generation).

What the cost model counts (measured by :func:`pallas_flops_probe`): XLA's HLO ops, dots included; a Pallas
(Mosaic) custom call contributes the FLOPs of its ``pl.CostEstimate`` when the kernel gives one and 0 otherwise,
and a ``lax.while_loop`` body is counted once, not per iteration (the sampler's decode loop: its compiled count
covers the prefill and one decode step, so preflight scales the loop body by ``max_new_tokens`` — see
:func:`flops.rollout_flops`).
"""

# One namespace for callers (`from r1ov_jax import preflight; preflight.run(...)`); the modules, in the order data
# flows: topology -> shapes -> compile -> flops -> stages -> report.
from r1ov_jax.preflight.compile import PhaseReport, Target, bytes_in, compile_phase, make_target
from r1ov_jax.preflight.flops import COUNT_OPTIONS, analytic_flops, count_flops, pallas_flops_probe
from r1ov_jax.preflight.report import advice, cli, format_report, public_report, run, stage_summary
from r1ov_jax.preflight.shapes import (
    ParamCounts,
    PromptShape,
    abstract_model,
    abstract_optimizer,
    completion_shapes,
    model_config_for_target,
    param_counts,
    per_chip_bytes,
    place_batch,
    prompt_batch_shapes,
    prompt_shape,
    resolve_attn_impl,
    sft_batch_shapes,
)
from r1ov_jax.preflight.stages import preflight_grpo, preflight_sft
from r1ov_jax.preflight.topology import (
    GENERATIONS,
    GiB,
    Generation,
    Topology,
    parse_topology,
    topology_devices,
)

__all__ = [
    "COUNT_OPTIONS", "GENERATIONS", "Generation", "GiB", "ParamCounts", "PhaseReport", "PromptShape", "Target",
    "Topology", "abstract_model", "abstract_optimizer", "advice", "analytic_flops", "bytes_in", "cli",
    "compile_phase", "completion_shapes", "count_flops", "format_report", "make_target", "model_config_for_target",
    "pallas_flops_probe", "param_counts", "parse_topology", "per_chip_bytes", "place_batch", "preflight_grpo",
    "preflight_sft", "prompt_batch_shapes", "prompt_shape", "public_report", "resolve_attn_impl", "run",
    "sft_batch_shapes", "stage_summary", "topology_devices",
]  # fmt: skip
