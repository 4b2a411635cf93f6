"""`fastv report`: the paper-style table, on hand-made run directories."""

import csv
import json

import pytest

from fastv.report import main, report


def make_run(root, model, method, benchmark, value, tokens, finished="2026-01-01T00:00:00", external=None):
    keep = int(method.split("keep=")[1]) if "keep=" in method else None
    run_dir = root / model / method.replace(":", "_") / benchmark
    run_dir.mkdir(parents=True)
    scores = {
        "benchmark": benchmark, "title": benchmark, "headline": {"metric": "x", "value": value}, "metrics": {},
        "run": {"model_id": model, "method_spec": method, "method_name": method.split(":")[0], "budget": keep,
                "ratio": None, "visual_tokens_mean": tokens, "finished": finished},
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
    assert lines[4] == "| none (unpruned) | - | 576.0 | 78.0 | 60.0 | 80.0 | 1500.0 | 100.0% |"
    # keep=64: 74.1/78 = 0.95, 54/60 = 0.90, 84/80 = 1.05, 1200/1500 = 0.80 -> mean 92.5%
    assert lines[5] == "| fastervlm:keep=128 | 128 | 128.0 | - | 57.0 | - | - | 95.0% |"  # 57/60 only
    assert lines[6] == "| fastervlm:keep=64 | 64 | 64.0 | 74.1 | 54.0 | 84.0 | 1200.0 | 92.5% |"
    assert (tmp_path / "table.md").read_text() == text
    rows = list(csv.reader((tmp_path / "table.csv").open()))
    assert rows[0][:3] == ["Model", "Method", "Budget"] and rows[3][-1] == "92.5%"


def test_the_later_of_two_runs_of_one_cell_wins_and_models_get_their_own_table(runs, tmp_path):
    make_run(tmp_path / "again", "llava-v1.5-7b", "fastervlm:keep=128", "textvqa", 48.0, 128, finished="2027-01-01")
    make_run(tmp_path / "again", "llava-v1.6-vicuna-7b", "none", "textvqa", 64.0, 2880)
    text = report([str(runs), str(tmp_path / "again")], None)
    assert "| fastervlm:keep=128 | 128 | 128.0 | - | 48.0 | - | - | 80.0% |" in text
    assert "### llava-v1.6-vicuna-7b" in text


def test_command_line(runs, capsys, tmp_path):
    assert main([str(runs / "llava-v1.5-7b/none/textvqa")]) == 0
    assert "| none (unpruned) | - | 576.0 | 60.0 | 100.0% |" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: no scores.json in")
