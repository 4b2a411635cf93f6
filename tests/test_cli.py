"""`fastv run` end to end on the tiny checkpoint, human and JSON output."""

import json

from fastv.cli import main
from tests import helpers


def test_run_json_fields(capsys, tiny_llava_dir, tmp_path):
    image = tmp_path / "picture.png"
    helpers.random_images(1, seed=51)[0].save(image)
    common = ["run", "--model-path", str(tiny_llava_dir), "--image", str(image), "--prompt", "what is in this image ?",
              "--max-new-tokens", "5", "--json"]

    assert main(common + ["--method", "fastervlm:keep=16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"answer", "prompt_ids", "visual_tokens", "kept", "prefill_s", "total_s", "method"} <= set(result)
    assert result["prompt_ids"].count(-200) == 1 and result["prompt_ids"][0] == 1
    assert result["visual_tokens"] == [16] and len(result["kept"][0]) == 16
    assert result["kept_partitions"] == [[sorted(result["kept"][0])]] and result["partition_grid"] == [[0, 0]]
    assert 0 < result["prefill_s"] <= result["total_s"]

    assert main(common + ["--method", "fastv:k=2,keep=10"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["visual_tokens"] == [64]  # all enter the LLM; FastV drops inside it
    assert len(result["kept"][0]) == 10 and max(result["kept"][0]) < 64  # kept after layer k, patch indices
    assert result["kept_partitions"] == [[result["kept"][0]]]

    assert main(common[:-1] + ["--method", "none"]) == 0
    text = capsys.readouterr().out
    assert "answer:" in text and "visual tokens entering the LLM: 64 (of 64 per image)" in text
    assert "prefill (time to first token):" in text


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("none", "fastv", "fastervlm", "random", "uniform", "pool", "hired", "prumerge", "prumerge+"):
        assert f"\n{name} " in "\n" + out


def test_report_subcommand(capsys, tmp_path):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no such run directory or folder: {tmp_path / 'nothing'}"


def test_run_json_on_llava_next(capsys, tiny_next_dir, tmp_path):
    image = tmp_path / "wide.png"
    helpers.random_images(1, seed=52, sizes=[(300, 100)])[0].save(image)  # 3:1: a 1x3 crop grid, nothing padded
    common = ["run", "--model-path", str(tiny_next_dir), "--image", str(image), "--prompt", "what is in this image ?",
              "--max-new-tokens", "3", "--json"]

    assert main(common + ["--method", "fastervlm:keep=10"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["partition_grid"] == [[1, 3]]
    assert [len(p) for p in result["kept_partitions"][0]] == [10] * 4  # base, then the crops left to right
    assert result["visual_tokens"] == [40 + 8]  # with one image_newline per stitched row

    assert main(common + ["--method", "fastervlm:keep=29", "--patch-merge", "spatial", "--image-grid", "224x224"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["partition_grid"] == [[2, 2]] and result["visual_tokens"] == [145]

    assert main(common + ["--method", "fastv:k=2,keep=8"]) == 0
    result = json.loads(capsys.readouterr().out)
    kept = result["kept_partitions"][0]
    assert sum(map(len, kept)) == 32 and len(result["kept"][0]) == 32  # 8 per partition, chosen over the image
    assert all(0 <= i < 64 for p in kept for i in p) and all(p == sorted(p) for p in kept)

    assert main(common + ["--method", "hired:rate=0.25"]) == 0
    result = json.loads(capsys.readouterr().out)
    kept = result["kept_partitions"][0]
    # floor(4 x 64 x 0.25) = 64: 32 for the base view, the crops' quotas truncated; no newline tokens
    assert len(kept[0]) == 32 and result["visual_tokens"] == [sum(map(len, kept))] and sum(map(len, kept)) <= 64
    assert result["kept"][0][:32] == kept[0] and all(i >= 64 for i in result["kept"][0][32:])  # base, then the crops

    assert main(common + ["--method", "prumerge"]) == 0
    result = json.loads(capsys.readouterr().out)
    kept, ids = result["kept_partitions"][0], result["kept"][0]
    assert ids.count(-1) == 4 and ids[-1] == -1  # each partition's extra token, after its own patches
    assert result["visual_tokens"] == [len(ids)] == [sum(map(len, kept)) + 4]
    assert sorted(i for i in ids if i >= 0) == [p * 64 + i for p, part in enumerate(kept) for i in part]

    assert main(common[:-1] + ["--method", "none"]) == 0
    assert "(of 64 per partition; 1x3 crops; spatial_unpad merge)" in capsys.readouterr().out


def test_run_refuses_anyres_options_on_llava_15_in_one_line(capsys, tiny_llava_dir):
    assert main(["run", "--model-path", str(tiny_llava_dir), "--prompt", "hi", "--patch-merge", "spatial"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --patch-merge is for LLaVA-NeXT (anyres) checkpoints; {tiny_llava_dir} is LLaVA-1.5")


