"""The notebooks under notebooks/ execute headlessly on CPU, and what they show is right.

Each notebook runs in a fresh ipykernel started with *this* interpreter (not whatever the installed "python3"
kernelspec points at), with its working directory in a temporary folder. After the notebook's own cells, the
test appends one probe cell that prints a JSON summary of the kernel's state (values the notebook computed); the
assertions read that summary and the notebook's outputs. The committed notebooks carry no outputs.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.manager import AsyncKernelManager

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PROBE_MARK = "NOTEBOOK_PROBE "


class ThisPythonKernelManager(AsyncKernelManager):
    """Starts ipykernel with the interpreter running the tests (the venv), whatever the kernelspec says."""

    def format_kernel_cmd(self, extra_arguments=None):
        return [sys.executable, "-m", "ipykernel_launcher", "-f", self.connection_file, *(extra_arguments or [])]


def run_notebook(name: str, probe: str, tmp_path: Path, timeout: int = 300):
    """Executes notebooks/<name> plus a probe cell; returns (executed notebook, probe dict)."""
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    assert all(c.get("outputs", []) == [] for c in nb.cells if c.cell_type == "code"), \
        f"{name} is committed with outputs; clear them"
    assert all(c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), \
        f"{name} is committed with execution counts; clear them"
    n_cells = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json as _json, sys as _sys\n"
        f"_probe = {{'executable': _sys.executable}}\n{probe}\n"
        f"print({PROBE_MARK!r} + _json.dumps(_probe, default=str))"
    ))
    # TMPDIR: the notebooks' tempfile.mkdtemp() scratch folders land under pytest's tmp_path (cleaned up by it).
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYDEVD_DISABLE_FILE_VALIDATION="1", TMPDIR=str(tmp_path))
    env.pop("MPLBACKEND", None)
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", kernel_manager_class=ThisPythonKernelManager,
        resources={"metadata": {"path": str(tmp_path)}}, record_timing=False,
    )
    client.execute(env=env)
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = [ln for ln in text.splitlines() if ln.startswith(PROBE_MARK)]
    assert line, f"probe printed nothing: {nb.cells[-1].outputs}"
    result = json.loads(line[-1][len(PROBE_MARK):])
    assert result["executable"] == sys.executable, "the kernel did not run this interpreter"
    nb.cells = nb.cells[:n_cells]  # the probe cell is ours, not the notebook's
    return nb, result


def outputs_of(nb, kind: str | None = None) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if kind is None or o.output_type == kind]


def stream_text(nb) -> str:
    return "".join(o.get("text", "") for o in outputs_of(nb, "stream"))


def count_images(nb, mime: str = "image/png") -> int:
    return sum(1 for o in outputs_of(nb) if o.output_type in ("display_data", "execute_result")
               and mime in o.get("data", {}))


def repo_untouched_check(before: set[str]) -> None:
    after = {p.name for p in NOTEBOOKS.iterdir()}
    assert after == before, f"a notebook wrote into notebooks/: {sorted(after - before)}"


def test_notebook_folder_has_the_three_notebooks():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_quickstart.ipynb", "02_formalization_tour.ipynb", "03_grpo_walkthrough.ipynb"]
    for name in names:
        nbformat.validate(nbformat.read(NOTEBOOKS / name, as_version=4))


def test_01_quickstart(tmp_path):
    before = {p.name for p in NOTEBOOKS.iterdir()}
    nb, p = run_notebook("01_quickstart.ipynb", """
import numpy as _np
_probe.update(
    work=work, hf_files=hf_files, roundtrip=roundtrip_max_diff, arch=hf_config.get("architectures"),
    resized=list(resized_hw), orig=[height, width], grid=image_grid_thw.tolist(),
    pv_shape=list(pixel_values.shape), n_tokens=num_image_tokens, n_pads=n_pads_in_ids,
    expanded_pads=expanded.count("<|image_pad|>"), prompt=prompt_text, completion=completions[0],
    same_greedy=again == completions, positions_shape=list(positions.shape), same_as_model=same_as_model,
    image_slots=[int(image_slots[0]), int(image_slots[-1])],
    img_T=_np.unique(positions[0, 0, image_slots]).tolist(), img_H=positions[1, 0, image_slots].tolist(),
    img_W=positions[2, 0, image_slots].tolist(),
    after_image=positions[:, 0, int(image_slots[-1]) + 1].tolist(),
    before_image=positions[:, 0, int(image_slots[0]) - 1].tolist(),
    delta=rope_deltas.tolist(), n_text=int(len(input_ids)),
)
""", tmp_path)
    repo_untouched_check(before)
    # Work went to a temp dir, not the repo.
    assert p["work"].startswith(str(tmp_path))
    # HF folder: weights + config + tokenizer; exact round trip.
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(p["hf_files"])
    assert p["arch"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert p["roundtrip"] == 0.0
    # Image processing: sides multiples of 28 in the pixel budget, grid = resized / 14, rows of 3*2*14*14.
    h, w = p["resized"]
    assert h % 28 == 0 and w % 28 == 0 and 28 * 28 * 4 <= h * w <= 28 * 28 * 16
    assert p["grid"] == [[1, h // 14, w // 14]]
    assert p["pv_shape"] == [h // 14 * w // 14, 1176]
    gh, gw = h // 28, w // 28
    assert p["n_tokens"] == gh * gw == p["n_pads"] == p["expanded_pads"]
    # The chat template: system turn, one image placeholder, generation prompt at the end.
    assert p["prompt"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert p["prompt"].count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert p["prompt"].endswith("<|im_start|>assistant\n")
    # Greedy generation is deterministic and survives the HF round trip.
    assert isinstance(p["completion"], str) and p["same_greedy"] is True
    assert "noise" in stream_text(nb)
    # M-RoPE: image tokens share T, walk the merged grid in H/W, text resumes at max + 1.
    assert p["positions_shape"] == [3, 1, p["n_text"]] and p["same_as_model"] is True
    s0 = p["image_slots"][0]
    start = p["before_image"][0] + 1
    assert p["before_image"] == [s0 - 1] * 3  # text before: T = H = W = index
    assert p["img_T"] == [start]
    assert p["img_H"] == [start + i // gw for i in range(gh * gw)]
    assert p["img_W"] == [start + i % gw for i in range(gh * gw)]
    assert p["after_image"] == [start + max(gh, gw)] * 3
    assert p["delta"] == [max(gh, gw) - gh * gw]
    # The printed T/H/W table and the inline plots (the chart image and the positions plot).
    assert re.search(r"'<\|image_pad\|>'\s+\d+\s+\d+\s+\d+", stream_text(nb))
    assert count_images(nb) >= 2


def test_02_formalization_tour(tmp_path):
    before = {p.name for p in NOTEBOOKS.iterdir()}
    nb, p = run_notebook("02_formalization_tour.ipynb", """
from r1ov_jax.data.formalize import GENERATORS as _G
from r1ov_jax.rewards import extract_answer_block as _ex
_probe.update(generators=sorted(_G), toured=sorted(tour), rows={
    k: dict(answer=str(v["record"].answer), choices=v["record"].choices, reward=v["reward"],
            trace_answer=_ex(v["trace"]), rewrite_answer=_ex(v["rewritten"]),
            changed=v["trace"] != v["rewritten"], think=v["trace"].startswith("<think>"),
            n_images=len(v["record"].images), formal=bool(v["record"].formal.strip()),
            question=v["record"].question)
    for k, v in tour.items()})
""", tmp_path)
    repo_untouched_check(before)
    assert len(p["generators"]) == 7 and p["toured"] == p["generators"]
    for kind, row in p["rows"].items():
        assert row["n_images"] >= 1 and row["formal"] and row["question"], kind
        assert row["think"], kind
        # The trace and its rewrite both end in the gold answer and earn format + accuracy.
        assert row["trace_answer"] == row["answer"] == row["rewrite_answer"], kind
        assert row["reward"] == [2.0, 2.0], kind
        assert row["changed"], f"{kind}: the role-play rewrite changed nothing"
    assert any(row["choices"] for row in p["rows"].values())  # at least one multiple-choice item shown
    # Every generator's image is shown inline beside its formal text (HTML with an embedded PNG).
    html = [o["data"]["text/html"] for o in outputs_of(nb, "display_data") if "text/html" in o.get("data", {})]
    shown = [h for h in html if "data:image/png;base64," in h]
    assert len(shown) == 7
    for kind in p["generators"]:
        assert any(f"<h3>{kind}</h3>" in h for h in shown), kind
    text = stream_text(nb)
    assert text.count("reasoning trace (solver over the formal text):") == 7
    assert text.count("role-play rewrite, changed lines:") == 7
    assert "7/7 generators: trace and rewrite earn the full reward" in text


def test_03_grpo_walkthrough(tmp_path):
    before = {p.name for p in NOTEBOOKS.iterdir()}
    nb, p = run_notebook("03_grpo_walkthrough.ipynb", """
_probe.update(work=work, run_dir_files=sorted(os.listdir(run_dir)), metrics=metrics, result=result,
              small_rewards=rewards["total"].tolist(), small_adv=advantages.tolist(),
              policy_gradient_ok=policy_gradient_ok, mean_kl=mean_kl, loss_mu1=float(loss_mu1(logp)),
              r_before=float(r_before), r_after=float(r_after), curves_png=png)
""", tmp_path)
    repo_untouched_check(before)
    assert p["work"].startswith(str(tmp_path))
    # Small example: rewards, group advantages (zero for the all-correct group), loss value and gradient.
    assert p["small_rewards"] == [2.0, 1.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]
    adv = p["small_adv"]
    assert adv[0] > 1.0 and adv[1] > 0.0 and adv[2] < 0.0 and adv[2] == pytest.approx(adv[3])
    assert adv[4:] == [0.0] * 4
    assert p["policy_gradient_ok"] is True
    assert p["loss_mu1"] == pytest.approx(0.04 * p["mean_kl"], rel=1e-4)
    # The tiny run: 30 logged steps, the reward and format rate rise, KL is measured, clipping fires (mu = 2).
    m = p["metrics"]
    assert [r["step"] for r in m] == list(range(1, 31)) and p["result"]["step"] == 30
    assert "metrics.jsonl" in p["run_dir_files"] and "checkpoints" in p["run_dir_files"]

    def mean(key, rows):
        return sum(r[key] for r in rows) / len(rows)

    assert mean("grpo/reward", m[-5:]) > mean("grpo/reward", m[:5]) + 0.3, [r["grpo/reward"] for r in m]
    assert mean("grpo/format_rate", m[-5:]) > mean("grpo/format_rate", m[:5]) + 0.2
    assert mean("grpo/accuracy", m[-5:]) > mean("grpo/accuracy", m[:5]) + 0.3
    # (with mu = 2 the logged KL is that of the step's last update, so step 1 is already > 0)
    assert 0.0 <= m[0]["grpo/kl"] < mean("grpo/kl", m[-5:]) and all(r["grpo/kl"] >= 0.0 for r in m)
    assert max(r["grpo/clip_frac"] for r in m) > 0.0
    assert all(1.0 <= r["grpo/completion_len"] <= 6.0 for r in m)
    assert p["r_after"] > p["r_before"]
    # Curves: the clipping plot, the 4-panel metrics plot and the plot_metrics PNG are shown inline.
    assert p["curves_png"].endswith("grpo_curves.png") and p["curves_png"].startswith(str(tmp_path))
    assert count_images(nb) >= 3
    assert "mean reward, first 5 steps:" in stream_text(nb)
