"""`fastv report`: the paper-style table, on hand-made run directories."""

import csv
import json

import pytest

from fastv.report import main, report


def make_run(root, model, method, benchmark, value, tokens, finished="2026-01-01T00:00:00", external=None,
             questions=100, question_set="set-a", **settings):
    keep = int(method.split("keep=")[1]) if "keep=" in method else None
    run_dir = root / model / method.replace(":", "_") / benchmark
    run_dir.mkdir(parents=True)
    scores = {
        "benchmark": benchmark, "title": benchmark, "headline": {"metric": "x", "value": value}, "metrics": {},
        "run": {"model_id": model, "method_spec": method, "method_name": method.split(":")[0], "budget": keep,
                "ratio": None, "visual_tokens_mean": tokens, "finished": finished, "questions": questions,
                "answered": questions, "errors": 0, "missing": 0, "question_set": question_set, **settings},
    }
    (run_dir / "scores.json").write_text(json.dumps(scores))
    if external is not None:
        (run_dir / "external_score.json").write_text(json.dumps({"value": external, "source": "EvalAI"}))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "outputs"
    for method, tokens, textvqa, pope, mme, vqav2 in [
        ("none", 576, 60.0, 80.0, 1500.0, 78.0),
        ("fastervlm:keep=64", 64, 54.0, 84.0, 1200.0, 74.1),
        ("fastervlm:keep=128", 128, 57.0, None, None, None),
    ]:
        make_run(root, "llava-v1.5-7b", method, "textvqa", textvqa, tokens)
        if pope is not None:
            make_run(root, "llava-v1.5-7b", method, "pope", pope, tokens)
            make_run(root, "llava-v1.5-7b", method, "mme", mme, tokens)
            make_run(root, "llava-v1.5-7b", method, "vqav2", None, tokens, external=vqav2)  # scored by the server
    return root


def test_table_rows_columns_and_average_ratio(runs, tmp_path):
    text = report([str(runs)], str(tmp_path / "table.md"))
    lines = text.splitlines()
    assert lines[0] == "### llava-v1.5-7b"
    assert lines[2] == "| Method | Budget | Tokens | VQAv2 | TextVQA | POPE | MME | Avg. (% of unpruned) |"
    assert lines[4] == "| none (unpruned) | - | 576.0 | 78.0 (100) | 60.0 (100) | 80.0 (100) | 1500.0 (100) | 100.0% |"
    # keep=64: 74.1/78 = 0.95, 54/60 = 0.90, 84/80 = 1.05, 1200/1500 = 0.80 -> mean 92.5%
    assert lines[5] == "| fastervlm:keep=128 | 128 | 128.0 | - | 57.0 (100) | - | - | 95.0% |"  # 57/60 only
    assert lines[6] == "| fastervlm:keep=64 | 64 | 64.0 | 74.1 (100) | 54.0 (100) | 84.0 (100) | 1200.0 (100) | 92.5% |"
    assert lines[8] == "Cells: headline score (questions it was taken over).  "
    assert (tmp_path / "table.md").read_text() == text
    assert "*" not in text and "†" not in text
    rows = list(csv.reader((tmp_path / "table.csv").open()))
    assert rows[0][:3] == ["Model", "Method", "Budget"] and rows[3][-1] == "92.5%"


def test_the_later_of_two_runs_of_one_cell_wins_and_models_get_their_own_table(runs, tmp_path):
    make_run(tmp_path / "again", "llava-v1.5-7b", "fastervlm:keep=128", "textvqa", 48.0, 128, finished="2027-01-01")
    make_run(tmp_path / "again", "llava-v1.6-vicuna-7b", "none", "textvqa", 64.0, 2880)
    text = report([str(runs), str(tmp_path / "again")], None)
    assert "| fastervlm:keep=128 | 128 | 128.0 | - | 48.0 (100) | - | - | 80.0% |" in text
    assert "### llava-v1.6-vicuna-7b" in text


def test_command_line(runs, capsys, tmp_path):
    assert main([str(runs / "llava-v1.5-7b/none/textvqa")]) == 0
    assert "| none (unpruned) | - | 576.0 | 60.0 (100) | 100.0% |" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no such run directory or folder: {tmp_path / 'nothing'}"
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: no scores.json or run.json in")


def row_of(text, spec):
    return next(line for line in text.splitlines() if line.startswith(f"| {spec} |"))


def test_a_killed_run_after_a_limited_one_is_no_score(runs):
    # a --limit 5 run finished, then a full run into the same folder was killed: run.json unfinished
    # (older runners also left the 5-question scores.json in place)
    run_dir = make_run(runs, "llava-v1.5-7b", "fastervlm:keep=32", "textvqa", 70.0, 32, questions=5, question_set="b")
    killed = {**json.loads((run_dir / "scores.json").read_text())["run"], "questions": 100, "answered": 12,
              "finished": None, "question_set": "set-a"}
    (run_dir / "run.json").write_text(json.dumps(killed))
    text = report([str(runs)])
    assert row_of(text, "fastervlm:keep=32") == "| fastervlm:keep=32 | 32 | - | - | -* | - | - | - |"
    assert f"* fastervlm:keep=32, textvqa: not finished: 12 of 100 answered (scores.json is an older run's) ({run_dir})" in text
    (run_dir / "scores.json").unlink()  # what today's runner leaves: run.json only
    text = report([str(runs)])
    assert row_of(text, "fastervlm:keep=32").startswith("| fastervlm:keep=32 | 32 | - | - | -* |")
    assert "not finished: 12 of 100 answered (no scores.json)" in text


def test_an_empty_run_never_replaces_the_real_unpruned_cell(runs, tmp_path):
    later = make_run(tmp_path / "later", "llava-v1.5-7b", "none", "textvqa", 0.0, None, finished="2027-01-01",
                     questions=0, question_set="empty")
    text = report([str(runs), str(tmp_path / "later")])
    assert row_of(text, "none (unpruned)").startswith("| none (unpruned) | - | 576.0 | 78.0 (100) | 60.0 (100) |")
    alone = report([str(later)])
    assert row_of(alone, "none (unpruned)") == "| none (unpruned) | - | - | -* | - |"
    assert "0 questions: no score" in alone


def test_unanswered_questions_mark_the_run(runs):
    run_dir = runs / "llava-v1.5-7b/fastervlm_keep=64/pope"
    scores = json.loads((run_dir / "scores.json").read_text())
    scores["run"]["missing"] = 3
    (run_dir / "scores.json").write_text(json.dumps(scores))
    text = report([str(runs)])
    assert row_of(text, "fastervlm:keep=64") == "| fastervlm:keep=64 | 64 | 64.0 | 74.1 (100) | 54.0 (100) | -* | 1200.0 (100) | 88.3% |"  # 0.95, 0.9, 0.8
    assert "pope: 3 of 100 questions have no answer (counted wrong)" in text


def test_runs_over_different_question_sets_are_flagged_and_left_out_of_the_average(runs):
    make_run(runs, "llava-v1.5-7b", "fastervlm:keep=16", "textvqa", 30.0, 16, questions=5, question_set="first-5")
    text = report([str(runs)])
    assert row_of(text, "none (unpruned)").startswith("| none (unpruned) | - | 576.0 | 78.0 (100) | 60.0 (100)† |")
    assert row_of(text, "fastervlm:keep=16") == "| fastervlm:keep=16 | 16 | 16.0 | - | 30.0 (5)† | - | - | - |"
    # keep=64 without TextVQA: 74.1/78, 84/80, 1200/1500 -> (0.95 + 1.05 + 0.8) / 3 = 93.3%
    assert row_of(text, "fastervlm:keep=64").endswith("| 93.3% |")
    assert ("† textvqa: the runs were taken over different question sets (fastervlm:keep=128: 100 questions; "
            "fastervlm:keep=16: 5 questions; fastervlm:keep=64: 100 questions; none: 100 questions)") in text


@pytest.mark.parametrize("name, content", [("scores.json", "{cut"), ("run.json", "[1]")])
def test_a_corrupt_run_file_is_one_line_naming_it(runs, capsys, name, content):
    broken = runs / "llava-v1.5-7b/none/pope" / name
    broken.write_text(content)
    assert main([str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {broken} is not ") and "\n" not in err


def test_report_of_real_runner_directories(tmp_path, monkeypatch):
    """The runner's own files: a finished --limit 2 run, then a killed full run into the same folder."""
    from llava.eval.run import run_benchmark
    from tests.eval_fakes import FakePipeline, make_pope

    make_pope(tmp_path / "data")
    out = tmp_path / "outputs/tiny/none/pope"
    run_benchmark("pope", FakePipeline("tiny", "none"), tmp_path / "data", out, method="none", limit=2, progress=False)
    assert row_of(report([str(tmp_path / "outputs")]), "none (unpruned)") == "| none (unpruned) | - | 576.0 | 50.0 (2) | 100.0% |"

    def killed(self, requests, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(FakePipeline, "answer", killed)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark("pope", FakePipeline("tiny", "none"), tmp_path / "data", out, method="none", progress=False)
    text = report([str(tmp_path / "outputs")])
    assert row_of(text, "none (unpruned)") == "| none (unpruned) | - | - | -* | - |"
    assert "not finished: 2 of 3 answered (no scores.json)" in text


def make_fastv_cell(root, k, ratio, value, prompt_tokens=200, visual=144, kept=None):
    run_dir = make_run(root, "tiny", f"fastv:k={k},ratio={ratio},mode=mask", "shapes", value, visual)
    scores = json.loads((run_dir / "scores.json").read_text())
    scores["run"].update(ratio=ratio, kept_tokens_mean=kept if kept is not None else round(visual * (1 - ratio)),
                         prompt_tokens_mean=prompt_tokens,
                         llm={"hidden_size": 192, "intermediate_size": 512, "num_layers": 4})
    (run_dir / "scores.json").write_text(json.dumps(scores))


def test_fastv_k_by_r_heat_table_with_the_flops_of_each_cell(tmp_path):
    from fastv.flops import fastv_flops_ratio

    root = tmp_path / "outputs"
    make_run(root, "tiny", "none", "shapes", 90.0, 144)
    for k, ratio, value in [(1, 0.5, 80.0), (1, 0.75, 70.0), (3, 0.5, 88.0)]:  # (3, 0.75) was not run
        make_fastv_cell(root, k, ratio, value)
    make_fastv_cell(root, 2, 0.5, 50.0)
    text = report([str(root)], str(tmp_path / "table"))
    table = text[text.index("### FastV K x R: tiny, shapes"):].splitlines()
    assert table[2] == "| K \\ R | 50% | 75% |"
    # (1, 50%): 72 of 144 dropped from a 200-token prefill of a 4-layer, d 192, m 512 LLM
    flops = lambda k, dropped: f"{fastv_flops_ratio(200, dropped, k, 4, 192, 512):.0%}"
    assert table[4] == f"| 1 | 80.0 ({flops(1, 72)}) | 70.0 ({flops(1, 108)}) |"
    assert table[5] == f"| 2 | 50.0 ({flops(2, 72)}) |  |"
    assert table[6] == f"| 3 | 88.0 ({flops(3, 72)}) |  |"
    assert "unpruned: 90.0" in table[8] and "100 questions" in table[8]
    assert (tmp_path / "table-kr-tiny-shapes.png").is_file()  # the plot extra is installed by setup.sh


# ----------------------------------------------------------------------------- answer settings, --out


PINPOINTS = ["672x672", "672x336", "336x672", "1008x336", "336x1008"]


def test_runs_of_two_next_layouts_are_two_rows_each_against_its_own_unpruned_run(tmp_path):
    stock = {"patch_merge": "spatial_unpad", "image_grid": PINPOINTS}
    fixed = {"patch_merge": "spatial", "image_grid": "672x672"}
    for folder, layout, none, keep29, finished in [("stock", stock, 80.0, 60.0, "2026-01-01"),
                                                   ("fixed", fixed, 90.0, 81.0, "2026-02-01")]:
        make_run(tmp_path / folder, "next", "none", "shapes_hr", none, 700, finished=finished, **layout)
        make_run(tmp_path / folder, "next", "fastervlm:keep=29", "shapes_hr", keep29, 128, finished=finished, **layout)
    text = report([str(tmp_path)])
    stock_label = "patch_merge=spatial_unpad, image_grid=672x672/672x336/336x672/1008x336/336x1008"
    assert row_of(text, "none (unpruned) [patch_merge=spatial, image_grid=672x672]").endswith("| 90.0 (100) | 100.0% |")
    assert row_of(text, f"none (unpruned) [{stock_label}]").endswith("| 80.0 (100) | 100.0% |")
    assert row_of(text, "fastervlm:keep=29 [patch_merge=spatial, image_grid=672x672]").endswith("| 81.0 (100) | 90.0% |")
    assert row_of(text, f"fastervlm:keep=29 [{stock_label}]").endswith("| 60.0 (100) | 75.0% |")
    assert "not shown" not in text


def test_a_run_replaced_by_a_later_one_of_the_same_settings_is_named(runs, tmp_path):
    again = make_run(tmp_path / "again", "llava-v1.5-7b", "fastervlm:keep=128", "textvqa", 48.0, 128, finished="2027-01-01")
    text = report([str(runs), str(tmp_path / "again"), str(runs / "llava-v1.5-7b/none")])  # none/ named twice
    older = runs / "llava-v1.5-7b/fastervlm_keep=128/textvqa"
    assert text.count("not shown") == 1
    assert (f"‡ fastervlm:keep=128, textvqa: not shown: {older} (an older run of the same method and settings; "
            f"shown: {again})") in text


def test_a_pruned_run_without_an_unpruned_run_of_its_settings_has_no_average(tmp_path):
    for method, value, tokens, max_new_tokens in [("none", 60.0, 576, 128), ("fastervlm:keep=64", 54.0, 64, 128),
                                                  ("fastervlm:keep=32", 50.0, 32, 16)]:  # textvqa's default: 128
        make_run(tmp_path, "llava-v1.5-7b", method, "textvqa", value, tokens, max_new_tokens=max_new_tokens)
    text = report([str(tmp_path)])
    assert row_of(text, "fastervlm:keep=32 [max_new_tokens=16]").endswith("| 50.0 (100) | - |")
    assert row_of(text, "fastervlm:keep=64 [max_new_tokens=default]").endswith("| 54.0 (100) | 90.0% |")
    assert "fastervlm:keep=32 [max_new_tokens=16]: no unpruned run with the same settings, no average" in text


def test_runs_that_did_not_record_a_setting_join_the_runs_they_agree_with(tmp_path):
    """An older run.json (no layout, dtype, device), a sweep's (layout, no dtype or device) and the runner's
    (all of them) agree as the runner's resume check has it (None is not known): one row each, one baseline."""
    stock = {"patch_merge": "spatial_unpad", "image_grid": PINPOINTS}
    make_run(tmp_path / "old", "next", "none", "shapes_hr", 80.0, 700)
    make_run(tmp_path / "sweep", "next", "fastervlm:keep=29", "shapes_hr", 60.0, 128, **stock)
    make_run(tmp_path / "run", "next", "fastervlm:keep=14", "shapes_hr", 40.0, 64, dtype="float32", device="cpu",
             quantization="none", **stock)
    make_run(tmp_path / "gpu", "next", "fastervlm:keep=7", "shapes_hr", 20.0, 32, dtype="float32", device="cuda",
             quantization="none", **stock)  # the device is not an answer setting: the same row set
    text = report([str(tmp_path)])
    assert row_of(text, "none (unpruned)") == "| none (unpruned) | - | 700.0 | 80.0 (100) | 100.0% |"
    assert row_of(text, "fastervlm:keep=29") == "| fastervlm:keep=29 | 29 | 128.0 | 60.0 (100) | 75.0% |"  # 60/80
    assert row_of(text, "fastervlm:keep=14") == "| fastervlm:keep=14 | 14 | 64.0 | 40.0 (100) | 50.0% |"  # 40/80
    assert row_of(text, "fastervlm:keep=7") == "| fastervlm:keep=7 | 7 | 32.0 | 20.0 (100) | 25.0% |"  # 20/80
    assert "no unpruned run" not in text and "?" not in text


def test_a_run_of_one_cell_without_the_setting_is_the_same_cell(tmp_path):
    """The later run of a cell replaces an older one that did not record the layout, as a resume would."""
    make_run(tmp_path / "old", "next", "none", "shapes_hr", 70.0, 700)
    later = make_run(tmp_path / "new", "next", "none", "shapes_hr", 80.0, 700, finished="2027-01-01",
                     patch_merge="spatial_unpad", image_grid=PINPOINTS)
    text = report([str(tmp_path)])
    assert row_of(text, "none (unpruned)") == "| none (unpruned) | - | 700.0 | 80.0 (100) | 100.0% |"
    assert f"not shown: {tmp_path / 'old/next/none/shapes_hr'} (an older run of the same method and settings; shown: {later})" in text


def test_runs_that_could_belong_to_two_rows_are_shown_apart_and_said(tmp_path):
    """Old runs without a layout, beside runs of two layouts: they agree with both, so they join neither."""
    stock = {"patch_merge": "spatial_unpad", "image_grid": PINPOINTS}
    fixed = {"patch_merge": "spatial", "image_grid": "672x672"}
    for folder, layout, none, keep29 in [("stock", stock, 80.0, 60.0), ("fixed", fixed, 90.0, 81.0), ("old", {}, 70.0, 35.0)]:
        make_run(tmp_path / folder, "next", "none", "shapes_hr", none, 700, **layout)
        make_run(tmp_path / folder, "next", "fastervlm:keep=29", "shapes_hr", keep29, 128, **layout)
    text = report([str(tmp_path)])
    assert row_of(text, "none (unpruned) [patch_merge=spatial, image_grid=672x672]").endswith("| 90.0 (100) | 100.0% |")
    assert row_of(text, "fastervlm:keep=29 [patch_merge=spatial, image_grid=672x672]").endswith("| 81.0 (100) | 90.0% |")
    assert row_of(text, "none (unpruned) [patch_merge=?, image_grid=?]").endswith("| 70.0 (100) | 100.0% |")
    assert row_of(text, "fastervlm:keep=29 [patch_merge=?, image_grid=?]").endswith("| 35.0 (100) | 50.0% |")  # 35/70
    canvases = "672x672/672x336/336x672/1008x336/336x1008"
    assert ("? none [patch_merge=?, image_grid=?], fastervlm:keep=29 [patch_merge=?, image_grid=?]: patch_merge, "
            "image_grid not recorded, and the runs of this table that recorded it differ (patch_merge=spatial, "
            f"spatial_unpad; image_grid=672x672, {canvases}): not merged with either, shown apart") in text
    assert "not shown" not in text and "no unpruned run" not in text


def test_an_older_run_without_a_layout_joins_the_only_layout_of_its_table(tmp_path):
    """The committed shapes-hr sweep: run.json without patch_merge and image_grid; a new run of the same model
    that records them shares its row's baseline."""
    make_run(tmp_path / "old", "next", "none", "shapes_hr", 80.0, 700)
    make_run(tmp_path / "new", "next", "fastervlm:keep=29", "shapes_hr", 60.0, 128, patch_merge="spatial_unpad",
             image_grid=PINPOINTS)
    text = report([str(tmp_path)])
    assert row_of(text, "fastervlm:keep=29") == "| fastervlm:keep=29 | 29 | 128.0 | 60.0 (100) | 75.0% |"


@pytest.mark.parametrize("out, message", [
    ("", "error: --out is empty"),
    ("{file}/table", "error: --out: cannot make the folder {file}: {file} is a file"),
    ("{folder}", "error: --out {folder}.md is a folder: name the tables' path"),
])
def test_a_bad_out_is_refused_before_any_run_is_read(runs, tmp_path, capsys, out, message):
    (tmp_path / "file").write_text("a file")
    (tmp_path / "tables.md").mkdir()
    (runs / "llava-v1.5-7b/none/pope/scores.json").write_text("{cut")  # reading it would be the error
    places = {"file": tmp_path / "file", "folder": tmp_path / "tables"}
    assert main([str(runs), "--out", out.format(**places)]) == 2
    assert capsys.readouterr().err.startswith(message.format(**places))


def test_out_is_checked_as_every_fastv_command_checks_it_and_nothing_is_made_by_the_check(runs, tmp_path, capsys):
    """fastv.paths checks --out: the same line as `fastv flops --out` under a file, and a report that fails
    after the check has made no folder."""
    from fastv.cli import main as fastv

    (tmp_path / "a_file").write_text("")
    assert fastv(["report", str(runs), "--out", str(tmp_path / "a_file" / "table")]) == 2
    assert capsys.readouterr().err == f"error: --out: cannot make the folder {tmp_path / 'a_file'}: {tmp_path / 'a_file'} is a file\n"
    (runs / "llava-v1.5-7b/none/pope/scores.json").write_text("{cut")
    assert main([str(runs), "--out", str(tmp_path / "new" / "tables")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "new").exists()


def test_out_with_a_dot_in_its_name_keeps_it(runs, tmp_path):
    report([str(runs)], str(tmp_path / "tables" / "llava-v1.5"))
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["llava-v1.5.csv", "llava-v1.5.md"]
