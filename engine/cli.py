"""The `aha` command: subcommands over the engine modules, and no logic of its own.

Every long command takes `--events jsonl` (one JSON event per line on stdout, for the GUI) and
otherwise draws a progress bar on the terminal. A user-facing error is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import typing
from collections.abc import Callable

from engine.errors import AhaError
from engine.jobs import make_event, quiet_libraries, run_job, sink_for

TRAINING_STAGES = ["load", "train"]  # loading the model (and the adapter, a resumed checkpoint), the steps


def _add_events_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", choices=("auto", "jsonl", "none"), default="auto",
                        help="progress output: a bar on the terminal (auto), JSON lines on stdout, or none")


def _cmd_export(args: argparse.Namespace) -> int:
    from engine.export.pipeline import export, stages

    def work(job):
        settings = {"src": args.src, "output": args.output, "type": args.type, "adapter": args.adapter,
                    "adapter_only": args.adapter_only, "ollama": args.ollama, "num_ctx": args.num_ctx,
                    "check": args.check}
        result = export(args.src, args.output, args.type, adapter=args.adapter, adapter_only=args.adapter_only,
                        ollama=args.ollama, num_ctx=args.num_ctx, force=args.force, check=args.check,
                        on_event=_recorded("export", settings, job.emit), cancel=job.cancel)
        # Each file written is named once, by its "wrote …" line (the GGUF's included); the check's lines
        # were logged, its whole report is the result's "check".
        return {key: value if key == "check" else str(value) for key, value in result.items()
                if value and key != "ollama"}

    return run_job("export", work, args, stages=stages(args.type, adapter=args.adapter, adapter_only=args.adapter_only,
                                                       ollama=args.ollama, check=args.check))


def _recorded(kind: str, settings: dict, emit):
    """on_event for a job that is a run without a run directory (an export): the run's row is made when
    the work starts (a job refused at its checks is no run), announced by `start`, and each final
    artifact is recorded with it, so the Runs pane lists what the user made."""
    from engine.store import Store

    run_id = None

    def on_event(event: dict) -> None:
        nonlocal run_id
        if run_id is None:
            with Store() as store:
                run_id = store.create_run(kind, settings, status="running")
            emit(make_event("start", kind=kind, pid=os.getpid(), stages=[], run_id=run_id, run_dir=None))
        if event["type"] == "artifact" and event.get("final", True) and event.get("path"):
            with Store() as store:
                store.add_artifact(event["kind"], event["path"], run_id=run_id,
                                   meta={key: value for key, value in event.items()
                                         if key not in ("v", "type", "kind", "path", "final")})
        emit(event)

    return on_event


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
    parser.add_argument("--check", action="store_true",
                        help="then check the GGUF: its template opens <think>, Ollama would report `thinking`, and "
                             "greedy tokens match the HF model (+ adapter) in transformers")
    _add_events_flag(parser)
    parser.set_defaults(func=_cmd_export)


def _resolve_model(name: str):
    from pathlib import Path

    from engine.models import Library

    path = Path(name).expanduser()
    return path if path.is_file() else Library().find(name).path


def _cmd_chat(args: argparse.Namespace) -> int:
    from engine.chat.conversation import TurnSettings, send
    from engine.chat.reasoning import check_budget
    from engine.chat.runtime import ChatModel
    from engine.chat.terminal import InterruptToCancel, TerminalChatView, write_json_events
    from engine.store import Store

    store = Store()
    store.recover()  # replies a crash left half-written become `stopped`
    path = _resolve_model(args.model)
    if args.conversation is not None:
        conversation = store.get_conversation(args.conversation)
    else:
        conversation = store.create_conversation(settings={"model": str(path)})
    settings = TurnSettings.from_conversation(
        conversation.settings, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        seed=args.seed, history=args.history, system_prompt=args.system, thinking_budget=args.thinking_budget,
        budget_message=args.budget_message, thinking=args.thinking)
    check_budget(settings.thinking_budget)
    with ChatModel(path, n_ctx=args.n_ctx, n_gpu_layers=args.gpu_layers) as model:
        def turn(text: str) -> None:
            with InterruptToCancel() as interrupt:
                events = send(store, model, conversation.id, text, settings=settings, cancel=interrupt.cancel)
                if args.json:
                    write_json_events(events)
                else:
                    TerminalChatView().show(events)

        if args.prompt is not None:
            turn(args.prompt)
            return 0
        if not args.json:
            print(f"Chatting with {path.name} (conversation {conversation.id}). Ctrl+C stops a reply, "
                  "Ctrl+D leaves.", file=sys.stderr)
        while True:
            try:
                text = input("> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            if text.strip():
                turn(text)


def _chat_parser(subparsers) -> None:
    from engine import r1

    parser = subparsers.add_parser(
        "chat", help="chat with a GGUF model, thinking shown apart from the answer",
        description="Chat with a reasoning model in the terminal (interactive without -p). Conversations "
                    "are saved to Aha's store.")
    parser.add_argument("model", help="a .gguf path or a model name from `aha models list`")
    parser.add_argument("-p", "--prompt", help="send one message and exit")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    parser.add_argument("--conversation", type=int, help="continue this conversation id")
    parser.add_argument("--max-tokens", type=int, help="token budget of a reply (default 4096)")
    parser.add_argument("--temperature", type=float, help=f"default {r1.TEMPERATURE} (DeepSeek's advice)")
    parser.add_argument("--top-p", type=float, help=f"default {r1.TOP_P}")
    parser.add_argument("--seed", type=int, help="sampling seed, for repeatable replies")
    parser.add_argument("--history", choices=("strip", "keep"), help="earlier reasoning in the prompt (default strip)")
    parser.add_argument("--system", help="system prompt (R1 models work best without one)")
    parser.add_argument("--thinking-budget", type=int, metavar="N",
                        help="end the thought at N tokens: a closing sentence and </think> are put into the context "
                             "and the model answers (default: no budget)")
    parser.add_argument("--budget-message", metavar="TEXT",
                        help="what the budget says when it ends a thought (default: llama.cpp's sentence)")
    parser.add_argument("--thinking", action=argparse.BooleanOptionalAction,
                        help="turn thinking on or off, for models whose template has a switch (Qwen3); "
                             "R1 distills always think")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    parser.add_argument("--gpu-layers", type=int, default=-1, help="layers to offload to the GPU (-1: all)")
    parser.set_defaults(func=_cmd_chat)


def _cmd_serve(args: argparse.Namespace) -> int:
    from engine.serve.server import AhaServer, ServeOptions

    options = ServeOptions(host=args.host, port=args.port, models=tuple(args.models or ()),
                           api_key=args.api_key or os.environ.get("AHA_API_KEY") or None, save=args.save,
                           n_ctx=args.n_ctx, gpu_layers=args.gpu_layers)

    def work(job):
        return AhaServer(options, on_event=job.emit).run(job.cancel)

    return run_job("serve", work, args, stages=[])


def _serve_parser(subparsers) -> None:
    from engine.serve.server import DEFAULT_HOST, DEFAULT_PORT

    parser = subparsers.add_parser(
        "serve", help="an OpenAI-compatible server over the model library, reasoning kept apart",
        description="Serve the library's GGUF models on an OpenAI-compatible API (GET /v1/models, POST "
                    "/v1/chat/completions, streamed or not): the thought in reasoning_content, never in content; "
                    "usage counts it in completion_tokens_details.reasoning_tokens; thinking_budget_tokens and "
                    "reasoning_effort (low, medium, high) bound it. One model is loaded at a time (a request "
                    "for another swaps it) and one request decodes at a time, the others wait in turn (no "
                    "batching). Chats are not saved unless --save. Ctrl+C stops.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}); any other than loopback needs --api-key")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="serve only these: library names (`aha models list`) or .gguf paths (default: the library)")
    parser.add_argument("--api-key", metavar="KEY",
                        help="require `Authorization: Bearer KEY` (default: $AHA_API_KEY, else no key)")
    parser.add_argument("--save", action="store_true",
                        help="write each chat to Aha's store as a conversation (default: nothing is saved)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    parser.add_argument("--gpu-layers", type=int, default=-1, help="layers to offload to the GPU (-1: all)")
    _add_events_flag(parser)
    parser.set_defaults(func=_cmd_serve)


def _print_changes(changes) -> None:
    for entry in changes.added:
        print(f"added   {entry.name}  ({entry.source}: {entry.path})")
    for entry in changes.removed:
        print(f"removed {entry.name}  ({entry.path}; the file is untouched)")
    for line in changes.skipped:
        print(f"skipped {line}", file=sys.stderr)


def _cmd_models(args: argparse.Namespace) -> int:
    from engine.models import Library, describe, format_count, pull, read_gguf_info

    library = Library()
    if args.action == "list":
        for entry in library.entries():
            try:
                info = read_gguf_info(entry.path)
                detail = f"{info.architecture or '?':7s} {format_count(info.parameter_count):>6s} {info.quantization:8s}"
            except AhaError as error:
                detail = f"unreadable: {error}"
            print(f"{entry.name:40s} {detail}  [{entry.source}]")
        return 0
    if args.action == "add":
        _print_changes(library.add(args.target))
    elif args.action == "remove":
        _print_changes(library.remove(args.target))
    elif args.action == "scan":
        _print_changes(library.scan(extra_folders=args.folders))
    elif args.action == "info":
        for label, value in describe(read_gguf_info(_resolve_model(args.target))):
            print(f"{label:15s} {value}")
    elif args.action == "pull":
        found = {}

        def work(job):
            found["path"] = pull(args.target, args.file, on_event=job.emit, cancel=job.cancel)
            return {"path": str(found["path"])}

        code = run_job("pull", work, args, stages=["download", "verify"])
        if code == 0 and args.events == "auto":
            print(found["path"])
        return code
    return 0


def _models_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="the model library: list, add, scan, info, pull",
                                   description="Manage the GGUF models Aha knows about. Removing an entry "
                                               "never deletes the file.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="models in the library")
    actions.add_parser("add", help="add a .gguf file or every model under a folder").add_argument("target", metavar="PATH")
    actions.add_parser("remove", help="remove from the library (the file stays)").add_argument("target", metavar="MODEL")
    scan = actions.add_parser("scan", help="find models from Ollama, LM Studio and the Hugging Face cache")
    scan.add_argument("folders", nargs="*", help="extra folders to search")
    actions.add_parser("info", help="metadata of a model, read without loading it").add_argument("target", metavar="MODEL")
    pull_parser = actions.add_parser("pull", help="download a GGUF from the Hugging Face Hub (resumable)")
    pull_parser.add_argument("target", metavar="REPO", help="e.g. unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF")
    pull_parser.add_argument("file", metavar="FILE", help="e.g. DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf")
    _add_events_flag(pull_parser)
    parser.set_defaults(func=_cmd_models)


def _cmd_distill_generate(args: argparse.Namespace) -> int:
    from engine.distill.generate import GenerateConfig
    from engine.train.config import flag_overrides, load_config

    config = load_config(GenerateConfig, None, flag_overrides(args, GenerateConfig))
    command = {"argv": args.argv, "cwd": os.getcwd()}  # for `aha runs resume`

    def work(job):
        from engine.distill.generate import run_generation

        stats = run_generation(config, on_event=job.emit, cancel=job.cancel, command=command)
        if args.events == "auto":
            before = f"; {stats.skipped} prompts were done before" if stats.skipped else ""
            print(f"kept {stats.kept} of {stats.samples} samples ({stats.acceptance_rate:.0%} accepted, "
                  f"{stats.samples_per_s:.2f} samples/s){before}", file=sys.stderr)
            print(stats.output)
        result = stats.as_dict()
        if result["status"] == "incomplete":  # the teacher stopped answering: what was written is kept
            raise AhaError(f"trace generation stopped after {stats.prompts_done} of {stats.prompts - stats.skipped} "
                           f"prompts; run the same command again to continue {stats.output}")
        return result

    return run_job("generate", work, args, stages=["generate"])


def _distill_parser(subparsers) -> None:
    from engine.distill.generate import GenerateConfig
    from engine.train.config import add_config_flags

    parser = subparsers.add_parser("distill", help="distillation: teacher traces with verification",
                                   description="Distill a reasoning teacher into a student the way DeepSeek made "
                                               "the R1 distills: sample traces, keep the verified ones.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate", help="sample k traces per prompt from a teacher, keep those the rewards accept (resumable)",
        description="Ask a teacher for k replies per prompt, verify them with the GRPO rewards and append the "
                    "accepted ones to a JSONL file. A rerun with the same output skips finished prompts.")
    add_config_flags(generate, GenerateConfig, required=("teacher", "dataset", "output"))
    _add_events_flag(generate)
    generate.set_defaults(func=_cmd_distill_generate)
    _distill_sft_parser(actions)


def _cmd_distill_sft(args: argparse.Namespace) -> int:
    from engine.distill.kd import KDConfig, train_kd_on_traces
    from engine.distill.traces import TraceSFTConfig, train_sft_on_traces
    from engine.train.config import flag_overrides, load_config
    from engine.train.distributed import main_process_sink

    kind, train = (KDConfig, train_kd_on_traces) if args.action == "kd" else (TraceSFTConfig, train_sft_on_traces)
    overrides = flag_overrides(args, kind)
    if args.student:
        overrides["model"] = args.student
    if args.full:
        overrides["use_peft"] = False

    def work(job):
        if args.resume:
            return train(resume=args.resume, overrides=overrides, on_event=job.emit, cancel=job.cancel)
        return train(load_config(kind, args.config, overrides), on_event=job.emit, cancel=job.cancel)

    return run_job(f"distill-{args.action}", work, args, stages=TRAINING_STAGES,
                   sink=main_process_sink(sink_for(args.events)))


def _distill_sft_parser(actions) -> None:
    from engine.distill.kd import KDConfig
    from engine.distill.traces import TraceSFTConfig

    sft = actions.add_parser(
        "sft", help="fine-tune a student on teacher traces (LoRA/QLoRA or --full), resumable",
        description="SFT of a Hugging Face student on the traces of `aha distill generate`: the student's chat "
                    "template as at inference, the assistant turn <think>\\n{thinking}\\n</think>\\n\\n{answer}, "
                    "loss on it only; held-out loss and greedy accuracy on --dataset (a built-in task or a "
                    "prompt/answer file) every --eval-steps. Ctrl+C stops with a checkpoint; --resume continues.")
    kd = actions.add_parser(
        "kd", help="logit distillation of a student from an HF teacher sharing its tokenizer, on traces",
        description="Train the student to match the teacher's next-token distributions (kd_loss: forward_kl, "
                    "reverse_kl or jsd, --temperature, --beta) on the assistant tokens of the traces, or with "
                    "probability --lmbda on the student's own samples of the prompts (on-policy, GKD); the same "
                    "run, checkpoints and --resume as `aha distill sft`.")
    for parser, kind in ((sft, TraceSFTConfig), (kd, KDConfig)):
        _distill_training_flags(parser, kind)


def _distill_training_flags(parser, kind) -> None:
    from engine.train.config import add_config_flags

    parser.add_argument("--student", metavar="HF_FOLDER", help="the student checkpoint folder (the model setting)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA (small models)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="TOML", help="settings file (keys named as the flags, with _); a flag given overrides its key")
    source.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this directory from its last checkpoint")
    add_config_flags(parser, kind, skip=("model", "completion_column"))
    _add_events_flag(parser)
    parser.set_defaults(func=_cmd_distill_sft)


def _cmd_grpo(args: argparse.Namespace) -> int:
    from engine.train.config import flag_overrides
    from engine.train.distributed import main_process_sink
    from engine.train.grpo import GRPOConfig, load_grpo_config, train

    overrides = flag_overrides(args, GRPOConfig)

    def work(job):
        if args.resume:
            return train(resume=args.resume, overrides=overrides, on_event=job.emit, cancel=job.cancel)
        return train(load_grpo_config(args.config, overrides), on_event=job.emit, cancel=job.cancel)

    return run_job("grpo", work, args, stages=TRAINING_STAGES, sink=main_process_sink(sink_for(args.events)))


def _grpo_parser(subparsers) -> None:
    from engine.train.config import add_config_flags
    from engine.train.grpo import GRPOConfig

    parser = subparsers.add_parser(
        "grpo", help="GRPO: reinforcement learning with rule-based rewards (LoRA/QLoRA)",
        description="Train a Hugging Face checkpoint with GRPO as in DeepSeek-R1. Settings come from a TOML "
                    "file (--config) and flags; every setting is also a flag, e.g. --num-generations 8 "
                    "--max-steps 100 --learning-rate 1e-5 --rewards accuracy format --reward-weights 1 0.2 "
                    "--dataset addition --model path/to/checkpoint --output-dir runs/mine. The terminal shows "
                    "the run directory, one line per logged step (rewards, accuracy, lengths, time) and a summary "
                    "at the end. On a CPU start small: --prompts-per-step 4 --num-generations 4 "
                    "--max-completion-length 128. Ctrl+C (or SIGTERM) stops after the current step with a "
                    "checkpoint; --resume continues it.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="TOML", help="settings file (keys named as the flags, with _); a flag given overrides its key")
    source.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in this directory from its last checkpoint (its saved settings; "
                             "--max-steps may extend it)")
    add_config_flags(parser, GRPOConfig)
    _add_events_flag(parser)
    parser.set_defaults(func=_cmd_grpo)


def _cmd_eval(args: argparse.Namespace) -> int:
    from engine.eval.runner import EvalConfig, evaluate, table_text
    from engine.train.config import flag_overrides, load_config

    overrides = {name: value for name, value in flag_overrides(args, EvalConfig).items() if name != "models"}
    if args.models:  # the positional MODEL list (the flags' namesake setting)
        overrides["models"] = tuple(args.models)
    if args.resume and overrides:
        raise AhaError("--resume continues an evaluation with its saved settings; give no models or settings with it")

    def work(job):
        if args.resume:
            result = evaluate(resume=args.resume, on_event=job.emit, cancel=job.cancel)
        else:
            result = evaluate(load_config(EvalConfig, args.config, overrides), on_event=job.emit, cancel=job.cancel)
        if args.json and args.events != "jsonl":
            print(json.dumps(result["eval"], ensure_ascii=False))
        elif args.events != "jsonl":  # the table is the result, shown without a progress bar too
            print(table_text(result["eval"]))
        return result

    return run_job("eval", work, args, stages=["eval"])


def _eval_parser(subparsers) -> None:
    from engine.eval.runner import EvalConfig
    from engine.train.config import add_config_flags

    parser = subparsers.add_parser(
        "eval", help="pass@1 over k samples, cons@k and pass@k of one or more models, side by side (resumable)",
        description="Evaluate models as the DeepSeek-R1 paper reports them: k samples per problem at temperature 0.6 "
                    "and top-p 0.95, pass@1 (their mean), cons@k (majority vote) and pass@k, the thinking and answer "
                    "tokens, the share of thoughts cut by the budget and accuracy by thinking length; each model "
                    "against the first with a paired significance note. MODEL: gguf:PATH or a library name, "
                    "hf:FOLDER[+ADAPTER], openai:URL (with --model NAME) or run:ID. E.g. aha eval run:3 run:7 "
                    "--dataset math500.jsonl -k 8. A rerun with the same --output-dir continues it.")
    parser.add_argument("models", nargs="*", metavar="MODEL", help="the models; the first is the baseline")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="TOML", help="settings file (keys named as the flags, with _)")
    source.add_argument("--resume", metavar="RUN_DIR", help="continue the evaluation in this run directory")
    parser.add_argument("--json", action="store_true", help="print eval.json instead of the table")
    add_config_flags(parser, EvalConfig, skip=("models",))
    _add_events_flag(parser)
    parser.set_defaults(func=_cmd_eval)


def _cmd_runs(args: argparse.Namespace) -> int:
    from engine import run_index
    from engine.store import Store

    with Store() as store:
        if args.action == "list":
            rows = run_index.summaries(store, kind=args.kind, status=args.status)
            if args.json:
                print(json.dumps([row.as_json() for row in rows], ensure_ascii=False))
            else:
                print(run_index.table(rows) if rows else "no runs")
            return 0
        if args.action == "show":
            run = run_index.find_run(store, args.run)
            info = run_index.details(store, run)
            if run["kind"] in run_index.PIPELINE_KINDS:  # its stages, each with where its inputs came from
                from engine import stage_chain

                chain = stage_chain.read_chain(store, run)
                info["stages"] = [{"name": stage.name, "kind": stage.kind, "status": stage.status,
                                   "run_id": stage.run_id, "metric": stage.metric} for stage in chain.stages]
                text = run_index.details_text(info) + "\n" + stage_chain.chain_text(chain)
            else:
                text = run_index.details_text(info)
            print(json.dumps(info, ensure_ascii=False) if args.json else text)
            return 0
        if args.action == "stop":
            print(run_index.stop_elsewhere(run_index.find_run(store, args.run)))
            return 0
        if args.action == "rm":
            confirm = (lambda question: True) if args.yes else run_index.ask_on_terminal
            print(run_index.remove(store, args.run, confirm))
            return 0
        plan = run_index.resume_plan(store, args.run, events=args.events, max_steps=args.max_steps)
    with contextlib.chdir(plan.cwd or os.curdir):
        return main(plan.argv)


def _runs_parser(subparsers) -> None:
    from engine.store import RUN_STATUSES

    parser = subparsers.add_parser("runs", help="training and generation runs: list, show, resume, stop, rm",
                                   description="The runs Aha recorded (GRPO, SFT, distillation, trace generation). "
                                               "RUN is a run id or a run directory. A run whose process died is "
                                               "shown as crashed.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every run, newest first: kind, status, model, data, steps, age")
    listing.add_argument("--kind", help="only runs of this kind (grpo, distill-sft, distill-kd, generate, export, …)")
    listing.add_argument("--status", choices=RUN_STATUSES, help="only runs with this status")
    listing.add_argument("--json", action="store_true", help="one JSON array instead of the table")
    show = actions.add_parser("show", help="one run: status, steps, last metrics, artifacts, directory")
    show.add_argument("run", metavar="RUN", help="a run id or a run directory")
    show.add_argument("--json", action="store_true", help="one JSON object instead of text")
    resume = actions.add_parser("resume", help="continue a run with the command of its kind (grpo, distill sft|kd, "
                                               "distill generate, eval)")
    resume.add_argument("run", metavar="RUN", help="a run id or a run directory")
    resume.add_argument("--max-steps", type=int, help="train to this step (a complete training run too)")
    _add_events_flag(resume)
    stop = actions.add_parser("stop", help="stop a running run as Ctrl+C does (SIGINT: it checkpoints and ends "
                                           "cancelled); not on Windows")
    stop.add_argument("run", metavar="RUN", help="a run id or a run directory")
    remove = actions.add_parser("rm", help="delete a run that is not running: its directory and its record")
    remove.add_argument("run", metavar="RUN", help="a run id or a run directory")
    remove.add_argument("--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")
    parser.set_defaults(func=_cmd_runs)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from engine.train import inspect

    if args.what == "devices":
        info = inspect.devices()
        text = inspect.devices_text
    elif args.what == "checkpoints":
        info = inspect.discover_checkpoints()
        text = inspect.checkpoints_table
    else:
        info = inspect.preview_dataset(args.source, prompt_column=args.prompt_column,
                                       answer_column=args.answer_column, model=args.model,
                                       system_prompt=args.system_prompt, limit=args.limit)
        text = inspect.dataset_text
    print(json.dumps(info, ensure_ascii=False) if args.json else text(info))
    return 0


def _inspect_parser(subparsers) -> None:
    from engine.train.inspect import PREVIEW_ROWS

    parser = subparsers.add_parser("inspect", help="what a run would use: devices, checkpoints, a dataset's preview",
                                   description="Look before training: the CUDA GPUs (or the CPU) and whether QLoRA "
                                               "4-bit can run; the Hugging Face checkpoints in the HF cache and the "
                                               "runs; a dataset's columns, first rows and first prompt as the model "
                                               "sees it. --json prints one JSON document.")
    actions = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    devices = actions.add_parser("devices", help="CUDA GPUs (name, memory) or the CPU's cores; QLoRA availability")
    checkpoints = actions.add_parser("checkpoints", help="HF checkpoints of the HF cache and the runs, with "
                                                         "architecture, parameters and size")
    dataset = actions.add_parser("dataset", help="a built-in task or a file: columns, first rows, rendered first prompt")
    dataset.add_argument("source", metavar="SOURCE", help="a built-in task (addition, arithmetic) or a "
                                                          ".jsonl/.csv/.parquet file")
    dataset.add_argument("--prompt-column", default="prompt", help="the column holding the prompt (default: prompt)")
    dataset.add_argument("--answer-column", default="answer", help="the column holding the answer (default: answer)")
    dataset.add_argument("--model", metavar="HF_FOLDER", help="render the first prompt with this checkpoint's chat "
                                                              "template, as training does")
    dataset.add_argument("--system-prompt", help="a system message before the prompt, as the run's system_prompt")
    dataset.add_argument("--limit", type=int, default=PREVIEW_ROWS, metavar="N",
                         help=f"rows to show (default: {PREVIEW_ROWS})")
    for action in (devices, checkpoints, dataset):
        action.add_argument("--json", action="store_true", help="one JSON document instead of text")
    parser.set_defaults(func=_cmd_inspect)


def _cmd_rewards(args: argparse.Namespace) -> int:
    from engine.train.reward_check import CheckSettings, check_rewards, read_completions, report_text

    settings = CheckSettings(
        rewards=tuple(args.rewards), reward_weights=tuple(args.reward_weights) if args.reward_weights else None,
        model=args.model, dataset=args.dataset, prompt_column=args.prompt_column, answer_column=args.answer_column,
        system_prompt=args.system_prompt, prompts=args.prompts, samples=args.samples,
        max_completion_length=args.max_completion_length, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed,
        device=args.device, prefilled=args.prefilled)
    typed = read_completions(args.completion, args.completions)

    def work(job):
        report = check_rewards(settings, typed, on_event=job.emit, cancel=job.cancel)
        if args.events == "auto":
            print(report_text(report))
        return report

    return run_job("reward-check", work, args, stages=["load", "sample", "score"])


def _rewards_parser(subparsers) -> None:
    parser = subparsers.add_parser("rewards", help="check rewards on a few completions before a run",
                                   description="Score a few completions with a run's rewards before spending GPU "
                                               "time, and say which rewards never fire or never change.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="sample a few completions (or take typed ones) and score them with each reward",
        description="Sample --samples completions for each of the dataset's first --prompts prompts (as GRPO "
                    "samples them), or score the completions given with --completion / --completions, and show "
                    "each reward's score, the total and the think/answer split; a reward that gives 0 (or "
                    "nothing) to every completion is flagged, e.g. a regex without re.DOTALL.")
    check.add_argument("--rewards", nargs="+", default=["accuracy", "format"], metavar="REWARD",
                       help="accuracy, format, length, repetition or path/to/file.py:function (default: accuracy format)")
    check.add_argument("--reward-weights", nargs="+", type=float, metavar="X", help="one weight per reward (default: 1 each)")
    check.add_argument("--model", metavar="HF_FOLDER", help="the checkpoint to sample from (and whose template "
                                                            "renders the prompts)")
    check.add_argument("--dataset", help="prompts and answers: a built-in task (addition, arithmetic) or a file")
    check.add_argument("--prompt-column", default="prompt", help="the dataset's prompt column (default: prompt)")
    check.add_argument("--answer-column", default="answer", help="the dataset's answer column (default: answer)")
    check.add_argument("--system-prompt", help="a system message before each prompt")
    check.add_argument("--completion", action="append", metavar="TEXT",
                       help="a completion to score for the dataset's first prompt (repeat it); no sampling")
    check.add_argument("--completions", metavar="FILE.jsonl",
                       help="completions to score: one JSON object per line with completion (and prompt, answer)")
    check.add_argument("--prompts", type=int, default=2, metavar="N", help="prompts to sample for (default: 2)")
    check.add_argument("--samples", type=int, default=2, metavar="N", help="completions per prompt (default: 2)")
    check.add_argument("--max-completion-length", type=int, default=64, metavar="N",
                       help="token budget of each sampled completion (default: 64)")
    check.add_argument("--temperature", type=float, default=0.7, metavar="X", help="sampling temperature (default: 0.7)")
    check.add_argument("--top-p", type=float, default=1.0, metavar="X", help="nucleus sampling (default: 1.0)")
    check.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed (default: 0)")
    check.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    check.add_argument("--prefilled", action=argparse.BooleanOptionalAction, default=None,
                       help="typed completions: the prompt already opened <think> (default: from the model's "
                            "template, else no)")
    _add_events_flag(check)
    parser.set_defaults(func=_cmd_rewards)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.demo.pipeline import STAGES, TerminalView, default_out, run_demo, table_text
    from engine.demo.recipe import DEFAULT, SMOKE

    # torch's OpenMP threads spin long when they wait; beside any other busy process (the window drawing the
    # dashboard, a second job) the spinning starves the work (tests/conftest.py measured 3× on a small loop;
    # the smoke demo's export stage took 14 s instead of 1.2 s on a busy 2-core machine). Read by libgomp when
    # torch loads, which no code before run_demo does.
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

    def work(job):
        out = Path(args.out).expanduser() if args.out else default_out(args.seed)
        result = run_demo(out, seed=args.seed, recipe=SMOKE if args.smoke else DEFAULT, ollama=args.ollama,
                          on_event=job.emit, cancel=job.cancel)
        if args.events != "jsonl":
            print(table_text(result))
        return result

    sink = TerminalView() if args.events == "auto" else sink_for(args.events)
    return run_job("demo", work, args, stages=list(STAGES), sink=sink)


def _demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the whole R1 recipe on a tiny model, on this CPU: SFT cold start, GRPO, eval, GGUF, chat",
        description="Train a tiny reasoning model from scratch the way DeepSeek-R1 was trained, each stage a real "
                    "run of the real command (aha distill sft, aha eval, aha grpo, aha export, aha chat): a 124K-"
                    "parameter Qwen2 learns 3-digit addition from programmatic reasoning traces (cold start), "
                    "GRPO with accuracy and format rewards raises its held-out pass@1, the merged model is exported "
                    "to GGUF (q8_0) and added to the model library, and it answers one question through llama.cpp. "
                    "About two to three minutes on two CPU cores, no download. The runs stay in `aha runs list`.")
    parser.add_argument("--seed", type=int, default=0, help="the model's initial weights and all sampling (default 0)")
    parser.add_argument("--out", metavar="DIR", help="a new folder for the demo and its stage runs (default: "
                                                     "<data dir>/demo/seed-S-N)")
    parser.add_argument("--ollama", metavar="NAME", help="also register the GGUF with the local Ollama under NAME")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps of each stage: checks that everything runs in seconds, learns nothing")
    _add_events_flag(parser)
    parser.set_defaults(func=_cmd_demo)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from engine.pipeline import runner, view

    if args.action == "show":
        print(view.spec_text(runner.load_pipeline(args.file, args.set or (), args.model)[0]))
        return 0
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # as `aha demo`: torch's idle OpenMP threads starve the stages
    if args.action == "run":
        spec = runner.load_pipeline(args.file, args.set or (), args.model)[0]  # a bad file: one line, no run

        def work(job):
            return runner.run_pipeline(args.file, sets=args.set or (), model=args.model, output_dir=args.out,
                                       on_event=job.emit, cancel=job.cancel)
    else:
        spec = runner.saved_spec(args.run)

        def work(job):
            return runner.resume_pipeline(args.run, sets=args.set or (), on_event=job.emit, cancel=job.cancel)

    def reported(job):
        result = work(job)
        if args.events != "jsonl":
            print(view.state_text(result))
        if result["status"] == "error":
            failed = next((stage for stage in result["stages"] if stage["status"] == "error"), None)
            raise AhaError(f"stage {failed['name'] if failed else '?'} failed; change its settings with `aha pipeline "
                           f"resume {result['run_dir']} --set STAGE.SETTING=VALUE`")
        return result

    sink = view.TerminalView(spec) if args.events == "auto" else sink_for(args.events)
    return run_job("pipeline", reported, args, stages=[stage.name for stage in spec.stages], sink=sink)


def _pipeline_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pipeline", help="multi-stage recipes (R1's four stages): run, resume, show",
        description="Run a pipeline file: [[stage]] tables of kind sft, kd, grpo, generate, eval or export, each with "
                    "that command's settings, a later stage naming an earlier one's output (model = \"@cold_start\", "
                    "traces = \"@rejection.traces\"). The pipeline is a run whose children are the stage runs; "
                    "killed anywhere, `aha pipeline resume` continues at the stage and step it stopped, and a "
                    "finished stage is never redone. Bundled: r1 (DeepSeek-R1's four stages on the model you name, "
                    "--model) and r1-mini (the same on the demo's tiny model, minutes on a CPU).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="start a pipeline file (a path, or r1 / r1-mini)")
    show = actions.add_parser("show", help="the stages of a pipeline file and their settings, checked, without running")
    for sub in (run, show):
        sub.add_argument("file", metavar="FILE", help="a pipeline .toml, or a bundled one: r1, r1-mini")
        sub.add_argument("--model", help="the base model (an HF checkpoint folder), instead of the file's")
        sub.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="override a variable (name=VALUE), a top-level key (seed=3) or a stage's setting "
                              "(cold_start.max_steps=50); the value is read as TOML; repeat for several")
    run.add_argument("--out", metavar="DIR", help="a new folder for the pipeline and its stage runs (default: "
                                                  "<data dir>/runs/pipeline-<id>)")
    resume = actions.add_parser("resume", help="continue a pipeline run at the stage and step it stopped")
    resume.add_argument("run", metavar="RUN", help="the pipeline's run id or directory")
    resume.add_argument("--set", action="append", metavar="STAGE.SETTING=VALUE",
                        help="change a setting of a stage that has not finished (a failed one, say); kept with the "
                             "pipeline; repeat for several")
    for sub in (run, resume):
        _add_events_flag(sub)
    parser.set_defaults(func=_cmd_pipeline)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from engine import doctor

    facts = doctor.gather()
    print(json.dumps(doctor.report(facts), ensure_ascii=False) if args.json else doctor.report_text(doctor.lines(facts)))
    return 0


def _doctor_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="what this machine can do for Aha (GPU, llama.cpp's GPU backend, QLoRA, Ollama, disk), with fixes",
        description="Check this machine: the NVIDIA GPU and its VRAM, whether llama-cpp-python was built with a GPU "
                    "backend, torch and CUDA (the train extra), QLoRA 4-bit (bitsandbytes), whether Ollama answers at "
                    "OLLAMA_HOST, the data directory and its free space. Each line is ok, warning or missing, and "
                    "each line not ok says its fix. Changes nothing; exits 0 when the checks ran.")
    parser.add_argument("--json", action="store_true", help="one JSON document: lines, counts and the facts behind them")
    parser.set_defaults(func=_cmd_doctor)


class _VersionAction(argparse.Action):
    """--version: Aha's version with llama-cpp-python's and Python's, read from metadata when asked (nothing imported)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from engine.doctor import version_line

        print(version_line())  # on stdout, as argparse's own version action
        parser.exit(0)


# Each entry adds one subcommand; later modules (grpo, distill) add theirs here.
def _cmd_desktop(args: argparse.Namespace) -> int:
    from engine import desktop

    if args.action == "install":
        for path in desktop.install():
            print(f"wrote {path}")
        print("Aha is in the application menu (a menu that is open already may need reopening).")
    else:
        removed = desktop.uninstall()
        for path in removed:
            print(f"removed {path}")
        if not removed:
            print(f"no menu entry of Aha under {desktop.data_home()}: nothing to remove")
    return 0


def _desktop_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "desktop", help="Linux: put Aha in the application menu, with its icon (install, uninstall)",
        description="Write (or remove) Aha's freedesktop menu entry, its icon in the hicolor theme and its "
                    "AppStream metainfo under $XDG_DATA_HOME (default ~/.local/share).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("install", help="write the .desktop entry, the icons and the metainfo (again: replace them)")
    actions.add_parser("uninstall", help="remove exactly what install wrote")
    parser.set_defaults(func=_cmd_desktop)


SUBCOMMANDS: list[Callable] = [_chat_parser, _serve_parser, _models_parser, _export_parser, _distill_parser, _grpo_parser,
                               _eval_parser, _runs_parser, _inspect_parser, _rewards_parser, _demo_parser,
                               _pipeline_parser, _doctor_parser, _desktop_parser]
# Commands that read or start runs: they first mark runs whose process is gone as crashed.
RECOVERS_RUNS = ("runs", "grpo", "distill", "eval", "demo", "pipeline")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake said as every error is: one line, `aha: error: …`, exit 2 (the usage
    itself is what --help shows). Subcommands' parsers are of this class too (argparse makes them so)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"aha: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aha", description="Aha — a workbench for DeepSeek-R1-style reasoning models: chat, GRPO, "
                                "distillation and GGUF export.")
    parser.add_argument("--version", action=_VersionAction, help="show the version (and llama-cpp-python's) and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def _recover_runs() -> None:
    """Runs left `running` by a process that is gone become `crashed` (chat replies are left alone: another
    `aha chat` may be writing one)."""
    from engine.store import Store

    with Store() as store:
        store.recover_runs()


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # as called, for a run's record
    try:
        if args.command in RECOVERS_RUNS:
            _recover_runs()
        return args.func(args)
    except AhaError as error:
        if getattr(args, "events", None) == "jsonl":
            sink_for("jsonl")(make_event("error", message=str(error)))
        print(f"aha: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aha: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`aha chat --json | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a pipeline cut short


if __name__ == "__main__":
    sys.exit(main())
