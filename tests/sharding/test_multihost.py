"""Two processes on localhost (jax.distributed, 4 CPU devices each): train, SIGTERM → checkpoint, restart →
identical losses to an uninterrupted run; then export to HF and transformers loads it with identical logits."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(script, *args, timeout=400) -> list[str]:
    """Runs ``script args`` as processes 0 and 1 of a localhost jax.distributed job; returns their outputs."""
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, R1OV_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", R1OV_NUM_PROCESSES="2",
                   R1OV_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)  # fmt: skip
        env.pop("XLA_FLAGS", None)
        cmd = [sys.executable, script, *map(str, args)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, out[-3000:]
        outs.append(out)
    return outs


def run_job(out_dir, steps, kill_at=0):
    outs = launch_two(WORKER, out_dir, steps, kill_at)
    return [json.loads(out.split("RESULT ")[-1].splitlines()[0]) for out in outs]


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["train/loss"] for line in f if line.strip()]


@pytest.mark.slow
def test_two_process_preempt_resume_export(tmp_path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from r1ov_jax.cli import main
    from r1ov_jax import runs

    full = run_job(tmp_path / "full", 6)
    assert all(r["step"] == 6 for r in full)
    first = run_job(tmp_path / "resumed", 6, kill_at=3)
    assert all(r.get("preempted") and r["step"] == 3 for r in first)  # both processes agreed on the step
    second = run_job(tmp_path / "resumed", 6)
    assert all(r["step"] == 6 for r in second)
    a, b = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(a, b, rtol=1e-6)

    assert main(["export-hf", "--checkpoint", str(tmp_path / "resumed"), "--out", str(tmp_path / "hf")]) == 0
    ref, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(tmp_path / "hf"), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    loaded = runs.load(str(tmp_path / "resumed"))
    ours, step = loaded.model, loaded.step
    assert step == 6
    ids = np.array([[3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        ref_logits = ref(input_ids=torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(ids)), ref_logits, atol=1e-5)
