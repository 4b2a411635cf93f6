"""`fastv sweep --benchmark shapes_video` and scripts/kept_recall.py --look video: budgets matched on the video tokens
the LLM runs on, the sweep end to end on the tiny random Video-LLaVA, and the recall of the answer's patches on the
frames holding it (worked by hand, then on the tiny model)."""

import json

import pytest

from fastv import sweep
from llava.data import synthetic, video_clips
from llava.errors import InputError
from llava.model.pruning.registry import parse_method
from tests.helpers import load_script


@pytest.fixture(scope="module")
def kept_recall():
    return load_script("kept_recall")


# ----------------------------------------------------------------------------
# Budgets


def test_video_budgets_match_the_tokens_the_llm_runs_on():
    """The shipped size: 8 frames of 144 patches, each frame's [CLS] kept (8 x 145 = 1160 video tokens), 4 layers.
    25%: L = 36 patches a frame, 8 x (36 + 1) = 296 tokens; an in-LLM method keeps 296 over the span."""
    assert sweep.video_tokens(0.25, 144, 8, True) == 296 and sweep.video_tokens(0.25, 144, 8, False) == 288
    assert sweep.video_tokens(0.05, 144, 8, True) == 8 * (7 + 1)
    spec = lambda name, share=0.25, cls=True: sweep.video_spec(name, share, 144, 8, cls, 4)  # noqa: E731
    assert spec("fastervlm") == "fastervlm:keep=36" and spec("random", 0.05) == "random:keep=7"
    assert spec("fastv") == "fastv:k=1,keep=296"  # FastV's k = 2 of 32 layers at the same depth of 4: 1
    assert spec("fastv", cls=False) == "fastv:k=1,keep=288"  # video_cls drop: no [CLS] in the span or the count
    # VisionZip's D + C count the frame's [CLS]: 37 tokens a frame as the others' 36 patches + [CLS]
    assert spec("visionzip") == "visionzip:dominant=31,contextual=6"
    assert spec("visionzip", cls=False) == "visionzip:dominant=30,contextual=6"
    # PyramidDrop's last stage keeps int(1160 x lambda^3): 0.63 -> 290, 0.64 -> 304; 290 is nearer 296
    assert spec("pdrop") == "pdrop:layers=1,2,3,lambda=0.63" and parse_method(spec("pdrop")).budget(1160) == 290
    # DART keeps its 4 pivots + 8 x quota: 292 or 300, 4 off either way
    assert abs(parse_method(spec("dart")).budget(1160) - 296) == 4
    assert spec("prumerge") == "prumerge" and spec("sparsevlm") is None  # adaptive; fixed budgets (their own runs)


def test_video_benchmarks_are_known_by_name():
    assert sweep.is_video_benchmark("shapes_video") and sweep.is_video_benchmark("msvd_1k")
    assert sweep.is_video_benchmark("tgif") and not sweep.is_video_benchmark("shapes")


def test_a_video_benchmark_with_an_image_model_is_refused_before_any_work(tiny_llava_dir, tmp_path):
    with pytest.raises(InputError, match="shapes_video asks about videos, and .* has no video tower"):
        sweep.main(str(tmp_path / "out"), model_path=str(tiny_llava_dir), benchmark="shapes_video",
                   data_root=str(tmp_path / "data"), methods=["none"], n_questions=2)
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------
# The sweep end to end


def test_video_sweep_writes_the_split_runs_table_and_plot(tiny_video_dir, tmp_path):
    out, data = tmp_path / "sweep", tmp_path / "data"
    result = sweep.main(str(out), model_path=str(tiny_video_dir), benchmark="shapes_video", data_root=str(data),
                        methods=["none", "fastervlm", "fastv"], shares=[0.5, 0.1], n_questions=3, batch_size=3,
                        max_new_tokens=2)
    folder = data / "shapes_video"  # the video look's split, written as the sweep writes the image looks'
    assert sorted(p.name for p in (folder / "videos").iterdir()) == [f"test_000000{i}.gif" for i in range(3)]
    assert not (folder / "images").exists() and json.loads((folder / "meta.json").read_text())["look"] == "video"
    # the tiny model: 64 patches + [CLS] a frame, 8 frames = 520 tokens; 50% = 8 x (32 + 1), 10% = 8 x (6 + 1)
    assert result["video"] == {"frames": 8, "patches": 64, "cls": True, "span": 520}
    assert [r["spec"] for r in result["runs"]] == ["none", "fastervlm:keep=32", "fastervlm:keep=6",
                                                   "fastv:k=1,keep=264", "fastv:k=1,keep=56"]
    assert [r["kept_tokens"] for r in result["runs"]] == [520, 264, 56, 264, 56]
    fastv = result["runs"][3]  # its first layer (of 3) runs on all 520: (520 + 2 x 264) / 3
    assert fastv["visual_per_layer"] == pytest.approx((520 + 2 * 264) / 3)
    assert result["runs"][1]["visual_per_layer"] == 264 and fastv["flops_ratio"] > result["runs"][1]["flops_ratio"]
    assert all(r["questions"] == 3 and 0 <= r["accuracy"] <= 100 for r in result["runs"])
    table = (out / "sweep.md").read_text()
    assert "| method | 50% (264) | 10% (56) |" in table and "share of each frame's 64 patches" in table
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------
# Recall of the answer's patches on its frames


def test_frame_tokens_map_the_336_px_grid_onto_the_model(kept_recall):
    sample = next(s for s in synthetic.generate_split("test", 12) if len(s.patches) > 1)
    assert kept_recall.frame_tokens(sample.patches, 336, 28) == synthetic.tokens_on_grid(sample.patches, 28)
    # 112-px frames in 14-px patches: a token holds 3 x 3 of the frame's patches
    assert kept_recall.frame_tokens([0, 25, 26, 575], 112, 14) == {0, 63}
    # 224 px (Video-LLaVA-7B): patch (1, 1) covers pixels 14..28, 9.3..18.7 at 224: tokens (0|1, 0|1)
    assert kept_recall.frame_tokens([25], 224, 14) == {0, 1, 16, 17}


def test_clip_recall_worked_by_hand(kept_recall):
    kept = [[0, 1, 2], [5], [], [3, 4], [7], [7], [7], [7]]  # 3 + 1 + 0 + 2 + 4 x 1 = 10 patches kept
    # the answer is on frames 1 and 3: {5, 6} (5 kept) and {3, 9} (3 kept): 2 of 4; 1 + 2 of the 10 kept there
    assert kept_recall.clip_recall(kept, [1, 3], [{5, 6}, {3, 9}]) == (2 / 4, 3 / 10)
    assert kept_recall.clip_recall(kept, [2], [{0}]) == (0.0, 0.0)  # a frame that kept nothing
    assert kept_recall.clip_recall(kept, [0, 1], [set(), set()]) is None  # no target: not counted


def test_video_recall_on_the_tiny_model(kept_recall, tiny_video_dir):
    """Everything kept: recall 100. A per-frame budget gives a brief answer's frames exactly their share of
    the video."""
    from llava.pipeline import LlavaPipeline

    clips = [video_clips.make_clip("test", i) for i in (6, 7, 0)]  # motion and appear (brief), color (all 8 frames)
    assert [len(c.answer_frames) <= video_clips.BRIEF_FRAMES for c in clips] == [True, True, False]
    pipe = LlavaPipeline.load(str(tiny_video_dir))
    rows = kept_recall.video_recall_table(pipe, clips, ["fastervlm", "fastv"], [1.0, 0.25], batch_size=3)
    by = {(r["method"], r["share"]): r for r in rows}
    assert [r["spec"] for r in rows] == ["fastervlm:keep=64", "fastervlm:keep=16", "fastv:k=1,keep=520",
                                         "fastv:k=1,keep=136"]
    assert by["fastervlm", 1.0]["recall"] == by["fastv", 1.0]["recall"] == 100.0
    assert all(r["questions"] == 3 and r["brief"] == 2 and 0 <= r["recall"] <= 100 for r in rows)
    even = sum(len(c.answer_frames) for c in clips[:2]) / 2 / 8 * 100
    assert by["fastervlm", 0.25]["answer_share_brief"] == pytest.approx(even) == by["fastervlm", 0.25]["even_brief"]
    table = kept_recall.video_markdown(rows, 64, 8)
    assert "| fastervlm | 100.0 / 100.0 / 100.0 |" in table and "| method | 100% | 25% | even |" in table
