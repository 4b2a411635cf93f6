"""`fastv sweep` end to end on the tiny checkpoint and a few generated shapes questions."""

import json

from fastv import sweep


def test_sweep_writes_runs_table_and_plot(tiny_llava_dir, tmp_path):
    out = tmp_path / "sweep"
    result = sweep.main(
        str(out), model_path=str(tiny_llava_dir), data_root=str(tmp_path / "data"),
        methods=["none", "fastervlm", "pool", "fastv"], shares=[1.0, 0.25], limit=3, n_questions=6, batch_size=3, max_new_tokens=3,
    )
    specs = [r["spec"] for r in result["runs"]]
    assert specs == ["none", "fastervlm:keep=64", "fastervlm:keep=16", "pool:keep=64", "pool:keep=16",
                     "fastv:keep=64", "fastv:keep=16"]
    assert [r["kept_tokens"] for r in result["runs"]] == [64, 64, 16, 64, 16, 64, 16]
    assert all(0 <= r["accuracy"] <= 100 for r in result["runs"])
    assert json.loads((out / "sweep.json").read_text()) == result
    table = (out / "sweep.md").read_text()
    assert "| fastervlm |" in table and "Per question type:" in table
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # Every run has its own resumable directory; a second sweep answers nothing new.
    again = sweep.main(
        str(out), model_path=str(tiny_llava_dir), data_root=str(tmp_path / "data"),
        methods=["none", "fastervlm", "pool", "fastv"], shares=[1.0, 0.25], limit=3, batch_size=3, max_new_tokens=3,
    )
    assert again == result


def test_method_spec_for_shares():
    assert sweep.method_spec("fastervlm", 0.1, 576) == "fastervlm:keep=58"
    assert sweep.method_spec("fastv", 0.25, 576) == "fastv:k=2,keep=144"
    assert sweep.method_spec("pool", 0.1, 576) == "pool:keep=64"  # nearest square to 58
    assert sweep.method_spec("none", 0.1, 576) == "none"
