"""The vLLM backend (llava/serve/vllm_backend.py) against ours, on both shipped models.

With vLLM installed (`bash setup.sh --vllm`): for `none` and four pre-LLM methods (PruMerge adaptive), the answers and
every metadata field of an answer line through vLLM equal the torch backend's, one question at a time and in one batch
of mixed visual-token counts; the eval runner writes the same answers file with either backend on 30 shapes questions;
`fastv run --backend vllm` and `python -m llava.eval.run --backend vllm` reach it. One engine per model for the module.
Without vLLM these skip, except in CI (CI=true), where .ci/run installs it and they must run.

Without vLLM too: in-LLM methods refused by name before anything loads, a placeholder count that does not match
refused, the options that --backend vllm cannot take refused, the scratch model folder vLLM reads, BACKEND/TP of the
eval scripts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llava.errors import InputError
from llava.eval.backend import Prompt
from llava.serve.vllm_backend import VllmBackend, check_placeholders, vllm_folder

REPO = Path(__file__).resolve().parents[1]
MODELS = {"llava": REPO / "models/llava-shapes-tiny", "next": REPO / "models/llava-next-shapes-tiny"}
METHODS = {  # none + pre-LLM methods; prumerge keeps an adaptive number
    "llava": ("none", "fastervlm:keep=36", "random:keep=50,seed=0", "uniform:keep=64", "prumerge"),
    "next": ("none", "fastervlm:keep=36", "hired:rate=0.2,alpha=0.5", "pool:keep=16", "prumerge"),
}
IN_LLM = ("fastv:k=2,ratio=0.5", "dart", "pdrop", "sparsevlm", "fastervlm:keep=36+fastv:k=2,ratio=0.5")
GENERATION = dict(max_new_tokens=12, temperature=0.0, seed=0)


def need_vllm() -> None:
    """Skip where vLLM does not import; fail in CI (CI=true), where .ci/run installs it (`setup.sh --vllm`)."""
    try:
        import vllm  # noqa: F401
    except Exception as error:  # noqa: BLE001  (a broken install raises more than ImportError)
        reason = f"vLLM is not installed here ({type(error).__name__}: {error}); bash setup.sh --vllm"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{reason} (CI=true: these tests must run)", pytrace=False)
        pytest.skip(reason)


# ----------------------------------------------------------------------------- without vLLM


@pytest.mark.parametrize("method", IN_LLM)
def test_an_in_llm_method_is_refused_by_name_before_loading(method):
    with pytest.raises(InputError, match=r"prunes inside the LLM .*between decoder layers.*vLLM does not expose"):
        VllmBackend.load(str(MODELS["llava"]), method)


def test_the_runner_and_fastv_run_refuse_an_in_llm_method_and_what_vllm_cannot_take(tmp_path, capsys):
    from fastv import cli
    from llava.eval import run

    base = ["--benchmark", "shapes", "--model-path", str(MODELS["llava"]), "--output-dir", str(tmp_path / "run")]
    assert run.main(base + ["--backend", "vllm", "--method", "dart"]) == 2
    assert "'dart' prunes inside the LLM" in capsys.readouterr().err
    assert run.main(base + ["--backend", "vllm", "--load-8bit"]) == 2
    assert "--load-8bit is for --backend torch" in capsys.readouterr().err
    assert run.main(base + ["--tensor-parallel-size", "2"]) == 2
    assert "--tensor-parallel-size is for --backend vllm" in capsys.readouterr().err
    assert not (tmp_path / "run" / "answers.jsonl").exists()
    assert cli.main(["run", "--prompt", "What is it?", "--backend", "vllm", "--method", "pdrop"]) == 2
    assert "'pdrop' prunes inside the LLM" in capsys.readouterr().err


def test_a_placeholder_count_other_than_expected_is_refused():
    check_placeholders([1, 4, 9, 4], 4, 2, "images")
    with pytest.raises(InputError, match="holds 2 image placeholder"):
        check_placeholders([1, 4, 9, 4], 4, 1, "images")
    with pytest.raises(InputError, match="holds 36 image placeholder.*37 visual tokens"):
        check_placeholders([1] + [4] * 36 + [9], 4, 37, "visual tokens after vLLM's expansion")


def test_the_model_folder_vllm_reads_is_a_scratch_copy_with_a_processor_config():
    folder = MODELS["next"]
    before = sorted(p.name for p in folder.iterdir())
    scratch = vllm_folder(folder, json.loads((folder / "config.json").read_text()))
    assert scratch != folder and sorted(p.name for p in folder.iterdir()) == before  # nothing written into models/
    processor = json.loads((scratch / "processor_config.json").read_text())
    assert processor == {"processor_class": "LlavaNextProcessor", "image_token": "<image>", "patch_size": 28,
                         "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
    assert (scratch / "model.safetensors").resolve() == (folder / "model.safetensors").resolve()


def test_the_eval_scripts_pass_backend_and_tp_to_the_runner(tmp_path):
    python = tmp_path / "python"
    python.write_text('#!/usr/bin/env bash\necho "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "BACKEND": "vllm", "TP": "2", "CUDA_VISIBLE_DEVICES": "0,1"}
    out = subprocess.run(["bash", "scripts/v1_6/eval/gqa.sh", "64"], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("-m llava.eval.run ")  # one process: vLLM splits the GPUs, not torchrun
    assert "--backend vllm --tensor-parallel-size 2" in out
    env.pop("BACKEND")
    out = subprocess.run(["bash", "scripts/v1_5/eval/gqa.sh", "64"], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "--backend" not in out and "torch.distributed.run" in out


# ----------------------------------------------------------------------------- with vLLM


@pytest.fixture(scope="module")
def backends():
    """model -> (vLLM backend, our pipeline): one engine per model for the whole module."""
    need_vllm()
    from llava.pipeline import LlavaPipeline

    return {name: (VllmBackend.load(str(path)), LlavaPipeline.load(str(path))) for name, path in MODELS.items()}


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    """A data root holding a 32-question shapes test split, written here: a fresh clone has no benchmark data."""
    from fastv.sweep import generate_questions

    root = tmp_path_factory.mktemp("eval")
    generate_questions(root / "shapes", "questions.jsonl", 32, "lattice")
    return root


def shapes_prompts(eval_root: Path, n: int, sizes: bool) -> list[Prompt]:
    """The first `n` shapes questions; with `sizes`, every other image cropped to another aspect (NeXT: another
    crop grid, so other token counts)."""
    prompts = []
    lines = (eval_root / "shapes/questions.jsonl").read_text().splitlines()[:n]
    for i, line in enumerate(lines):
        question = json.loads(line)
        image = Image.open(eval_root / "shapes/images" / question["image"]).convert("RGB")
        if sizes and i % 2:
            image = image.crop((0, 0, image.width, image.height // (2 + i % 3)))
        prompts.append(Prompt(question["text"], image))
    return prompts


def ours(pipeline, prompts: list[Prompt], method: str):
    from llava.eval.backend import TorchBackend

    pipeline.model.set_pruning(method)
    return TorchBackend(pipeline).answer(prompts, **GENERATION)


@pytest.mark.parametrize("model", MODELS)
def test_answers_and_metadata_equal_ours_single_and_in_a_batch_of_mixed_token_counts(backends, eval_root, model):
    engine, pipeline = backends[model]
    prompts = shapes_prompts(eval_root, 6, sizes=model == "next")
    for method in METHODS[model]:
        expected = ours(pipeline, prompts, method)
        batch = engine.answer(prompts, method=method, **GENERATION)
        single = [engine.answer([p], method=method, **GENERATION)[0] for p in prompts[:3]]
        assert [r.text for r in batch] == [r.text for r in expected], method
        assert [r.metadata for r in batch] == [r.metadata for r in expected], method
        assert single == expected[:3], method
        counts = [r.metadata["visual_tokens"][0] for r in batch]
        if method in ("prumerge",) or model == "next":
            assert len(set(counts)) > 1, (method, counts)  # the batch mixes token counts
    assert engine.describe().method_spec == "none"  # a call's method does not stay


def test_a_text_only_prompt_and_a_prompt_that_fills_the_window(backends, eval_root):
    engine, pipeline = backends["llava"]
    prompts = [Prompt("What is a star?", None)]
    assert engine.answer(prompts, **GENERATION) == ours(pipeline, prompts, "none")
    long = [Prompt("word " * 2000, shapes_prompts(eval_root, 1, False)[0].image)]
    with pytest.raises(InputError, match="longer than the context of 1024") as theirs:
        engine.answer(long, **GENERATION)
    with pytest.raises(InputError) as mine:
        ours(pipeline, long, "none")
    assert str(theirs.value) == str(mine.value)


def test_two_placeholders_for_one_image_are_refused(backends, eval_root):
    engine, _ = backends["llava"]
    image = shapes_prompts(eval_root, 1, False)[0].image
    with pytest.raises(InputError, match="holds 2 image placeholder"):
        engine.answer([Prompt("<image>\n<image>\nWhat is it?", image)], **GENERATION)
    with pytest.raises(InputError, match="prunes inside the LLM"):
        engine.answer([Prompt("What is it?", image)], method="fastv:k=2,ratio=0.5", **GENERATION)


@pytest.mark.parametrize("model", MODELS)
def test_the_eval_runner_writes_the_same_answers_file_with_either_backend(backends, eval_root, model, tmp_path):
    from llava.eval.run import run_benchmark

    engine, pipeline = backends[model]
    pipeline.model.set_pruning("fastervlm:keep=36")
    for name, backend in (("torch", pipeline), ("vllm", engine.with_method("fastervlm:keep=36"))):
        run_benchmark("shapes", backend, eval_root, tmp_path / name, model_path=str(MODELS[model]),
                      method="fastervlm:keep=36", limit=30, batch_size=8, max_new_tokens=8, progress=False)
    torch_lines = (tmp_path / "torch/answers.jsonl").read_text()
    assert len(torch_lines.splitlines()) == 30
    assert (tmp_path / "vllm/answers.jsonl").read_text() == torch_lines
    scores = [json.loads((tmp_path / n / "scores.json").read_text())["headline"] for n in ("torch", "vllm")]
    assert scores[0] == scores[1]


def test_fastv_run_and_the_runner_command_reach_the_vllm_backend(backends, eval_root, monkeypatch, tmp_path, capsys):
    from fastv import cli
    from llava.eval import run

    engine, _ = backends["llava"]
    loaded = []

    def load(model_path, method=None, **options):  # the module's engine, with the method the command asked for
        loaded.append((Path(model_path).name, method, options.get("tensor_parallel_size")))
        return engine.with_method(method)

    monkeypatch.setattr(VllmBackend, "load", staticmethod(load))
    image = eval_root / "shapes/images/test_0000000.png"
    assert cli.main(["run", "--image", str(image), "--prompt", "What color is the diamond?", "--method",
                     "fastervlm:keep=36", "--backend", "vllm", "--json"]) == 0
    via_vllm = json.loads(capsys.readouterr().out)
    assert cli.main(["run", "--image", str(image), "--prompt", "What color is the diamond?", "--method",
                     "fastervlm:keep=36", "--json"]) == 0
    via_torch = json.loads(capsys.readouterr().out)
    assert via_vllm["backend"] == "vllm" and via_vllm["answer"] == via_torch["answer"]
    assert via_vllm["visual_tokens"] == via_torch["visual_tokens"] == [36]
    assert run.main(["--benchmark", "shapes", "--model-path", str(MODELS["llava"]), "--method", "prumerge",
                     "--backend", "vllm", "--tensor-parallel-size", "1", "--limit", "3", "--data-root", str(eval_root), "--output-dir",
                     str(tmp_path / "run"), "--no-progress"]) == 0
    assert len((tmp_path / "run/answers.jsonl").read_text().splitlines()) == 3
    assert loaded == [("llava-shapes-tiny", "fastervlm:keep=36", 1), ("llava-shapes-tiny", "prumerge", 1)]
