"""Data: formalized examples (generated or imported) → reasoning traces → filtered ArrayRecord datasets.

    record.py        the one example Record {id, images, formal, question, answer, choices, trace, meta}
    formalize/       one generator per image type; GENERATORS, generate(type, seed, level)
    solvers/         per-type solvers over the formal text (used by reasoning.py)
    reasoning.py     step-by-step <think>…</think><answer>…</answer> traces; optional OpenAI-compatible Teacher
    rewrite.py       role-play rewrite ("the netlist lists" → "the circuit diagram shows")
    filter.py        keep traces whose answer verifies (rewards.accuracy.verify_answer)
    importers.py     R1-Onevision parquet and R1-Onevision-Bench TSV readers (bad rows counted, skipped)
    synth.py         synthesize(out_dir, num, ...) → ArrayRecord shards + report.json (the `r1ov synth` command)
    tfds_builder.py  TFDS builder (ArrayRecord files) over synth output / parquet / TSV

Imports point one way: data may use processing and rewards, never models, train, rollout or eval.
Submodules are imported on use (tfds and pyarrow are heavy).
"""
