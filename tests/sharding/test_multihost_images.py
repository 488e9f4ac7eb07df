"""Two processes on localhost (4 CPU devices each), each feeding only its own rows — different images per
process, some rows without images: SFT loss and gradients equal a 1-process 8-device run and an unsharded run of
the same global batch, on (8,1,1) and (2,2,2) meshes; a 2-process GRPO step (sampling, rewards, update) equals
the 1-process step."""

import numpy as np
import pytest

from r1ov_jax.sharding import make_mesh
from tests.sharding import multihost_images as job
from tests.sharding.test_multihost import launch_two

TOL = 1e-5


def run_two_processes(mode, out, mesh):
    for log in launch_two(job.__file__, mode, out, *mesh):
        assert "RESULT ok" in log, log[-3000:]
    return dict(np.load(out))


def assert_same(a: dict, b: dict, what: str):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=TOL, rtol=TOL, err_msg=f"{what}: {k}")


def test_batch_has_images_in_some_rows_only():
    batch = job.sft_rows(slice(0, job.ROWS))
    per_row = (batch["input_ids"] == job.IMG).sum(1)
    assert (per_row == 0).sum() == 2 and len(set(per_row[per_row > 0])) > 1
    # the two processes' halves hold different images
    assert not np.array_equal(batch["pixel_values"][:4], batch["pixel_values"][4:])


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2)])
def test_two_process_sft_with_images(tmp_path, mesh):
    unsharded = {k: np.asarray(v) for k, v in job.sft_grads(None).items()}
    one_process = {k: np.asarray(v) for k, v in job.sft_grads(make_mesh(*mesh)).items()}
    two_process = run_two_processes("sft", tmp_path / "sft.npz", mesh)
    assert_same(one_process, unsharded, "1 process, 8 devices vs unsharded")
    assert_same(two_process, unsharded, "2 processes vs unsharded")
    assert np.abs(unsharded["loss"]) > 0 and any(
        np.abs(v).max() > 0 for k, v in unsharded.items() if "visual" in k
    )


@pytest.mark.slow
def test_two_process_grpo_step_with_images(tmp_path):
    mesh = (2, 2, 2)
    one_process = {
        k: np.asarray(v) for k, v in job.grpo_step(make_mesh(*mesh), str(tmp_path / "one")).items()
    }
    two_process = run_two_processes("grpo", tmp_path / "grpo.npz", mesh)
    assert_same(two_process, one_process, "GRPO step, 2 processes vs 1")
