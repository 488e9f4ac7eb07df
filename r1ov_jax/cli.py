"""``r1ov``: one command line for the whole project.

    r1ov synth      generate formalization data (ArrayRecord shards)
    r1ov sft        supervised fine-tuning            (--config FILE --config.a.b=v)
    r1ov grpo       GRPO reinforcement learning       (--config FILE --config.a.b=v)
    r1ov eval       R1-Onevision-Bench / VLMEvalKit TSV / generated held-out sets; --compare A B
    r1ov generate   greedy (or sampled) answer for an image + prompt
    r1ov import-hf  HF folder → run directory with an Orbax checkpoint
    r1ov export-hf  any checkpoint step → HF folder transformers loads
    r1ov demo       the whole pipeline on a tiny CPU config, in minutes
    r1ov preflight  compile a config's steps for a TPU topology without a TPU: per-chip memory, fits, FLOPs
    r1ov serve      OpenAI-compatible HTTP server (chat completions, batched sampler) for a run or HF folder
    r1ov formalize  the paper's pipeline on your images: teacher VLM → formal text → reasoner → rewrite → verify

User mistakes (missing files, bad formats, config errors) print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from r1ov_jax.errors import InvalidInputError, MissingInputError, UserError


def _config_args(p: argparse.ArgumentParser, default: str | None):
    p.add_argument(
        "--config",
        default=default,
        help="Python config file defining get_config()" + (f" (default {default})" if default else ""),
    )


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pulls ``--config.a.b=v`` / ``--config.a.b v`` overrides out of argv."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            body = a[len("--config.") :]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise InvalidInputError(f"{a} needs a value")
                body, i = f"{body}={argv[i + 1]}", i + 1
            overrides.append(body)
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r1ov",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each subcommand has --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate formalization data with exact ground truth")
    p.add_argument("--out", required=True, help="output directory for ArrayRecord shards + report.json")
    p.add_argument("--num", type=int, required=True, help="number of items")
    p.add_argument("--types", nargs="*", default=None, help="generator names (default: all)")
    p.add_argument(
        "--levels",
        nargs="*",
        type=int,
        default=None,
        help="difficulty knobs 0-3 (Junior High School .. Social Test) to cycle; default: drawn per item",
    )
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)

    for name, hlp in (
        ("sft", "supervised fine-tuning on reasoning traces"),
        ("grpo", "GRPO reinforcement learning"),
    ):
        p = sub.add_parser(name, help=hlp)
        _config_args(p, "configs/tiny_cpu.py")
        p.add_argument("--out", default=None, help="run directory (default: config's train.out_dir)")

    p = sub.add_parser("eval", help="evaluate a model on a benchmark file, or compare two result sets")
    p.add_argument("--model", help="HF folder or run directory")
    p.add_argument("--data", help="Bench TSV / VLMEvalKit TSV / JSONL / generated ArrayRecord directory")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", default="eval_out")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument(
        "--compare", nargs=2, metavar=("RESULTS_A", "RESULTS_B"), help="paired comparison of two runs"
    )

    p = sub.add_parser("generate", help="answer a prompt about an image")
    p.add_argument("--model", required=True, help="HF folder or run directory")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("import-hf", help="HF folder → run directory (Orbax checkpoint, step 0)")
    p.add_argument("--model", required=True, help="local HF folder")
    p.add_argument("--out", required=True, help="run directory to create")

    p = sub.add_parser("export-hf", help="checkpoint → HF folder (safetensors shards + index + config)")
    p.add_argument("--checkpoint", required=True, help="run directory (or its checkpoints/ folder)")
    p.add_argument("--step", type=int, default=None, help="default: latest")
    p.add_argument("--out", required=True)
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument(
        "--adapter",
        action="store_true",
        help="LoRA runs: write a PEFT adapter folder instead of merged full weights",
    )

    p = sub.add_parser("demo", help="synthesis → SFT → GRPO → eval → HF export on a tiny CPU config")
    _config_args(p, None)
    p.add_argument("--out", default="runs/demo")

    p = sub.add_parser(
        "preflight", help="deviceless compile for a TPU topology: memory per chip, fits, FLOPs"
    )
    _config_args(p, None)
    p.add_argument(
        "--topology", required=True, help="e.g. v5p-64, v5e-256, v6e-64, v4-8 (see r1ov_jax.preflight)"
    )
    p.add_argument("--stage", choices=("sft", "grpo", "all"), default="all")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    p.add_argument(
        "--memory-only",
        action="store_true",
        help="skip the extra compiles that count FLOPs over every loop iteration (no FLOP / time / MFU "
        "figures; fits and memory are unchanged)",
    )

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server for a run directory or HF folder")
    p.add_argument("--model", required=True, help="HF folder or run directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="most sequences decoded together")
    p.add_argument("--max-new-tokens", type=int, default=256, help="cap on a request's max_tokens")
    p.add_argument(
        "--max-prompt-tokens", type=int, default=2048, help="longest prompt, image tokens included"
    )
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting for a batch; more get 503")
    p.add_argument("--max-image-bytes", type=int, default=20 * 2**20, help="per image (decoded); larger: 413")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="per image; larger: 413")
    p.add_argument("--max-request-bytes", type=int, default=64 * 2**20, help="request body; larger: 413")
    p.add_argument(
        "--served-model-name", default=None, help="the model id clients send (default: folder name)"
    )
    p.add_argument(
        "--batch-buckets",
        default=None,
        help="padded batch sizes, e.g. 8 or 1,4,16 (default: powers of two up to --max-batch; each compiles)",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=50.0,
        help="a forming batch waits at most this long for requests still being prepared (0: never)",
    )

    p = sub.add_parser("formalize", help="formalize your images with a teacher VLM and keep verified traces")
    p.add_argument("--input", required=True, help="image folder + JSONL, R1-Onevision parquet, or Bench TSV")
    p.add_argument("--out", required=True, help="output directory (ArrayRecord shards + report.json)")
    p.add_argument("--teacher", required=True, help="OpenAI-compatible base URL of the teacher VLM")
    p.add_argument("--reasoner", default=None, help="base URL of the reasoner (default: the teacher)")
    p.add_argument("--model", default=None, help="model name sent to the endpoints (default: their first)")
    p.add_argument("--concurrency", type=int, default=8, help="most requests in flight")
    p.add_argument("--reasoner-model", default=None, help="model name for the reasoner (default: --model)")
    p.add_argument(
        "--image-type",
        default=None,
        help="skip detection: chart, diagram, geometry, scene, document, math, circuit, table or other",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request attempt")
    p.add_argument("--max-retries", type=int, default=4, help="retries on 429/5xx/timeouts/connection errors")
    p.add_argument("--retry-delay", type=float, default=0.5, help="first backoff ceiling in s (doubles)")
    p.add_argument("--limit", type=int, default=None, help="formalize only the first N items")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of every request")
    p.add_argument(
        "--formal-max-tokens",
        type=int,
        default=None,
        help="max_tokens of a description (default: the server's)",
    )
    p.add_argument(
        "--reason-max-tokens", type=int, default=None, help="max_tokens of a trace (default: the server's)"
    )
    p.add_argument("--cache", default=None, help="response cache directory (default OUT/cache)")
    p.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the bearer token"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv, overrides = _split_overrides(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if overrides and not hasattr(args, "config"):
        print(f"error: r1ov {args.command} takes no --config overrides", file=sys.stderr)
        return 2
    try:
        return int(COMMANDS[args.command](args, overrides) or 0)
    except (
        UserError
    ) as e:  # raised where the input is checked; anything else is a bug and keeps its traceback
        if os.environ.get("R1OV_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- commands
def cmd_synth(args, overrides):
    from r1ov_jax.data.synth import synthesize

    report = synthesize(
        args.out, args.num, types=args.types, levels=args.levels, workers=args.workers, seed=args.seed
    )
    print(
        json.dumps(
            {k: report[k] for k in report if k in ("kept", "generated", "rejected", "seconds")}, indent=2
        )
    )


def cmd_generate(args, overrides):
    from r1ov_jax import runs
    from r1ov_jax.rollout.chat import RAW, answer_prompts

    for p in args.image:  # before the model is loaded
        if os.path.isdir(p):
            raise InvalidInputError(f"--image {p} is a directory, expected an image file")
        if not os.path.isfile(p):
            raise MissingInputError(f"--image {p} does not exist or is not a file")
    images = []
    for p in args.image:
        try:
            with open(p, "rb") as f:
                images.append(f.read())
        except OSError as e:
            raise InvalidInputError(f"--image {p}: cannot read ({e.strerror})") from None
    loaded = runs.load(args.model, require_tokenizer=True)
    (text,) = answer_prompts(
        loaded.model, loaded.tokenizer, loaded.image_processor, [(images, args.prompt)],
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
        fmt=RAW if loaded.run_dir is None else dataclasses.replace(loaded.prompt_format, suffix=None),
    )  # fmt: skip
    print(text)


def cmd_import_hf(args, overrides):
    from r1ov_jax import runs

    loaded = runs.load(args.model)
    has_ip = os.path.exists(os.path.join(args.model, runs.PREPROCESSOR_FILE))
    runs.create(
        args.out, loaded.model, loaded.tokenizer, loaded.image_processor if has_ip else None, stage="import",
        base=args.model,
    )  # fmt: skip
    runs.save_params(args.out, loaded.model, 0)
    print(f"imported {args.model} → {args.out} (step 0)")


def cmd_export_hf(args, overrides):
    from r1ov_jax import runs
    from r1ov_jax.hf import peft
    from r1ov_jax.models import lora

    loaded = runs.load(args.checkpoint, step=args.step)
    if loaded.run_dir is None:
        raise InvalidInputError(f"{args.checkpoint} is an HF folder already; export-hf takes a run directory")
    if args.adapter:
        if not lora.is_lora(loaded.model):
            raise InvalidInputError(
                f"{args.checkpoint} is not a LoRA run (no model.lora in run.json): no adapter"
            )
        out = peft.save_adapter(loaded.model, args.out, base_name_or_path=loaded.info.get("base"))
        print(f"exported the adapters of step {loaded.step} → {out} (PEFT, base {loaded.info.get('base')})")
        return
    # a LoRA run exports merged full weights (W + A·B·alpha/r); a full fine-tune its params as they are
    out = peft.save_merged(loaded.model, args.out, args.max_shard_size, side_files_from=loaded.model_dir)
    print(f"exported step {loaded.step} → {out}")


def _train_command(kind):
    def run(args, overrides):
        from r1ov_jax.config_utils import load_config
        from r1ov_jax.train import recipes

        from r1ov_jax.config_utils import ConfigError
        from r1ov_jax.train.loop import validate_train_config

        cfg = load_config(args.config, overrides)
        stage = {"sft": "sft", "grpo": "rl"}[kind]
        if stage not in cfg or "train" not in cfg[stage]:
            raise ConfigError(f"{args.config}: no {stage}.train block")
        validate_train_config(cfg[stage].train, f"{stage}.train")  # before anything is built
        if args.out:
            cfg[stage].train.out_dir = args.out
        print(cfg)
        result = recipes.run_stage(kind, cfg)
        print(json.dumps(result, indent=2, default=str))

    return run


def cmd_eval(args, overrides):
    from r1ov_jax.eval import compare, format_comparison

    if args.compare:
        a, b = args.compare
        print(
            format_comparison(compare(a, b), os.path.basename(a.rstrip("/")), os.path.basename(b.rstrip("/")))
        )
        return 0
    if not args.model or not args.data:
        raise InvalidInputError("r1ov eval needs --model and --data (or --compare A B)")
    from r1ov_jax import runs
    from r1ov_jax.eval.model_eval import evaluate_model

    loaded = runs.load(args.model, require_tokenizer=True)
    summary = evaluate_model(
        loaded.model,
        loaded.tokenizer,
        loaded.image_processor,
        args.data,
        args.out,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        fmt=loaded.prompt_format,
    )
    from r1ov_jax.eval import format_markdown

    print(format_markdown(summary))


def cmd_demo(args, overrides):
    from r1ov_jax.config_utils import load_config
    from r1ov_jax.demo import default_demo_config, run_demo

    cfg = load_config(args.config, overrides) if args.config else default_demo_config()
    if not args.config:
        from r1ov_jax.config_utils import apply_override

        for o in overrides:
            apply_override(cfg, o)
    summary = run_demo(cfg, args.out)
    print(json.dumps(summary, indent=2))
    return 1 if summary.get("preempted") else 0  # stopped by a signal: the demo did not finish


def cmd_preflight(args, overrides):
    from r1ov_jax import preflight

    return preflight.cli(
        args.config, overrides, args.topology, stage=args.stage, json_path=args.json,
        loop_flops=not args.memory_only,
    )  # fmt: skip


def cmd_serve(args, overrides):
    from r1ov_jax.serve import serve_cli

    return serve_cli(args)


def cmd_formalize(args, overrides):
    from r1ov_jax.data.teacher import formalize_cli

    return formalize_cli(args)


COMMANDS = {
    "synth": cmd_synth,
    "sft": _train_command("sft"),
    "grpo": _train_command("grpo"),
    "eval": cmd_eval,
    "generate": cmd_generate,
    "import-hf": cmd_import_hf,
    "export-hf": cmd_export_hf,
    "demo": cmd_demo,
    "preflight": cmd_preflight,
    "serve": cmd_serve,
    "formalize": cmd_formalize,
}

if __name__ == "__main__":
    sys.exit(main())
