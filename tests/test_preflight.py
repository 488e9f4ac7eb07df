"""``r1ov preflight``: deviceless TPU compiles of the trainers' own step functions (needs libtpu, no TPU)."""

import importlib.util
import json

import jax
import jax.numpy as jnp

import pytest
from flax import nnx

from r1ov_jax import preflight
from r1ov_jax.cli import main
from r1ov_jax.config_utils import load_config
from r1ov_jax.errors import InvalidInputError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (.[tpu])")

TINY = ["--config", "configs/tiny_cpu.py", "--config.mesh.data=-1"]


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def test_parse_topology():
    t = preflight.parse_topology("v5p-64")
    assert (t.chips, t.topology_name, t.generation.chip_config) == (32, "v5p:2x4x4", "megacore")
    assert preflight.parse_topology("v4-8").chips == 4
    assert preflight.parse_topology("v5e-256").topology_name == "v5e:16x16"
    assert preflight.parse_topology("v6e-64").hbm_bytes == 32 * preflight.GiB
    for bad in ("v5p-63", "v7-8", "tpu"):
        with pytest.raises(InvalidInputError):
            preflight.parse_topology(bad)


def test_tiny_fits_v5e8_json(tmp_path, capsys):
    """The tiny config fits on v5e-8 (SFT and every GRPO phase); --json has the documented schema."""
    out = tmp_path / "pf.json"
    # the paper's preset (beta > 0): rollout, reference log-probs and update all compile. Unrolled layers: one
    # counting compile per phase (the scans' extra compiles are tested in test_scanned_blocks_counted_like_unrolled)
    argv = ["preflight", *TINY, "--config.rl.grpo.preset=grpo", "--config.model.scan_layers=False",
            "--topology", "v5e-8", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "sft" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert {"topology", "chips", "hbm_bytes_per_chip", "stages"} <= set(report)
    assert (report["topology"], report["chips"]) == ("v5e-8", 8)
    assert report["distinct_compiled_shapes"] == {"sft": 1, "grpo": 1}
    for name in ("sft", "grpo", "grpo/rollout", "grpo/logprobs", "grpo/update"):
        s = report["stages"][name]
        assert {
            "fits",
            "bytes_per_chip",
            "flops_per_chip",
            "model_flops",
            "est_step_seconds",
            "est_mfu",
        } <= set(s)
        assert set(s["bytes_per_chip"]) >= {"arguments", "outputs", "temporaries", "total"}
        assert s["fits"] and 0 < s["bytes_per_chip"]["total"] < report["hbm_bytes_per_chip"]
        assert s["flops_per_chip"] > 0 and s["model_flops"] > 0


@pytest.mark.parametrize("preset, iterations", [("gspo", 2)])
def test_grpo_update_compiled_with_resolved_preset(monkeypatch, preset, iterations):
    """Preflight lowers the update with the preset's beta / epsilon / loss options as policy_updates calls it;
    beta = 0 builds no reference, and the log-prob phase exists only for off-policy old log-probs."""
    from r1ov_jax.train import grpo

    seen = {}
    real = grpo.grpo_update

    class Spy:
        def lower(self, *args, **kw):
            seen["args"], seen["kw"] = args, kw
            return real.lower(*args, **kw)

    monkeypatch.setattr(grpo, "grpo_update", Spy())
    cfg = load_config(
        "configs/tiny_cpu.py",
        ["mesh.data=-1", f"rl.grpo.preset={preset}", f"rl.grpo.num_iterations={iterations}"],
    )
    report = preflight.run(cfg, "v5e-8", "grpo", loop_flops=False)  # (the FLOP count is tested above)
    opts = grpo.resolve_options(cfg.rl.grpo, cfg.pipeline.prompt_batch_size)
    kw, args = seen["kw"], seen["args"]
    assert kw["beta"] == 0.0 and kw["epsilon"] == opts.epsilon and kw["options"] == opts.loss
    assert kw["options"].epsilon_high == {"dapo": 0.28, "gspo": 4e-4}[preset]
    assert kw["options"].loss_agg == {"dapo": "token-mean", "gspo": "seq-mean-token-mean"}[preset]
    assert args[6] is None  # ref_logp: no reference pass at beta = 0
    assert (args[5] is None) == (iterations == 1) and kw["first_iteration"] == (iterations == 1)
    assert ("grpo/logprobs" in report["stages"]) == (iterations > 1)
    assert report["stages"]["grpo"]["fits"]


def test_scanned_blocks_counted_like_unrolled():
    """XLA counts a loop body once; count_flops' x2-unroll compiles add the other scanned bodies, so a
    scanned program reports the unrolled program's compiled FLOPs (tiny model forward with an image per row on
    v5e-8, batch sharded over data; the SFT step runs the same helper in test_paper_7b_sft_fits_v5p64's
    config)."""
    from r1ov_jax.sharding import make_mesh, rules_for

    cfg = load_config("configs/tiny_cpu.py", ["pipeline.batch_size=8"])
    mcfg = preflight.model_config_for_target(cfg.model)
    mesh = make_mesh(8, 1, 1, devices=preflight.topology_devices(preflight.parse_topology("v5e-8")))
    batch = preflight.place_batch(preflight.sft_batch_shapes(cfg.pipeline, mcfg.vision.geometry()), mesh)
    keys = ("input_ids", "segment_ids", "positions", "pixel_values", "vision")

    @nnx.jit
    def forward(m, b):
        return m.forward(**{k: b[k] for k in keys}).sum()

    reps = {}
    for scan in (False, True):
        model = preflight.abstract_model(mcfg.replace(scan_layers=scan), mesh)
        target = preflight.Target(None, mesh, model.cfg, rules_for(mcfg, mesh), model, None, None)

        def lower():
            with target.ctx():
                return forward.lower(model, batch)

        reps[scan], _ = preflight.compile_phase("forward", lower)
        counted = reps[scan].flops_per_chip
        preflight.count_flops(reps[scan], lower, [model], target)
    assert reps[True].flops_per_chip == pytest.approx(reps[False].flops_per_chip, rel=0.02)
    assert counted < 0.8 * reps[False].flops_per_chip  # the cost model alone on the scanned program
    assert "per scanned body" in reps[True].note and "per scanned body" not in reps[False].note


def test_memory_only_reports_no_partial_flops():
    cfg = load_config("configs/tiny_cpu.py", ["model.scan_layers=True"])
    mcfg = preflight.model_config_for_target(cfg.model)
    target = preflight.Target(None, None, mcfg, {}, None, None, None, loop_flops=False)
    rep = preflight.PhaseReport("sft", True, flops_per_chip=5e9, est_step_seconds=0.1)
    preflight.count_flops(rep, None, [], target)  # no compile: nothing is counted
    assert (rep.flops_per_chip, rep.est_step_seconds) == (0.0, None) and "--memory-only" in rep.note
    s = preflight.stage_summary([rep], preflight.parse_topology("v5e-8"))
    assert s["flops_ratio"] is None and s["est_mfu"] is None


def test_oom_is_one_error_line(capsys):
    """A config far beyond the chip's HBM: exit code 2, one `error:` line with required vs available bytes."""
    rc = main(["preflight", *TINY, "--topology", "v5e-8", "--stage", "sft",
               "--config.pipeline.seq_len=32768", "--config.pipeline.batch_size=512"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "does not fit on v5e-8" in lines[0] and "16.00 GiB available" in lines[0]
    assert "model.remat" in lines[0] and "mesh" in lines[0]


def test_batch_the_slice_cannot_split_is_one_error_line_before_compiling(capsys):
    """4 prompts on v5e-32 (8 hosts, 32 batch shards): the trainers would refuse the batch on 8 processes, so
    preflight says so in one line, exit 2, without compiling."""
    rc = main(["preflight", *TINY, "--topology", "v5e-32", "--stage", "grpo"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "grpo cannot run on v5e-32 (8 hosts)" in lines[0] and "pipeline.prompt_batch_size=4" in lines[0]
    assert preflight.parse_topology("v5p-64").hosts == 8 and preflight.parse_topology("v5e-8").hosts == 1


def test_oom_message_bytes():
    text = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (251.19G) "
        "exceeds available HBM (95.74G)."
    )
    assert abs(preflight.bytes_in(text, r"required for [^(]*\(") / preflight.GiB - 251.19) < 1e-3


def test_unbounded_prompt_shapes_warn():
    cfg = load_config("configs/tiny_cpu.py", ["pipeline.max_prompt_len=None"])
    geometry = preflight.model_config_for_target(cfg.model).vision.geometry()
    ps = preflight.prompt_shape(cfg.pipeline, geometry)
    assert not ps.static and "max_prompt_len=None" in ps.assumed


def test_vision_flops_scale_with_chips():
    """Images travel with their rows: the vision tower's compiled FLOPs per chip at 8 chips are <= 0.2x those at
    one chip for the same global batch (cost analysis of model.embed, batch sharded over data)."""
    from r1ov_jax.sharding import make_mesh, rules_for

    cfg = load_config("configs/tiny_cpu.py", ["pipeline.batch_size=8"])
    mcfg = preflight.model_config_for_target(cfg.model)
    devices = preflight.topology_devices(preflight.parse_topology("v5e-8"))
    flops = {}
    for n in (1, 8):
        mesh = make_mesh(n, 1, 1, devices=devices[:n])
        model = preflight.abstract_model(mcfg, mesh)
        batch = preflight.place_batch(preflight.sft_batch_shapes(cfg.pipeline, mcfg.vision.geometry()), mesh)
        target = preflight.Target(None, mesh, mcfg, rules_for(mcfg, mesh), model, None, None)

        @nnx.jit
        def embed(m, b):
            return m.embed(b["input_ids"], b["pixel_values"], b["vision"]).astype(jnp.float32).sum()

        with target.ctx():
            compiled = embed.lower(model, batch).compile()
        ca = compiled.cost_analysis()
        flops[n] = (ca[0] if isinstance(ca, list) else ca)["flops"]
    assert flops[8] <= 0.2 * flops[1], flops


def test_counting_compile_turns_windowed_einsum_off():
    """On v5p-64 XLA runs a large FSDP all-gather + matmul as a windowed-einsum loop whose body the cost model
    counts once; preflight's counting compiles (COUNT_OPTIONS) count the whole matmul."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = preflight.topology_devices(preflight.parse_topology("v5p-64"))
    mesh = Mesh(devices, ("fsdp",))
    n, (m, k, f) = len(devices), (8192, 3584, 18944)
    x = jax.ShapeDtypeStruct((n * m, k), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec("fsdp")))
    w = jax.ShapeDtypeStruct((k, f), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec("fsdp")))
    matmul = jax.jit(
        lambda x, w: jax.lax.with_sharding_constraint(x @ w, NamedSharding(mesh, PartitionSpec("fsdp")))
    )
    counted = {}
    for name, options in (("default", None), ("counting", preflight.COUNT_OPTIONS)):
        rep, _ = preflight.compile_phase(name, lambda: matmul.lower(x, w), compiler_options=options)
        counted[name] = rep.flops_per_chip / (2 * m * k * f)
    assert counted["counting"] == pytest.approx(1.0, rel=0.01) and counted["default"] < 0.5, counted
