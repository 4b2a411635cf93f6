"""The `fastv` subcommands' own checks (issue 24, items 4, 5, 17, 18, 22): FLOPs in one stated unit, the
projector counted on what it ran on, prompts checked against the context, sweeps that survive a bad
--n-questions, and output paths checked before any work. Known answers worked by hand on the tiny models
of tests/helpers.py (CLIP 112 px / 14 = 8x8 patches of width 32, MLP 64, 3 layers, select layer -2;
Llama width 64, MLP 128, 3 layers, context 1024; projector mlp2x_gelu)."""

import json
from pathlib import Path

import pytest

from fastv.cli import main
from llava.errors import InputError
from tests import helpers

# ---- item 4: --formula paper counts every quantity in multiply-adds ---------------------------------------


def paper_by_hand():
    """The tiny LLaVA-1.5 with 36 text tokens (35 before the image, 1 after: 100 tokens), none and
    fastv:k=1,keep=16 (layers 1 and 2 on 100 - 64 + 16 = 52 tokens), in multiply-adds (one per multiply-add)."""
    # Vision: the patch embedding, 64 patches x 3*14*14 x 32, then 2 layers (select -2 of 3) over N = 65:
    # 4 N D^2 (q, k, v, o) + 2 N^2 D (scores, values) + 2 N D Dm (MLP) = 266240 + 270400 + 266240.
    vision = 64 * 588 * 32 + 2 * (266240 + 270400 + 266240)
    assert vision == 2809984
    projector = 64 * (32 * 64 + 64 * 64)  # two linear layers on the 64 patches
    # F(n) = 4 n d^2 + 2 n^2 d + 2 n d m, d = 64, m = 128
    f100 = 4 * 100 * 4096 + 2 * 100 * 100 * 64 + 2 * 100 * 64 * 128
    f52 = 4 * 52 * 4096 + 2 * 52 * 52 * 64 + 2 * 52 * 64 * 128
    assert (f100, f52) == (4556800, 2050048)
    # A decoded token: one query row over the layer's cache + itself: 4 d^2 + 2 (L + 1) d + 2 d m
    step = lambda cache: 4 * 4096 + 2 * (cache + 1) * 64 + 2 * 64 * 128
    none = {"vision": vision, "projector": projector, "llm_prefill": 3 * f100, "decode_per_token": 3 * step(100)}
    fastv = {"vision": vision, "projector": projector, "llm_prefill": f100 + 2 * f52,
             "decode_per_token": step(100) + 2 * step(52)}
    return none, fastv


def test_paper_formula_gives_totals_and_ratios_in_one_unit(tiny_llava_dir, tmp_path, capsys):
    out = tmp_path / "flops.json"
    assert main(["flops", "--model-path", str(tiny_llava_dir), "--methods", "none", "fastv:k=1,keep=16",
                 "--formula", "paper", "--text-tokens", "36", "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out.read_text()) and result["unit"] == "multiply-adds"
    none, fastv = result["rows"]
    assert none["seq_lens"] == [100] * 3 and fastv["seq_lens"] == [100, 52, 52]
    hand_none, hand_fastv = paper_by_hand()
    for row, hand in ((none, hand_none), (fastv, hand_fastv)):
        for part, value in hand.items():
            assert row[part] == value, part
        assert row["prefill"] == hand["vision"] + hand["projector"] + hand["llm_prefill"]
    # (2809984 + 393216 + 8656896) / (2809984 + 393216 + 13670400): every ratio over sums in the same unit
    assert fastv["prefill_vs_none"] == pytest.approx(11860096 / 16873600, rel=1e-12)
    assert fastv["llm_prefill_vs_none"] == pytest.approx(8656896 / 13670400, rel=1e-12)
    assert fastv["decode_per_token_vs_none"] == pytest.approx(124800 / 137088, rel=1e-12)
    assert out.with_suffix(".md").read_text().startswith("Multiply-adds (M) of ")

    # The measured count of the same input: FLOPs, 2 per multiply-add, where both count the same matmuls
    assert main(["flops", "--model-path", str(tiny_llava_dir), "--method", "fastv:k=1,keep=16", "--text-tokens", "36",
                 "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["unit"] == "FLOPs" and measured["formula"] == "measured"
    assert (measured["vision"], measured["projector"]) == (2 * hand_fastv["vision"], 2 * hand_fastv["projector"])
    assert measured["total_prefill"] == measured["vision"] + measured["projector"] + measured["llm_prefill"]


def test_one_method_json_names_its_unit_and_out_writes_it(tiny_llava_dir, tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "one.json"  # missing folders are made
    assert main(["flops", "--model-path", str(tiny_llava_dir), "--method", "fastv:k=1,keep=16", "--formula", "paper",
                 "--text-tokens", "36", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed and printed["unit"] == "multiply-adds"
    _, hand = paper_by_hand()
    assert printed["total_prefill"] == hand["vision"] + hand["projector"] + hand["llm_prefill"]
    assert printed["llm_decode_per_token"] == hand["decode_per_token"]
    assert "| fastv:k=1,keep=16 |" in out.with_suffix(".md").read_text()


# ---- item 5: the projector counted on what it ran on (NeXT: before unpadding) ------------------------------


def test_next_projector_counts_every_crop_token_it_ran_on(tiny_next_dir, tmp_path, capsys):
    """A 250x100 image on the tiny NeXT model: 1x3 crops of 112 px (336x112 canvas), the image 280 px wide in it,
    so unpadding drops 2 patch columns on each side (8 x 20 of the 8 x 24 stitched grid stay). `uniform:keep=16`
    selects 16 patches per view before the projector, some of them in the padding: the projector ran on 4 x 16."""
    image = tmp_path / "wide.png"
    helpers.random_images(1, seed=3, sizes=[(250, 100)])[0].save(image)
    assert main(["flops", "--model-path", str(tiny_next_dir), "--image", str(image), "--methods", "none",
                 "uniform:keep=16", "--json"]) == 0
    none, uniform = json.loads(capsys.readouterr().out)["rows"]
    assert none["visual_tokens"] == 64 + 8 * 20 + 8  # base view, the unpadded crops, a newline per row
    assert none["projected_tokens"] == 4 * 64 and none["projector"] == 2 * 4 * 64 * (32 * 64 + 64 * 64)
    assert uniform["visual_tokens"] - 8 < 4 * 16  # unpadding dropped some of the tokens the projector made
    assert uniform["projected_tokens"] == 4 * 16 and uniform["projector"] == 2 * 4 * 16 * (32 * 64 + 64 * 64)


# ---- item 17: the prompt checked against the context, one check for flops and bench, before any work -------


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load or build fails the test: the command had to stop before it."""
    from llava import pipeline
    from llava.model import builder, llava_arch

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(builder, "load_pretrained_model", refuse)
    monkeypatch.setattr(pipeline.LlavaPipeline, "load", refuse)
    monkeypatch.setattr(llava_arch.LlavaForCausalLM, "__init__", refuse)


@pytest.mark.parametrize("command, text_tokens, message", [
    # 960 text + 64 visual + the decoded token = 1025 > 1024
    (["flops"], 960, "--text-tokens 960: 960 text tokens, the image's 64 visual tokens (unpruned) and 1 new token(s) "
                     "do not fit the model's context of 1024 tokens"),
    (["flops"], 100000, "--text-tokens 100000: "),
    # 958 text + 64 visual + 3 new tokens = 1025
    (["bench", "--new-tokens", "3"], 958, "--text-tokens 958: 958 text tokens, the image's 64 visual tokens "
                                          "(unpruned) and 3 new token(s) do not fit the model's context of 1024 tokens"),
])
def test_text_tokens_beyond_the_context_are_refused_before_any_work(tiny_llava_dir, no_model_loads, capsys, command,
                                                                    text_tokens, message):
    assert main([*command, "--model-path", str(tiny_llava_dir), "--text-tokens", str(text_tokens)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_the_context_check_counts_the_visual_tokens_the_model_makes(tiny_llava_dir, tiny_next_dir, tmp_path, capsys):
    """At the boundary a prompt runs, and the check's visual tokens are the forward's (NeXT: unpadded)."""
    from fastv.prompt import check_prompt_fits
    from llava.model.builder import read_checkpoint

    image = tmp_path / "wide.png"
    helpers.random_images(1, seed=3, sizes=[(250, 100)])[0].save(image)
    config = read_checkpoint(str(tiny_next_dir)).config
    assert config.unpruned_image_tokens((100, 250)) == 232
    check_prompt_fits(config, 1024 - 232 - 1, (100, 250), new_tokens=1)
    with pytest.raises(InputError, match="the image's 232 visual tokens"):
        check_prompt_fits(config, 1024 - 232, (100, 250), new_tokens=1)
    assert main(["flops", "--model-path", str(tiny_next_dir), "--image", str(image), "--method", "none",
                 "--text-tokens", str(1024 - 232 - 1), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq_lens"] == [1023] * 3
    assert main(["flops", "--model-path", str(tiny_llava_dir), "--method", "none", "--text-tokens", "959", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq_lens"] == [1023] * 3


# ---- item 18: --n-questions checked before anything is written; a folder of an earlier failed run is rewritten


@pytest.mark.parametrize("n", [0, -3])
def test_sweep_refuses_no_questions_before_writing_anything(tmp_path, no_model_loads, capsys, n):
    assert main(["sweep", "--out", str(tmp_path / "sweep"), "--data-root", str(tmp_path / "data"),
                 "--n-questions", str(n)]) == 2
    assert capsys.readouterr().err == (f"error: --n-questions must be at least 1 (the test questions a shapes benchmark "
                                       f"generates), got {n}\n")
    assert not (tmp_path / "data").exists() and not (tmp_path / "sweep").exists()


def test_sweep_rewrites_a_split_left_without_questions(tiny_llava_dir, tmp_path, monkeypatch):
    """The folder today's main left for --n-questions 0 (an empty questions.jsonl), and one a kill left while
    writing the split: the next sweep writes the split and runs."""
    from fastv import sweep
    from llava.data import synthetic

    data = tmp_path / "data"
    synthetic.write_split("test", 0, data / "shapes")  # what `--n-questions 0` left behind
    options = dict(model_path=str(tiny_llava_dir), data_root=str(data), methods=["none"], limit=2, n_questions=4,
                   batch_size=2, max_new_tokens=2)
    result = sweep.main(str(tmp_path / "sweep"), **options)
    assert result["runs"][0]["questions"] == 2
    assert len((data / "shapes/questions.jsonl").read_text().splitlines()) == 4

    real = synthetic.generate_split

    def killed(split, n, start=0, look="lattice"):
        for index, sample in enumerate(real(split, n, start, look)):
            if index == 2:
                raise KeyboardInterrupt  # the user stops the sweep while the split is written
            yield sample

    other = tmp_path / "other"
    monkeypatch.setattr(synthetic, "generate_split", killed)
    with pytest.raises(KeyboardInterrupt):
        sweep.main(str(tmp_path / "sweep2"), **{**options, "data_root": str(other)})
    assert not (other / "shapes/questions.jsonl").exists()  # nothing that looks like a finished split
    monkeypatch.setattr(synthetic, "generate_split", real)
    assert sweep.main(str(tmp_path / "sweep2"), **{**options, "data_root": str(other)})["runs"][0]["questions"] == 2
    assert sorted(p.name for p in other.iterdir()) == ["shapes"]  # no scratch folder left beside it


# ---- item 22: every subcommand that writes files checks where before any work -----------------------------

IMAGE = str(Path(__file__).resolve().parents[1] / "docs" / "examples" / "shapes.png")
WRITERS = {  # subcommand -> (its arguments with {out} for the path, what the path names)
    "run": (["run", "--prompt", "hi", "--image", IMAGE, "--overlay", "{out}"], "file"),
    "bench": (["bench", "--json", "{out}"], "file"),
    "flops": (["flops", "--out", "{out}"], "file"),
    "attn": (["attn", "--image", IMAGE, "--prompt", "hi", "--out", "{out}"], "folder"),
    "analyze": (["analyze", "shift", "--out", "{out}"], "folder"),
    "sweep": (["sweep", "--out", "{out}"], "folder"),
}


@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize("case", ["empty", "under a file", "wrong kind"])
def test_output_paths_are_checked_before_any_work(tmp_path, no_model_loads, capsys, monkeypatch, command, case):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where an empty path would write
    args, kind = WRITERS[command]
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    out = {"empty": "", "under a file": str(tmp_path / "a_file" / "x"),
           "wrong kind": str(tmp_path / ("a_folder" if kind == "file" else "a_file"))}[case]
    assert main([part.format(out=out) for part in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    expected = {"empty": "is empty: name the", "under a file": "a_file",
                "wrong kind": "is a folder: name the" if kind == "file" else "a_file"}[case]
    assert expected in err
    assert not any((tmp_path / "cwd").iterdir())  # nothing written where the command ran


def test_paper_tables_checks_its_out_before_reading(tmp_path, capsys):
    from fastv import paper_tables

    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        paper_tables.main(["throughput", str(tmp_path / "missing.json"), "--out", str(tmp_path / "a_file" / "t.md")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: --out: cannot make the folder {tmp_path / 'a_file'}: {tmp_path / 'a_file'} is a file\n"
