"""fastv bench: every field for every method and reference, the references doing what they claim, the files written.
What it measures, never how fast (no timed assertion)."""

import json

import pytest
import torch

from fastv import bench
from fastv.bench.contestants import StageClock, _hf_fastv_hooks, make_inputs, random_models
from fastv.bench.output import REFERENCE
from fastv.bench.timing import TIME_FIELDS

FIELDS = {"method", "visual_tokens", "vision_s", "pruning_s", "prefill_s", "ttft_s", "decode_s_per_token", "e2e_s",
          "new_tokens", "peak_memory_bytes", "kv_cache_bytes", "answers_per_s"}


@pytest.fixture(scope="module")
def llava_result(tiny_llava_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    methods = ["none", "fastv:k=2,ratio=0.5", "fastervlm:keep=16"]
    return out, bench.main(model_path=str(tiny_llava_dir), methods=methods, batch=2, new_tokens=3, repeats=2,
                           warmup=0, json_out=str(out), progress=False)


def test_every_row_has_every_field_and_the_files_are_written(llava_result):
    out, result = llava_result
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").stat().st_size > 0
    assert {"machine", "model", "dtype", "batch", "rows"} <= set(result) and result["batch"] == 2
    names = [row["method"] for row in result["rows"]]
    assert names[:3] == ["ours, none", "ours, fastv:ratio=0.5", "ours, fastervlm:keep=16"]
    assert names[3] == REFERENCE and names[4].startswith("transformers FastV (eager")
    for row in result["rows"]:
        assert FIELDS <= set(row), row["method"]
        for field in TIME_FIELDS:
            low, high = row[f"{field}_iqr"]
            assert low <= row[field] <= high
        assert row["ttft_s"] <= row["e2e_s"] and row["new_tokens"] == 3
        assert row["ttft_vs_ours_unpruned"] > 0 and row["decode_vs_transformers"] > 0


def test_rows_report_the_work_each_method_does(llava_result, loaded):
    _, result = llava_result
    rows = {row["method"]: row for row in result["rows"]}
    config = loaded[1].config
    patches = config.vision.num_patches
    none, fastv, fastervlm = rows["ours, none"], rows["ours, fastv:ratio=0.5"], rows["ours, fastervlm:keep=16"]
    assert none["visual_tokens"] == patches and none["pruning_s"] == 0
    assert fastv["kept_after_layer_k"] == round(patches * 0.5) and fastv["pruning_s"] > 0
    assert fastervlm["visual_tokens"] == 16 and fastervlm["pruning_s"] > 0
    reference = rows[REFERENCE]
    assert reference["visual_tokens"] == patches and reference["kv_cache_bytes"] == none["kv_cache_bytes"]
    eager = next(row for name, row in rows.items() if name.startswith("transformers FastV"))
    assert eager["kept_after_layer_k"] == fastv["kept_after_layer_k"] and eager["kv_cache_bytes"] == 0  # no cache
    # KV bytes: 2 samples x (k layers of every token + the rest of the kept ones) x K and V x width x 4 bytes
    text = config.text
    prompt = bench.TEXT_TOKENS + patches  # the text tokens and the image
    width = 2 * text.num_kv_heads * text.head_dim * 4
    assert none["kv_cache_bytes"] == 2 * text.num_layers * prompt * width
    kept = prompt - patches + fastv["kept_after_layer_k"]
    assert fastv["kv_cache_bytes"] == 2 * (2 * prompt + (text.num_layers - 2) * kept) * width
    assert fastervlm["kv_cache_bytes"] == 2 * text.num_layers * (prompt - patches + 16) * width


def test_the_transformers_fastv_reference_keeps_what_ours_keeps(tiny_llava_dir, loaded):
    """The eager, attention-output FastV done with hooks on transformers' decoder gives our FastV's next-token logits."""
    from transformers import LlavaForConditionalGeneration

    model = loaded[1]
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation="eager").eval()
    image_token = hf.config.image_token_index
    prompts, images, hf_inputs = make_inputs(model, 3, 20, image_token, torch.device("cpu"), torch.float32)
    k, keep = 2, 13
    clock = StageClock(torch.device("cpu"))
    hooks = _hf_fastv_hooks(hf, (k, keep), hf_inputs["input_ids"], image_token, clock)
    try:
        with torch.no_grad():
            theirs = hf(**hf_inputs, use_cache=False, output_attentions=True, logits_to_keep=1).logits[:, -1]
    finally:
        for hook in hooks:
            hook.remove()
    model.set_pruning(f"fastv:k={k},keep={keep}")
    try:
        with torch.no_grad():
            ours = model(prompts, images).logits[:, -1]
    finally:
        model.set_pruning("none")
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert clock.prefill("pruning") > 0


def test_next_rows_count_partitions_and_newlines(tiny_next_dir, tmp_path):
    result = bench.main(model_path=str(tiny_next_dir), methods=["none", "fastv:k=2,ratio=0.5", "hired:rate=0.2"],
                        new_tokens=2, repeats=1, warmup=0, json_out=str(tmp_path / "next.json"), progress=False)
    rows = {row["method"]: row for row in result["rows"]}
    none = rows["ours, none"]
    assert none["visual_tokens"] == 64 + 16 * 17  # base 8x8, then 2x2 crops stitched: 16 rows of 16 and a newline each
    assert rows[REFERENCE]["visual_tokens"] == none["visual_tokens"]
    assert rows["ours, fastv:ratio=0.5"]["kept_after_layer_k"] == 5 * 64 // 2
    eager = next(row for name, row in rows.items() if name.startswith("transformers FastV"))
    assert eager["kept_after_layer_k"] == 5 * 64 // 2 + 16  # the same image tokens, and the newlines ours keeps
    assert rows["ours, hired"]["visual_tokens"] == 5 * 64 // 5  # floor(P x N x 0.2), no newline


def test_a_random_weight_preset_shares_one_copy_of_the_weights():
    ours, hf, image_token = random_models("bench-v1.5", torch.device("cpu"), torch.float32)
    assert ours.lm_head.weight.data_ptr() == hf.lm_head.weight.data_ptr()
    assert ours.config.text.num_layers == 4 and image_token == ours.config.text.vocab_size - 1
    assert not any(p.is_meta for p in ours.parameters()) and ours.language_model.inv_freq.device.type == "cpu"


@pytest.mark.parametrize("script, files", [
    ("fastv_aokvqa.sh", ["fastv-aokvqa.json", "fastv-aokvqa.png", "fastv-aokvqa-table.md"]),
    ("hired_sys_report.sh", ["hired-sys-report.json", "hired-sys-report.md", "hired-sys-report-table.md"]),
])
def test_paper_scripts_write_their_tables(script, files, tiny_llava_dir, tiny_next_dir, tmp_path):
    """scripts/latency/*.sh on CPU with a tiny checkpoint: the bench files and the paper-layout table."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    model = tiny_next_dir if script.startswith("hired") else tiny_llava_dir
    env = {**os.environ, "DEVICE": "cpu", "DTYPE": "float32", "REPEATS": "1", "NEW_TOKENS": "2", "OUT": str(tmp_path),
           "FASTV": str(repo / ".venv/bin/fastv")}
    done = subprocess.run(["bash", f"scripts/latency/{script}", str(model)], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in files:
        assert (tmp_path / name).stat().st_size > 0, name
    table = (tmp_path / files[-1]).read_text()
    if script.startswith("fastv"):
        assert "| float32 | off |" in table and "| float32 | K=2, R=75% |" in table  # FastV's rows
    else:
        assert "| hired:rate=0.1 |" in table and "token throughput" in table


def test_the_throughput_table_has_a_column_per_batch_and_both_ratios(llava_result):
    import copy

    from fastv.paper_tables import throughput

    _, result = llava_result
    bigger = copy.deepcopy(result)
    bigger["batch"] = 8
    for row in bigger["rows"]:
        row["answers_per_s"] *= 2 if row["spec"] == "none" else 1
    table = throughput([bigger, result]).splitlines()
    assert table[2] == "| method | batch 2 | batch 8 |"
    none = next(line for line in table if line.startswith("| ours, none |"))
    assert none.count("(1.00 / ") == 2  # ours unpruned over itself, then over transformers, at each batch
    reference = next(line for line in table if line.startswith(f"| {REFERENCE} |"))
    assert reference.split("|")[2].strip().endswith("/ 1.00)")
    rows = {row["method"]: row["answers_per_s"] for row in result["rows"]}
    ours, hf = rows["ours, none"], rows[REFERENCE]
    assert f"({hf / (2 * ours):.2f} / 1.00)" in reference.split("|")[3]


@pytest.mark.parametrize("name, text, message", [
    ("missing.json", None, "error: fastv bench result not found: {path}; give a file `fastv bench --json` wrote"),
    ("broken.json", '{"rows": [', "error: fastv bench result {path} is not valid JSON (line 1, column 11: Expecting "
                                  "value); give a file `fastv bench --json` wrote"),
    ("list.json", "[]", "error: fastv bench result {path} must hold a JSON object, got a list; give a file "
                        "`fastv bench --json` wrote"),
    ("other.json", '{"model": "x"}', "error: fastv bench result {path} has no list of `rows`; give a file "
                                     "`fastv bench --json` wrote"),
])
def test_paper_tables_refuse_a_missing_or_invalid_result_file_in_one_line(tmp_path, capsys, name, text, message):
    from fastv.paper_tables import main

    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as caught:
        main(["throughput", str(path)])
    assert caught.value.code == 2
    assert capsys.readouterr().err == message.format(path=path) + "\n"
