"""`fastv sweep` end to end on the tiny checkpoint and a few generated shapes questions."""

import json

import pytest

from fastv import sweep
from fastv.shipped import SHIPPED_MODEL
from llava.errors import CheckpointError, InputError


def test_sweep_writes_runs_table_and_plot(tiny_llava_dir, tmp_path):
    out = tmp_path / "sweep"
    result = sweep.main(
        str(out), model_path=str(tiny_llava_dir), data_root=str(tmp_path / "data"),
        methods=["none", "fastervlm", "pool", "fastv"], shares=[1.0, 0.25], limit=3, n_questions=6, batch_size=3, max_new_tokens=3,
    )
    specs = [r["spec"] for r in result["runs"]]
    # FastV on the 3-layer tiny LLM prunes before layer 1 (the release's 2 of 32 at the same depth); at 25% it would
    # need (3 x 16 - 64) / 2 < 0 tokens after layer 1: out of its reach, n/a in the table.
    assert specs == ["none", "fastervlm:keep=64", "fastervlm:keep=16", "pool:keep=64", "pool:keep=16",
                     "fastv:k=1,keep=64"]
    assert [r["kept_tokens"] for r in result["runs"]] == [64, 64, 16, 64, 16, 64]
    assert [r["visual_per_layer"] for r in result["runs"]] == [64, 64, 16, 64, 16, 64]
    assert all(0 <= r["accuracy"] <= 100 for r in result["runs"])
    assert result["runs"][0]["flops_ratio"] == 1 and 0 < result["runs"][2]["flops_ratio"] < 1
    assert json.loads((out / "sweep.json").read_text()) == result
    table = (out / "sweep.md").read_text()
    assert "| fastervlm |" in table and "| fastv | 0.0 | n/a |" in table and "Per run" in table
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # Every run has its own resumable directory; a second sweep answers nothing new.
    again = sweep.main(
        str(out), model_path=str(tiny_llava_dir), data_root=str(tmp_path / "data"),
        methods=["none", "fastervlm", "pool", "fastv"], shares=[1.0, 0.25], limit=3, batch_size=3, max_new_tokens=3,
    )
    assert again == result


def test_method_spec_for_shares():
    assert sweep.method_spec("fastervlm", 0.1, 576) == "fastervlm:keep=58"
    # An in-LLM method's budget: the visual tokens per layer, averaged over the layers, nearest the share. FastV at
    # k = 2 of 32 layers: (2 x 576 + 30 keep) / 32 = 144 -> keep = 115.2 -> 115. On 4 layers k = 1: 25% of 144 is
    # reached at keep = 1 ((144 + 3) / 4 = 36.75, within 5%); 10% is not.
    assert sweep.method_spec("fastv", 0.25, 576) == "fastv:keep=115"
    assert sweep.method_spec("fastv", 0.25, 144, llm_layers=4) == "fastv:k=1,keep=1"
    assert sweep.method_spec("fastv", 0.1, 144, llm_layers=4) is None
    assert sweep.method_spec("pool", 0.1, 576) == "pool:keep=64"  # nearest square to 58
    assert sweep.method_spec("none", 0.1, 576) == "none"
    assert sweep.method_spec("hired:split=paper", 0.1, 144) == "hired:rate=0.1,split=paper"
    assert sweep.method_spec("prumerge+", 0.1, 144) == "prumerge+"  # adaptive: no budget
    # VisionZip splits a budget as its paper's 64 = 54 + 10, 128 = 108 + 20, 192 = 162 + 30 do
    assert [sweep.method_spec("visionzip", share, 576) for share in (64 / 576, 128 / 576, 192 / 576)] == [
        "visionzip:dominant=54,contextual=10", "visionzip:dominant=108,contextual=20", "visionzip:dominant=162,contextual=30"]
    assert sweep.method_spec("visionzip", 1 / 576, 576) == "visionzip:dominant=1,contextual=0"


def test_the_default_sweep_gives_every_registered_method_a_spec_at_every_share():
    """On LLaVA-1.5 the default sweep runs every registered method: each share becomes a spec its method takes."""
    from llava.model.pruning.registry import available_methods, parse_method

    for name in available_methods():
        for share in sweep.DEFAULT_SHARES:
            spec = sweep.method_spec(name, share, 144, llm_layers=4)
            if name in sweep.FIXED_BUDGETS:  # no share: its own budgets, each a spec it takes
                assert spec is None
                for fixed in sweep.fixed_budget_specs(name, 4):
                    parse_method(fixed).check_model(6, 4, 144)
                continue
            if spec is None:  # an in-LLM method out of its reach at this share: n/a
                assert name in sweep.IN_LLM_BUDGETS and share <= 0.25
                continue
            parse_method(spec)


@pytest.mark.parametrize("options, message", [
    ({"shares": [0.5, 0]}, r"--shares must be fractions of the visual tokens kept, in \(0, 1\]; got 0"),
    ({"shares": [1.5]}, r"in \(0, 1\]; got 1.5"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
    ({"limit": -1}, "--limit must be at least 1"),
    ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0"),
    ({"device": "foo"}, "unknown device 'foo'"),
    ({"methods": ["fastervlmm"]}, "unknown method 'fastervlmm'"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, options, message, monkeypatch):
    from llava import pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(pipeline.LlavaPipeline, "load", no_load)
    with pytest.raises(InputError, match=message):
        sweep.main(str(tmp_path / "sweep"), data_root=str(tmp_path / "data"), **options)


def test_out_pointing_at_a_file_is_refused(tmp_path, capsys):
    from fastv.cli import main

    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(["sweep", "--out", str(taken)]) == 2
    assert capsys.readouterr().err == f"error: --out {taken} is a file: name a folder\n"
    assert main(["sweep", "--out", str(taken / "sweep")]) == 2
    assert capsys.readouterr().err == f"error: --out: cannot make the folder {taken / 'sweep'}: {taken} is a file\n"


def test_the_out_check_makes_no_folder(tmp_path):
    """--out is checked by fastv.paths, which creates nothing: a sweep refused after the check leaves no folder."""
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        sweep.main(str(tmp_path / "new" / "sweep"), model_path=str(tmp_path / "no-model"), data_root=str(tmp_path / "data"))
    assert not (tmp_path / "new").exists()


def test_every_share_is_checked_against_the_model_before_the_first_run(tiny_llava_dir, tmp_path, monkeypatch):
    """0.005 of the tiny model's 64 tokens keeps round(0.32) = 0 (of a nominal 576: 3): refused before any run."""
    from llava import pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before every share was checked")

    monkeypatch.setattr(pipeline.LlavaPipeline, "load", no_load)
    with pytest.raises(InputError) as error:
        sweep.main(str(tmp_path / "sweep"), model_path=str(tiny_llava_dir), data_root=str(tmp_path / "data"),
                   methods=["none", "fastervlm"], shares=[0.5, 0.005], limit=2, n_questions=2)
    assert str(error.value) == ("--shares 0.005 with fastervlm on the model's 64 visual tokens per image is fastervlm:keep=0: "
                                "keep must be at least 1 (every method keeps at least one visual token of an image), got 0")
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "data").exists()


def test_table_counts_questions_and_marks_missing_types():
    result = {"benchmark": "shapes", "tokens_per_image": 100, "runs": [
        {"method": "none", "spec": "none", "share": 1.0, "kept_tokens": 100, "questions": 5, "accuracy": 80.0,
         "types": {"color": 100.0, "count": 50.0}},
        {"method": "fastervlm", "spec": "fastervlm:keep=50", "share": 0.5, "kept_tokens": 50, "questions": 5,
         "accuracy": 60.0, "types": {"color": 60.0}},  # no count question in this run: "-", not 0.0
    ]}
    table = sweep.to_markdown(result)
    assert "over 5 questions each" in table.splitlines()[0]
    assert "| fastervlm:keep=50 | 50 |  |  | 5 | 60.0 | - |" in table  # per layer and FLOPs not recorded
    assert "| none | 100 |  |  | 5 | 100.0 | 50.0 |" in table


def test_a_corrupt_run_file_in_a_sweep_folder(tiny_llava_dir, tmp_path):
    """A corrupt run.json is a one-line error naming it; a corrupt scores.json is never read, only rewritten."""
    options = dict(model_path=str(tiny_llava_dir), data_root=str(tmp_path / "data"), methods=["none"],
                   limit=2, n_questions=4, batch_size=2, max_new_tokens=2)
    first = sweep.main(str(tmp_path / "sweep"), **options)
    run_dir = tmp_path / "sweep/none"
    (run_dir / "scores.json").write_text("{cut")
    assert sweep.main(str(tmp_path / "sweep"), **options) == first
    assert json.loads((run_dir / "scores.json").read_text())["run"]["questions"] == 2
    (run_dir / "run.json").write_text("[1]")
    with pytest.raises(InputError, match=f"^{run_dir / 'run.json'} is not a JSON object"):
        sweep.main(str(tmp_path / "sweep"), **options)


def test_a_next_sweep_matches_budgets_across_methods_and_adds_the_baseline(tiny_next_dir, tiny_llava_dir, tmp_path):
    """On LLaVA-NeXT: keep per partition, HiRED's rate = the share, PruMerge once at what it reached, and the
    LLaVA-1.5 baseline's unpruned row on the same shapes_hr questions."""
    out = tmp_path / "sweep"
    result = sweep.main(
        str(out), model_path=str(tiny_next_dir), benchmark="shapes_hr", data_root=str(tmp_path / "data"),
        methods=["none", "fastervlm", "hired", "hired:split=paper", "prumerge"], shares=[0.5, 0.25],
        baseline_model=str(tiny_llava_dir), limit=2, n_questions=2, batch_size=2, max_new_tokens=2,
    )
    specs = [r["spec"] for r in result["runs"]]
    assert specs == ["none", "fastervlm:keep=32", "fastervlm:keep=16", "hired:rate=0.5", "hired:rate=0.25",
                     "hired:rate=0.5,split=paper", "hired:rate=0.25,split=paper", "prumerge", "none"]
    assert result["anyres"] and result["tokens_per_image"] == 64
    baseline = result["runs"][-1]
    assert baseline["method"] == "baseline" and baseline["model"] == str(tiny_llava_dir)
    assert next(r for r in result["runs"] if r["spec"] == "prumerge")["share"] is None
    table = (out / "sweep.md").read_text()
    assert "per partition" in table.splitlines()[0] and "| baseline: " in table and "adaptive or fixed budgets" in table
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here")
def test_sweep_json_names_the_shipped_model_relative_to_the_repository(tmp_path):
    """A result a reader reruns from their own clone names a model inside the repository by its repo-relative path,
    not by this machine's absolute one."""
    sweep.main(str(tmp_path / "sweep"), model_path=str(SHIPPED_MODEL), data_root=str(tmp_path / "data"),
               methods=["none"], limit=2, n_questions=4, batch_size=2, max_new_tokens=2)
    written = json.loads((tmp_path / "sweep/sweep.json").read_text())
    assert written["model"] == "models/llava-shapes-tiny"
    assert [run["model"] for run in written["runs"]] == ["models/llava-shapes-tiny"]


def test_in_llm_budgets_match_the_visual_tokens_per_layer():
    # PyramidDrop on the shipped models' 4 layers (stages before 1, 2, 3) at half of 144 tokens per layer:
    # lambda 0.55 keeps int(79.2) = 79, int(43.56) = 43, int(23.958) = 23: (144 + 79 + 43 + 23) / 4 = 72.25, nearer 72
    # than 0.54's (144 + 77 + 41 + 22) / 4 = 71.
    assert sweep.method_spec("pdrop", 0.5, 144, llm_layers=4) == "pdrop:layers=1,2,3,lambda=0.55"
    # DART before layer 1 keeps 4 + 8 x (keep // 8): keep 40 -> 44, (144 + 3 x 44) / 4 = 69; 48 -> 52: 75; a tie at 3
    # tokens, the first (smaller) kept.
    assert sweep.method_spec("dart", 0.5, 144, llm_layers=4) == "dart:k=1,keep=40"
    # SparseVLM has its own budgets, at its scoring layers 2, 6, 15 scaled to the depth.
    assert sweep.method_spec("sparsevlm", 0.5, 144, llm_layers=4) is None
    assert sweep.fixed_budget_specs("sparsevlm", 4) == [f"sparsevlm:keep={k},layers=0,1,2" for k in (64, 128, 192)]
    # A name that fixes its stage layers keeps them; one that fixes the solved budget is refused.
    assert sweep.method_spec("fastv:k=3", 0.5, 576) == "fastv:k=3,keep=258"
    assert sweep.method_spec("pdrop:layers=2,4", 0.5, 144, llm_layers=6) == "pdrop:layers=2,4,lambda=0.37"
    with pytest.raises(InputError, match="^'fastv:keep=3' sets keep, which the sweep solves for each share"):
        sweep.check_options("/tmp/unused-sweep", ["fastv:keep=3"], [0.5], None, None, 16, "cpu")
    sweep.check_options("/tmp/unused-sweep", ["dart", "pdrop:layers=2,4", "sparsevlm"], [0.5], None, None, 16, "cpu")


def test_the_table_marks_out_of_reach_and_left_out_methods():
    result = {"benchmark": "shapes_hr", "tokens_per_image": 100, "llm_layers": 4, "runs": [
        {"method": "none", "spec": "none", "share": None, "kept_tokens": 100, "questions": 5, "accuracy": 80.0,
         "types": {}},
        {"method": "fastv", "spec": "fastv:k=1,keep=34", "share": 0.5, "kept_tokens": 34, "questions": 5,
         "accuracy": 70.0, "types": {}, "visual_per_layer": 50.5, "flops_ratio": 0.6},
        {"method": "fastervlm", "spec": "fastervlm:keep=10", "share": 0.1, "kept_tokens": 10, "questions": 5,
         "accuracy": 60.0, "types": {}},
    ], "unreachable": [{"method": "fastv", "share": 0.1}], "left_out": [{"method": "dart", "why": "no unpruned run"}]}
    table = sweep.to_markdown(result)
    assert "| fastv | 70.0 | n/a |" in table and "| fastervlm |  | 60.0 |" in table
    assert "Left out: dart (no unpruned run)." in table
    assert "| fastv:k=1,keep=34 | 34 | 50.5 | 0.600 | 5 |" in table
