"""scripts/train_tiny.py: a few steps of a tiny config train, save, resume and export a loadable llava-hf folder."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--patch-size", "56", "--vision-width", "32", "--vision-layers", "3", "--vision-heads", "2",
        "--text-width", "32", "--text-intermediate", "64", "--text-layers", "2", "--text-heads", "2",
        "--batch-size", "6", "--warmup", "1", "--lr", "3e-3", "--workers", "0", "--threads", "1",
        "--extra-turns", "1", "--bare-rate", "0.5", "--log-every", "2", "--eval-every", "1000", "--eval-samples", "6", "--save-every", "3"]


@pytest.fixture(scope="module")
def train_tiny():
    spec = importlib.util.spec_from_file_location("train_tiny", ROOT / "scripts" / "train_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_save_resume_export(train_tiny, tmp_path):
    torch.set_num_threads(1)
    out, export = tmp_path / "run", tmp_path / "model"
    summary = train_tiny.main(TINY + ["--steps", "8", "--out", str(out), "--seed", "0"])
    losses = summary["lm_loss"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) < sum(losses[:2])  # from ~log(754) towards the answers' distribution
    assert set(summary["validation"]) >= {"color", "ocr", "overall"}
    assert (out / "last.pt").is_file() and "eval step 8" in (out / "train.log").read_text()

    # resume runs only the remaining steps, then exports
    summary = train_tiny.main(TINY + ["--steps", "10", "--out", str(out), "--resume", "--export", str(export)])
    assert summary["step"] == 10 and summary["samples"] == 60 and len(summary["lm_loss"]) == 2

    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(export))  # checks every key and shape
    assert model.config.tokens_per_image == 36 and processor.image_size == 336
    config = json.loads((export / "config.json").read_text())
    assert config["vision_feature_layer"] == -2 and config["image_token_index"] == tokenizer.convert_tokens_to_ids("<image>")
    assert tokenizer.decode(tokenizer("red").input_ids, skip_special_tokens=True) == "red"
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    saved = {k: v for k, v in model.state_dict().items()}
    for name, value in ckpt["model"].items():  # the export holds the trained weights (fp16-rounded)
        torch.testing.assert_close(saved[name], value.half().float(), rtol=0, atol=0)
