"""The shared training core: config files and flags, LR schedules, model and adapter setup with its
one-line errors, the run directory with atomic checkpoints, RNG state, signals and the step loop."""

import argparse
import json
import math
import os
import random
import signal

import pytest
import torch

from engine.errors import AhaError
from engine.jobs import CancelToken, cancel_handling
from engine.train.config import add_config_flags, config_to_toml, flag_overrides, load_config
from engine.train.core import (
    StepAbandoned,
    TrainConfig,
    Trainer,
    cpu_note,
    load_model,
    load_tokenizer,
    lr_lambda,
    merged_adapter,
    merges_for_sampling,
    out_of_memory_message,
    resolve_device,
    rng_state,
    set_rng_state,
)
from engine.train.runs import Run
from engine.train.sft import SFTConfig, build_batch, pack_bins, sft_loss, train_sft
from tests.support import platforms
from tests.support.char_model import make_char_model


@pytest.fixture(scope="module")
def char_folder(tmp_path_factory):
    return make_char_model(tmp_path_factory.mktemp("char"))


# Config -------------------------------------------------------------------------------------------


def test_toml_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "m"\nlearning_rate = 1\nlora_target_modules = ["q_proj", "v_proj"]\nmax_steps = 5\n')
    config = load_config(TrainConfig, path, {"max_steps": 7, "seed": None})
    assert config.model == "m" and config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.lora_target_modules == ("q_proj", "v_proj") and config.max_steps == 7 and config.seed == 42
    assert load_config(TrainConfig, None, {}) == TrainConfig()
    (tmp_path / "back.toml").write_text(config_to_toml(config))
    assert load_config(TrainConfig, tmp_path / "back.toml") == config


def test_config_errors_are_one_line(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("max_step = 5\n")
    with pytest.raises(AhaError, match=r"unknown setting 'max_step' in .*run.toml"):
        load_config(TrainConfig, path)
    path.write_text('max_steps = "many"\n')
    with pytest.raises(AhaError, match=r"setting 'max_steps' in .*run.toml should be an integer, got 'many'"):
        load_config(TrainConfig, path)
    path.write_text("max_steps = [\n")
    with pytest.raises(AhaError, match="is not valid TOML"):
        load_config(TrainConfig, path)
    with pytest.raises(AhaError, match="not found"):
        load_config(TrainConfig, tmp_path / "missing.toml")
    with pytest.raises(AhaError, match="no model given"):
        TrainConfig().validate()
    with pytest.raises(AhaError, match="lr_scheduler_type"):
        TrainConfig(model="m", lr_scheduler_type="step").validate()


def test_flags_from_the_dataclass():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, TrainConfig)
    args = parser.parse_args(["--max-steps", "9", "--no-use-peft", "--lora-target-modules", "q_proj", "k_proj",
                              "--learning-rate", "3e-4"])
    assert flag_overrides(args, TrainConfig) == {"max_steps": 9, "use_peft": False, "learning_rate": 3e-4,
                                                 "lora_target_modules": ["q_proj", "k_proj"]}
    assert load_config(TrainConfig, None, flag_overrides(args, TrainConfig)).lora_target_modules == ("q_proj", "k_proj")


def test_help_of_a_flag_is_its_settings_description_and_default():
    """--help shows what a setting does (its `setting(default, help, group)`) and then its default, as TOML
    writes it; a boolean also names the flag that changes it."""
    parser = argparse.ArgumentParser()
    add_config_flags(parser, TrainConfig)
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["max_steps"] == "optimizer steps to train (a resumed run may raise it) (default: 100)"
    assert helps["use_peft"].endswith("(default: true; --no-use-peft turns it off)")
    assert helps["report_to"].endswith("tensorboard)")
    assert helps["gradient_checkpointing"] == ("recompute activations in the backward pass: less memory, about 30%% "
                                               "slower (default: false; --gradient-checkpointing turns it on)")
    # (argparse prints 30%)


def test_cpu_note_names_the_flags_of_a_smaller_setting():
    """On a CPU a new run at GRPO's defaults is told the exact flags of a setting a CPU can run, and those
    flags parse back into exactly the suggested settings; eval_samples only when the run evaluates; a run
    already that small, or a resumed one (its settings are fixed), hears only that it trains on the CPU."""
    from engine import cli
    from engine.train.grpo import GRPOConfig

    config = GRPOConfig(model="m", dataset="addition")
    note, smaller = cpu_note(config)
    assert note == ("training on the CPU (no CUDA GPU found), where a step at these settings can take minutes: for "
                    "a first run try --prompts-per-step 4 --num-generations 4 --max-completion-length 128 (now 16, "
                    "8 and 256)")
    flags = note.split("try ")[1].split(" (now")[0].split()
    args = cli.build_parser().parse_args(["grpo", *flags])
    assert flag_overrides(args, GRPOConfig) == smaller == {"prompts_per_step": 4, "num_generations": 4,
                                                            "max_completion_length": 128}
    assert cpu_note(GRPOConfig(model="m", dataset="addition", eval_steps=10))[1]["eval_samples"] == 50
    small = GRPOConfig(model="m", dataset="addition", device="cpu", prompts_per_step=2, max_completion_length=64)
    assert cpu_note(small) == ("training on the CPU (device = cpu), where a step at these settings can take minutes: "
                               "for a first run try --num-generations 4 (now 8)", {"num_generations": 4})
    assert cpu_note(config, resume=True) == ("training on the CPU (no CUDA GPU found)", {})
    assert cpu_note(SFTConfig(model="m", dataset="addition", max_length=None))[1] == {
        "per_device_train_batch_size": 4, "max_length": 512}  # no limit is above any


def test_lr_schedules():
    linear = lr_lambda("linear", warmup_steps=2, total_steps=10)
    assert [linear(step) for step in (0, 1, 2, 6, 10)] == [1 / 3, 2 / 3, 1.0, 0.5, 0.0]
    cosine = lr_lambda("cosine", warmup_steps=0, total_steps=10)
    assert cosine(0) == 1.0 and math.isclose(cosine(5), 0.5) and math.isclose(cosine(10), 0.0, abs_tol=1e-12)
    assert lr_lambda("constant", 3, 10)(1) == 0.5 and lr_lambda("constant", 3, 10)(7) == 1.0


# Model and adapter --------------------------------------------------------------------------------


def test_model_folder_errors(tmp_path):
    with pytest.raises(AhaError, match=r"model folder .*nowhere not found"):
        load_model(TrainConfig(model=str(tmp_path / "nowhere")), torch.device("cpu"))
    (tmp_path / "adapter").mkdir()
    with pytest.raises(AhaError, match="has no config.json"):
        load_model(TrainConfig(model=str(tmp_path / "adapter")), torch.device("cpu"))


def test_4bit_needs_cuda(char_folder, monkeypatch):
    monkeypatch.delenv("AHA_ALLOW_CPU_4BIT", raising=False)
    with pytest.raises(AhaError) as error:
        load_model(TrainConfig(model=str(char_folder), load_in_4bit=True), torch.device("cpu"))
    assert str(error.value).startswith("4-bit needs CUDA") and "\n" not in str(error.value)
    if not torch.cuda.is_available():
        with pytest.raises(AhaError, match="sees no CUDA GPU"):
            resolve_device("cuda")


def test_out_of_memory_message_names_the_settings():
    from engine.train.grpo import GRPOConfig

    message = out_of_memory_message(GRPOConfig(model="m", dataset="addition"), "generation", 3)
    assert message == ("CUDA out of memory during generation at step 3: lower prompts_per_step (now 16), "
                       "num_generations (now 8), max_completion_length (now 256); gradient_checkpointing = true "
                       "and load_in_4bit = true also save memory")
    message = out_of_memory_message(GRPOConfig(model="m", dataset="addition", gradient_checkpointing=True), "training", 1)
    assert "or raise gradient_accumulation_steps (now 1); load_in_4bit = true also save memory" in message


def test_char_tokenizer_round_trip(char_folder):
    tokenizer = load_tokenizer(char_folder)
    text = "<think>\n5+8+1=14\n</think>\n1476"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text) - len("<think>") - len("</think>") + 2
    assert tokenizer.decode(ids) == text and len(tokenizer) == 20


# Run directory, checkpoints, RNG, signals ---------------------------------------------------------


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    run = Run(tmp_path, "test", None)
    for step in (1, 2, 3):
        with run.new_checkpoint(step, keep=2) as folder:
            assert folder.name.startswith(".step-")
            (folder / "state.json").write_text("{}")
            assert run.latest_checkpoint() == (None if step == 1 else tmp_path / "checkpoints" / f"step-{step - 1}")
    assert [path.name for path in run.checkpoints()] == ["step-2", "step-3"]
    with pytest.raises(RuntimeError), run.new_checkpoint(4, keep=2) as folder:
        (folder / "state.json").write_text("{}")
        raise RuntimeError("killed half-way")
    assert run.latest_checkpoint().name == "step-3"
    assert not list((tmp_path / "checkpoints").glob(".step-*"))


def test_rng_state_round_trip():
    state = rng_state()
    expected = (random.random(), torch.rand(3).tolist())
    set_rng_state(state)
    assert (random.random(), torch.rand(3).tolist()) == expected


@platforms.posix_signals
def test_signals_set_the_cancel_token():
    token = CancelToken()
    before = signal.getsignal(signal.SIGTERM)
    with cancel_handling(token, read_stdin=False):
        os.kill(os.getpid(), signal.SIGTERM)
        assert token.cancelled
    assert signal.getsignal(signal.SIGTERM) is before


def test_fit_records_checkpoints_and_cancels(char_folder, tmp_path):
    """A toy step function through Trainer.fit: metrics every step, checkpoints every save_steps and on
    cancel, an abandoned step rolled back, and a resume that restores weights, optimizer, RNG and state."""
    config = TrainConfig(model=str(char_folder), output_dir=str(tmp_path / "run"), max_steps=5, save_steps=2,
                         learning_rate=1e-2, lora_r=4, lora_alpha=8)
    events = []
    run = Run.create("test", config, events.append)
    cancel = CancelToken()
    trainer = Trainer(config, run, cancel=cancel)
    position = {"rows": 0}

    def step(number):
        if number == 4:
            torch.rand(1)  # RNG used before the cancel is seen: rolled back
            position["rows"] += 99
            cancel.cancel()
            raise StepAbandoned
        position["rows"] += 1
        ids = torch.tensor([[5, 6, 7, 8]], device=trainer.device)
        loss = trainer.model(input_ids=ids, labels=ids).loss
        loss.backward()
        return {"loss": float(loss.detach()), **trainer.optimizer_step()}

    status = trainer.fit(step, state=lambda: dict(position), restore_state=lambda s: position.update(s), stage="test")
    assert status == "cancelled" and trainer.step == 3 and position == {"rows": 3}
    assert [path.name for path in run.checkpoints()] == ["step-2", "step-3"]
    lines = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and "learning_rate" in lines[0]
    assert {event["type"] for event in events} >= {"metrics", "progress", "artifact"}
    assert run.store.get_run(run.store_id)["status"] == "cancelled"
    expected_next = torch.rand(4)

    resumed = Trainer(config, Run.open(run.dir), resume=True)
    assert resumed.step == 3 and resumed.resumed_state == {"rows": 3}
    assert torch.equal(torch.rand(4), expected_next)  # the RNG continues where the checkpoint left it
    for (name, mine), theirs in zip(trainer.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(mine, theirs), name
    assert resumed.scheduler.state_dict()["last_epoch"] == 3


def test_oom_in_a_step_becomes_one_line(char_folder, tmp_path):
    config = TrainConfig(model=str(char_folder), output_dir=str(tmp_path / "run"), max_steps=2)
    trainer = Trainer(config, Run.create("test", config))

    def step(number):
        trainer.phase = "training"
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(AhaError, match=r"^CUDA out of memory during training at step 1: raise gradient_accumulation"):
        trainer.fit(step, state=dict, restore_state=lambda s: None, stage="test")
    assert trainer.run.store.get_run(trainer.run.store_id)["status"] == "error"


# SFT ----------------------------------------------------------------------------------------------


def test_sft_loss_covers_the_completion_only(char_folder):
    tokenizer = load_tokenizer(char_folder)
    rows = [{"prompt": "1+2=", "completion": "<think>\n</think>\n3"}, {"prompt": "10+20=", "completion": "30"}]
    ids, attention, loss_mask, positions = build_batch(tokenizer, rows)
    assert positions is None
    assert attention.sum(1).tolist() == [4 + 5 + 1, 6 + 2 + 1]  # <think> and </think> are one token each
    assert loss_mask[0].tolist() == [0] * 4 + [1] * 6
    assert loss_mask[1].tolist() == [0] * 6 + [1] * 3 + [0]  # right padding
    assert ids[0, 9].item() == tokenizer.eos_token_id and ids[1, 9].item() == tokenizer.pad_token_id
    full = build_batch(tokenizer, rows, completion_only_loss=False).loss_mask
    assert torch.equal(full, attention)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(char_folder, attn_implementation="eager")
    loss, metrics = sft_loss(model, build_batch(tokenizer, rows))
    labels = torch.where(loss_mask.bool(), ids, -100)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=attention, labels=labels).loss
    assert math.isclose(float(loss.detach()), float(reference), rel_tol=1e-5)
    assert metrics["tokens"] == 6 + 3  # completion tokens and EOS, the targets of the shifted logits


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_batch_gives_the_padded_batchs_loss_and_gradient(char_folder, attention):
    """Packing puts several sequences in a row with position ids restarting at 0; transformers makes the
    mask block-diagonal from them, so the loss and its gradient equal the padded batch's."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(char_folder)
    rows = [{"prompt": f"{a}+{b}=", "completion": f"<think>\n{a}+{b}\n</think>\n{a + b}"}
            for a, b in ((1, 2), (345, 678), (12, 9), (7, 70), (999, 1), (40, 40))]
    model = AutoModelForCausalLM.from_pretrained(char_folder, attn_implementation=attention)
    padded, packed = build_batch(tokenizer, rows), build_batch(tokenizer, rows, packing=True, max_length=48)
    assert packed.attention is None and packed.ids.shape[0] < len(rows)  # fewer rows
    assert int(packed.loss_mask.sum()) == int(padded.loss_mask.sum())
    gradients = []
    for batch in (padded, packed):
        model.zero_grad()
        loss, metrics = sft_loss(model, batch)
        loss.backward()
        gradients.append((float(loss.detach()), metrics["tokens"], [p.grad.clone() for p in model.parameters()]))
    (loss_a, tokens_a, grads_a), (loss_b, tokens_b, grads_b) = gradients
    assert tokens_a == tokens_b and math.isclose(loss_a, loss_b, rel_tol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(grads_a, grads_b, strict=True))


def test_pack_bins_best_fit_decreasing():
    lengths = [30, 10, 25, 5, 20, 60, 15]
    bins = pack_bins(lengths, 60)
    assert sorted(index for bin_ in bins for index in bin_) == list(range(len(lengths)))
    assert all(sum(lengths[index] for index in bin_) <= 60 for bin_ in bins)
    assert len(bins) == 3  # 165 tokens in 60-token rows: the fewest possible
    assert pack_bins([70, 5], 60) == [[0], [1]]  # too long for any row: a row of its own


def test_merged_adapter_samples_like_lora_and_restores_the_base_exactly(char_folder):
    """During sampling each LoRA layer runs on W + s·B·A (one matmul); afterwards the base weights are
    the very tensors they were, bit for bit, and LoRA is back in the forward."""
    from engine.train.core import add_adapter

    config = TrainConfig(model=str(char_folder), lora_r=4, lora_alpha=8)
    model, _ = load_model(config, torch.device("cpu"))
    model = add_adapter(model, config)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter (lora_B starts at zero)
            parameter.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with merged_adapter(model):
            merged = model(input_ids=ids).logits
            layers = [module for module in model.modules() if hasattr(module, "merged_adapters")]
            assert layers and all(layer.merged for layer in layers)
        after = model(input_ids=ids).logits
    assert torch.allclose(merged, expected, atol=1e-5)
    assert torch.equal(after, expected)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert not any(layer.merged for layer in layers)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert merges_for_sampling(config, cpu) and not merges_for_sampling(config, cuda)
    assert merges_for_sampling(TrainConfig(model="m", merge_adapter_for_sampling="on"), cuda)
    assert not merges_for_sampling(TrainConfig(model="m", load_in_4bit=True, merge_adapter_for_sampling="on"), cuda)
    assert not merges_for_sampling(TrainConfig(model="m", merge_adapter_for_sampling="off"), cpu)


@pytest.mark.parametrize("packing", [False, True])
def test_sft_run_falls_and_writes_a_model(char_folder, tmp_path, packing):
    result = train_sft(SFTConfig(model=str(char_folder), dataset="addition", use_peft=False, learning_rate=2e-3,
                                 per_device_train_batch_size=16, gradient_accumulation_steps=2, max_steps=12,
                                 eval_steps=12, eval_samples=8, max_completion_length=8, packing=packing,
                                 max_length=128, output_dir=str(tmp_path / "sft")))
    assert result["status"] == "complete" and result["step"] == 12 and "eval_accuracy" in result
    lines = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < lines[0]["loss"] - 0.5
    assert (tmp_path / "sft" / "final" / "model" / "model.safetensors").is_file()
    assert load_tokenizer(result["model"]).chat_template
