"""LoRA training: only adapter weights move, loss only on answers, save/load round trip, resume, errors."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import cli, has_gpu, train_args

from mevqa.backends.base import load_backend
from mevqa.config import ModelSpec, TrainConfig, from_dict
from mevqa.errors import InputError
from mevqa.inputs import ClipParts
from mevqa.train.data import IGNORE, AnswerOnlyCollator, QADataset
from mevqa.train.loop import load_rows, train
from mevqa.train.model import build_model


def cfg_for(synthme, model, out, **kw) -> TrainConfig:
    """A small recipe; keyword overrides are nested like the YAML (`frames={"input": "diff"}`)."""
    base = {
        "data": str(synthme / "train.jsonl"),
        "out": str(out),
        "model": str(model),
        "root": str(synthme),
        "frames": {"frames": 2},
        "gen": {"max_new_tokens": 8},
        "batch_size": 2,
        "grad_accum": 1,
        "lr": 2e-3,
        "max_steps": 4,
        "save_every": 0,
        "report_to": "none",
    }
    return from_dict(TrainConfig, {**base, **kw}, "test")


def batch_of(cfg, processor, n=2):
    ds = QADataset(load_rows(cfg.data, cfg)[:n], ClipParts(cfg.root, cfg.frames))
    return AnswerOnlyCollator(processor)([ds[i] for i in range(n)])


def test_loss_only_on_answer_tokens(synthme, tiny_qwen, tmp_path):
    from mevqa.models.loading import load_processor

    cfg = cfg_for(synthme, tiny_qwen, tmp_path / "a")
    proc = load_processor(str(tiny_qwen))
    rows = load_rows(cfg.data, cfg)[:2]
    batch = batch_of(cfg, proc)
    for i, row in enumerate(rows):
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE]
        text = proc.tokenizer.decode(labelled)
        assert text == f"{row['answer']}<|im_end|>\n", text
        prompt_len = int(batch["attention_mask"][i].sum()) - len(labelled)
        assert (batch["labels"][i][:prompt_len] == IGNORE).all()  # the question and images carry no loss
        assert (batch["labels"][i][batch["attention_mask"][i] == 0] == IGNORE).all()  # nor the padding


def test_one_step_changes_only_lora_weights(synthme, tiny_qwen, tmp_path):
    from mevqa.models.loading import load_processor

    cfg = cfg_for(synthme, tiny_qwen, tmp_path / "a")
    model = build_model(cfg, "cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch_of(cfg, load_processor(str(tiny_qwen)))).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable and all("lora_" in n for n in trainable)
    assert any("lora_B" in n for n in changed)
    assert not any("visual" in n for n in trainable)  # language model only, by default


def test_held_out_asks_a_merged_copy_with_the_same_answers(synthme, tiny_qwen, tmp_path):
    """In-training held-out questions go to a merged copy of a small fp32 LoRA model (2-3x faster): its
    answers are those of the training model itself, which is left as it was."""
    from mevqa.backends.hf import TransformersBackend
    from mevqa.evaluation.runner import answer_rows
    from mevqa.models.loading import load_processor
    from mevqa.train.loop import answering_model

    cfg = cfg_for(synthme, tiny_qwen, tmp_path / "a", eval_data=str(synthme / "test.jsonl"))
    model = build_model(cfg, "cpu")
    torch.manual_seed(1)
    for n, p in model.named_parameters():  # a LoRA that moves the answers (B = 0 at init would not)
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows, proc = load_rows(cfg.eval_data, cfg)[:12], load_processor(str(tiny_qwen))

    def answers(m):
        return [a.text for _, a in answer_rows(cfg.eval_config(), TransformersBackend(m, proc, "t"), rows)]

    model.eval()
    merged = answering_model(model)
    assert merged is not model and not hasattr(merged, "peft_config")
    assert answers(merged) == answers(model)
    base = build_model(cfg, "cpu").eval()  # B = 0: the base's answers, which the LoRA changed
    assert answers(model) != answers(base)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert any(p.requires_grad for p in model.parameters())


def test_train_lowers_loss_and_adapter_round_trips(synthme, tiny_qwen, tmp_path):
    out = tmp_path / "lora"
    metrics = train(
        cfg_for(
            synthme,
            tiny_qwen,
            out,
            max_steps=30,
            batch_size=4,
            lr=5e-3,
            eval_data=str(synthme / "test.jsonl"),
            eval_limit=6,
            question_types=["coarse"],
            eval_every=15,
            report_to="tensorboard",
        )
    )
    losses = [v for _, v in metrics["train_loss"]]
    # From a random base LoRA moves slowly (the frozen lm_head caps the logits): ~6.1 -> ~5.4 nats here.
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    assert [e["step"] for e in metrics["held_out"]] == [15, 30]
    for f in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "mevqa.yaml",
        "metrics.json",
        "training.png",
    ):
        assert (out / f).is_file(), f
    import yaml

    recipe = yaml.safe_load((out / "mevqa.yaml").read_text())
    assert recipe["base_config_hash"] and recipe["frames"]["input"] == "frames" and recipe["rank"] == 16
    assert recipe["base_model"] == str(tiny_qwen.resolve())  # absolute: serve/eval compare it anywhere
    assert list((out / "runs").rglob("events.out.tfevents.*"))  # TensorBoard logs beside the adapter
    # reload from disk: identical logits to the in-memory model, different from the base
    from mevqa.models.loading import load_processor

    proc = load_processor(str(tiny_qwen))
    cfg = cfg_for(synthme, tiny_qwen, out)
    batch = batch_of(cfg, proc)
    tuned = load_backend(ModelSpec(str(tiny_qwen), str(out), device="cpu")).model
    base = load_backend(ModelSpec(str(tiny_qwen), device="cpu")).model
    with torch.no_grad():
        lt, lb = tuned(**batch).logits, base(**batch).logits
    assert not torch.allclose(lt, lb, atol=1e-3)
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    again = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_qwen), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, lt)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_interrupt_and_resume_reach_the_same_step(synthme, tiny_qwen, tmp_path, method):
    out = tmp_path / method
    args = train_args(
        synthme,
        tiny_qwen,
        out,
        "--max-steps",
        "40",
        "--batch-size",
        "1",
        "--method",
        method,
        "--save-every",
        "5",
    )
    cmd = [sys.executable, "-m", "mevqa", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 600  # a condition, not a time: kill once step 10 is on disk
    while proc.poll() is None and time.time() < deadline and not (out / "checkpoints" / "step-10").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "step-10").exists() and not (out / "adapter_config.json").exists()
    r = cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert "trained 40 steps" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    steps = [s for s, _ in metrics["train_loss"]]
    assert steps[-1] == 40 and steps == sorted(set(steps)) and steps[0] == 1


class Killed(Exception):
    """Stands for a kill right after a checkpoint reached the disk."""


def test_a_resumed_run_equals_an_uninterrupted_one(synthme, tiny_qwen, tmp_path, monkeypatch, caplog):
    """Stopped after its step-2 checkpoint and resumed, a 4-step run ends with the same adapter, tensor by
    tensor, and the same loss curve as one never stopped: the data order, the LoRA dropout draws, AdamW's
    moments and the schedule all carry over (a step-count check alone would pass with any of them lost)."""
    from safetensors.torch import load_file

    import mevqa.train.loop as loop

    def run(out, **kw):
        return train(cfg_for(synthme, tiny_qwen, out, max_steps=4, save_every=2, **kw))

    whole = run(tmp_path / "whole")
    real_save = loop.save_checkpoint

    def save_then_die(*args):
        raise Killed(real_save(*args))

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed, match="step-2"):
        run(tmp_path / "resumed")
    monkeypatch.undo()
    resumed = run(tmp_path / "resumed", resume=True)
    assert [s for s, _ in resumed["train_loss"]] == [1, 2, 3, 4]
    assert resumed["train_loss"] == whole["train_loss"]
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("whole", "resumed"))
    assert a.keys() == b.keys() and a
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    with caplog.at_level("WARNING", logger="mevqa.train.loop"):  # nothing to resume: said, not silent
        run(tmp_path / "fresh", resume=True)
    assert "holds no checkpoint to resume from: training from step 0" in caplog.text


def test_resume_from_a_checkpoint_cut_short_is_one_error(synthme, tiny_qwen, tmp_path, monkeypatch):
    """A checkpoint whose weights lost their tail (a full disk, a copy): one error naming it, which says
    how to go on (the loader's SafetensorError was a traceback)."""
    import mevqa.train.loop as loop

    real_save = loop.save_checkpoint

    def save_then_die(*args):
        raise Killed(real_save(*args))

    cfg = cfg_for(synthme, tiny_qwen, tmp_path / "run", max_steps=4, save_every=2)
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed, match="step-2"):
        train(cfg)
    monkeypatch.undo()
    (weights,) = (tmp_path / "run").rglob("trainable.safetensors")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trainable.safetensors — incomplete"):
        train(dataclasses.replace(cfg, resume=True))


def test_bad_recipe_and_existing_out(synthme, tiny_qwen, tmp_path):
    with pytest.raises(InputError, match="method"):
        cfg_for(synthme, tiny_qwen, tmp_path, method="dora")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "adapter_config.json").write_text("{}")
    r = cli("train", "--data", synthme / "train.jsonl", "--model", tiny_qwen, "--out", tmp_path / "x")
    assert r.returncode == 2 and "--resume or --overwrite" in r.stderr


@pytest.fixture(scope="module")
def trained(synthme, tiny_qwen, tmp_path_factory):
    """One small adapter trained with a diff input and label prompts, shared by the tests below."""
    root = tmp_path_factory.mktemp("adapters")
    train(
        cfg_for(
            synthme, tiny_qwen, root / "diff-lora", max_steps=2, frames={"input": "diff"}, prompt="labels"
        )
    )
    return root / "diff-lora"


def test_adapters_list_and_merge(synthme, tiny_qwen, trained, tmp_path):
    r = cli("adapters", "list", "--dir", trained.parent)
    assert r.returncode == 0 and "diff-lora" in r.stdout and "diff" in r.stdout and "lora" in r.stdout
    merged = tmp_path / "merged"
    r = cli("adapters", "merge", "diff-lora", "--dir", trained.parent, "--out", merged)
    assert r.returncode == 0, r.stderr
    from mevqa.models.loading import load_processor

    batch = batch_of(cfg_for(synthme, tiny_qwen, tmp_path), load_processor(str(tiny_qwen)))
    from mevqa.models.adapters import attach_adapter
    from mevqa.models.loading import load_model

    a = attach_adapter(load_model(ModelSpec(str(tiny_qwen), device="cpu")), trained, str(tiny_qwen))
    b = load_backend(ModelSpec(str(merged), device="cpu")).model
    with torch.no_grad():
        torch.testing.assert_close(a(**batch).logits, b(**batch).logits, atol=1e-4, rtol=1e-4)
    bad = cli("adapters", "merge", "..", "--dir", trained.parent, "--out", tmp_path / "m2")
    assert bad.returncode == 2 and "not a folder inside" in bad.stderr
    bad = cli("adapters", "merge", "/etc", "--dir", trained.parent, "--out", tmp_path / "m2")
    assert bad.returncode == 2 and "no adapter_config.json" in bad.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_gpu_bf16_lora_and_qlora(synthme, tiny_qwen, tmp_path, method):
    metrics = train(
        cfg_for(
            synthme,
            tiny_qwen,
            tmp_path / method,
            method=method,
            max_steps=10,
            model={"model": str(tiny_qwen), "device": "cuda"},
        )
    )
    assert metrics["steps"] == 10 and all(v == v for _, v in metrics["train_loss"])


def test_eval_takes_the_adapters_recorded_input_mode(synthme, tiny_qwen, trained, tmp_path):
    out = tmp_path / "run"
    args = [
        "--data",
        synthme / "test.jsonl",
        "--root",
        synthme,
        "--model",
        tiny_qwen,
        "--adapter",
        trained,
        "--out",
        out,
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
    ]

    def settings(*extra: str) -> dict:
        r = cli("eval", *args, *extra)
        assert r.returncode == 0, r.stderr
        return json.loads((out / "metrics.json").read_text())["settings"]

    recorded = settings()
    assert recorded["frames"]["input"] == "diff" and recorded["prompt"] == "labels"
    assert settings("--input", "frames")["frames"]["input"] == "frames"  # a flag still overrides


def test_every_entry_point_takes_an_adapter_mevqa_train_wrote(
    synthme, tiny_qwen, trained, tmp_path, monkeypatch
):
    """`mevqa ask`/`chat` refused every trained adapter (`unknown key(s) prompt`): its mevqa.yaml records the
    prompt strategy, which ask and chat now take (labels: the label set is appended, as eval does)."""
    clip = synthme / "frames" / "s01_c01"
    q = "What is the coarse expression class?"
    r = cli("ask", clip, q, "--model", tiny_qwen, "--adapter", trained, "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["adapter"] == str(trained)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{q}\n/quit\n"))
    r = cli("chat", clip, "--model", tiny_qwen, "--adapter", trained, "--max-new-tokens", "4")
    assert r.returncode == 0 and "mevqa> " in r.stdout, r.stderr
    r = cli("serve", "--model", tiny_qwen, "--adapter", f"mine={trained}", "--dry-run")
    assert r.returncode == 0 and "mine=" in r.stdout, r.stderr
    r = cli(
        "eval",
        "--data",
        synthme / "test.jsonl",
        "--root",
        synthme,
        "--model",
        tiny_qwen,
        "--adapter",
        trained,
        "--out",
        tmp_path / "e",
        "--limit",
        "1",
        "--max-new-tokens",
        "4",
    )
    assert r.returncode == 0, r.stderr


def test_ask_phrases_the_question_as_the_recorded_prompt(qwen, clips):
    """The prompt strategy reaches ask: `labels` appends the label set, `hierarchical` asks coarse first."""
    from mevqa.config import FrameConfig, GenConfig
    from mevqa.evaluation.parse import prompted
    from mevqa.inputs import load_clip, visual_parts
    from mevqa.prompts import Q_FINE

    parts = visual_parts(load_clip(str(clips["folder"]), FrameConfig(frames=2)), FrameConfig(frames=2))
    q = Q_FINE
    assert prompted(qwen, parts, q, "plain", GenConfig()) == q
    assert prompted(qwen, parts, q, "labels", GenConfig()).startswith(q + " Answer with one of:")
    hier = prompted(qwen, parts, q, "hierarchical", GenConfig(max_new_tokens=4))
    assert hier.startswith(q) and len(hier) > len(q)
