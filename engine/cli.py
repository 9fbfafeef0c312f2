"""The `aha` command: subcommands over the engine modules, and no logic of its own.

Every long command takes `--events jsonl` (one JSON event per line on stdout, for the GUI) and
otherwise draws a progress bar on the terminal. A user-facing error is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable

from engine import __version__
from engine.errors import AhaError
from engine.jobs import make_event, sink_for


def _add_events_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", choices=("auto", "jsonl", "none"), default="auto",
                        help="progress output: a bar on the terminal (auto), JSON lines on stdout, or none")


def _cmd_export(args: argparse.Namespace) -> int:
    from engine.export import export

    on_event = sink_for(args.events)
    result = export(args.src, args.output, args.type, adapter=args.adapter, adapter_only=args.adapter_only,
                    ollama=args.ollama, num_ctx=args.num_ctx, force=args.force, on_event=on_event)
    on_event(make_event("done", status="complete", **{k: str(v) for k, v in result.items() if v and k != "ollama"}))
    if args.events == "auto":
        print(result["gguf"])
    return 0


def _export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="HF checkpoint (+ LoRA) → GGUF (+ Modelfile, + Ollama)",
        description="Convert a Hugging Face checkpoint folder to GGUF as llama.cpp's converter does, "
                    "optionally merging a LoRA adapter, quantizing, and registering the model with Ollama.")
    parser.add_argument("src", help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer)")
    parser.add_argument("-o", "--output", required=True, help="output .gguf path")
    parser.add_argument("--type", default="f16",
                        help="f32, f16, bf16, q8_0 (written directly) or q4_k_m, q5_k_m, q6_k, … (via llama.cpp)")
    parser.add_argument("--adapter", help="PEFT LoRA adapter folder to merge (in 16/32-bit) before export")
    parser.add_argument("--adapter-only", action="store_true",
                        help="write the adapter as a GGUF LoRA for the base's GGUF instead of merging")
    parser.add_argument("--ollama", metavar="NAME", help="register the result with the local Ollama (OLLAMA_HOST)")
    parser.add_argument("--num-ctx", type=int, help="context size in the Modelfile (default: min(model, 8192))")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    _add_events_flag(parser)
    parser.set_defaults(func=_cmd_export)


# Each entry adds one subcommand; later modules (chat, models, grpo, distill) add theirs here.
SUBCOMMANDS: list[Callable] = [_export_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aha", description="Aha — a workbench for DeepSeek-R1-style reasoning models: chat, GRPO, "
                                "distillation and GGUF export.")
    parser.add_argument("--version", action="version", version=f"aha {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


# Libraries whose internal warnings (deprecations, optional kernels) are noise for a user of `aha`.
QUIET_LIBRARIES = ("bitsandbytes", "transformers", "peft", "accelerate", "torch", "huggingface_hub")


def quiet_libraries() -> None:
    """Keep third-party chatter off the terminal: only their errors are shown."""
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=rf"{name}(\..*)?$")


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except AhaError as error:
        if getattr(args, "events", None) == "jsonl":
            sink_for("jsonl")(make_event("error", message=str(error)))
        print(f"aha: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aha: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
