"""Tests of the video look of the synthetic task (llava/data/video_clips.py, the shapes_video benchmark).

Every answer is worked out again here from the clip's description (the objects' boxes on the 8 frames
Video-LLaVA samples, the word's frames), with the question parsed back from its text; the pixels of
those 8 frames, decoded from the written GIF, are checked to show what the description says. So a
generator that asks an ambiguous question, answers it wrongly, or puts the answer in a frame the
model never reads fails.
"""

import importlib.util
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageSequence

from llava.data import synthetic, video_clips
from llava.data.scenes import COLORS, IMAGE_SIZE, LATTICE, OCR_WORDS, SHAPES, SHORT_ANSWER_PROMPT, patch_bbox
from llava.data.video_clips import (
    BRIEF_FRAMES, FRAME_COUNTS, MIN_TRAVEL, SPREAD_FRAMES, TEMPORAL_TYPES, VIDEO_QUESTION_TYPES, make_clip, video_plan,
)
from llava.errors import InputError
from tests.test_data_synthetic import _expected_answer
from tests.test_demo import _need

N_CLIPS = 48  # each of the 12 types with each variant, brief and spread


@pytest.fixture(scope="module")
def clips():
    return list(video_clips.generate_clips("test", N_CLIPS))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video") / "shapes_video"
    synthetic.main(["--look", "video", "--split", "test", "--n", "24", "--out", str(folder)])  # the issue's command
    return folder


def _sampled(n: int) -> list[int]:
    """Video-LLaVA's rule, written again: 8 frames at linspace(0, n - 1), truncated."""
    return [int(i * (n - 1) / 7) for i in range(8)]


def _shown(obj: dict, sampled: list[int]) -> list[bool]:
    return [obj["boxes"][f] is not None for f in sampled]


# ----------------------------------------------------------------------------
# Plans, determinism, frames


def test_every_type_variant_and_spread_once_in_48_clips():
    plans = [video_plan(i) for i in range(100, 100 + N_CLIPS)]
    assert sorted((p.question_type, p.variant, p.brief) for p in plans) == sorted(
        (t, v, b) for t in VIDEO_QUESTION_TYPES for v in (True, False) for b in (True, False))


def test_a_clip_is_reproducible_alone(clips):
    alone = make_clip("test", 29)
    assert [f.tobytes() for f in alone.frames] == [f.tobytes() for f in clips[29].frames]
    assert (alone.question, alone.answer, alone.objects) == (clips[29].question, clips[29].answer, clips[29].objects)
    assert make_clip("train", 29).frames[0].tobytes() != alone.frames[0].tobytes()


def test_clips_are_square_at_the_shipped_models_size_with_more_frames_than_sampled(clips):
    config = json.loads(open("models/llava-shapes-tiny/config.json").read())
    assert config["vision_config"]["image_size"] == IMAGE_SIZE
    assert {len(c.frames) for c in clips} == set(FRAME_COUNTS)
    for c in clips:
        assert all(f.size == (IMAGE_SIZE, IMAGE_SIZE) for f in c.frames)
        assert c.sampled == _sampled(len(c.frames)) == np.linspace(0, len(c.frames) - 1, 8).astype(int).tolist()
        assert [f.tobytes() for f in c.video_frames] == [c.rgb_frames[i].tobytes() for i in c.sampled]
        assert all(c.frames[f].tobytes() != c.frames[f - 1].tobytes() for f in range(1, len(c.frames)))


# ----------------------------------------------------------------------------
# Answers, worked out again from the description of the sampled frames


def _expected(c) -> str:
    """The answer from the objects' boxes on the 8 sampled frames alone; asserts the uniqueness rules."""
    sampled, objects, q = _sampled(len(c.frames)), c.objects, c.question
    shown = [_shown(o, sampled) for o in objects]
    if c.question_type not in TEMPORAL_TYPES:  # a still scene: the shapes rules, on any one frame
        for o in objects:
            assert all(o["boxes"][f] == o["boxes"][0] for f in range(len(c.frames)))
        assert c.text is None or c.text_frames == [0, len(c.frames) - 1]
        still = [{**o, "bbox": o["boxes"][0]} for o in objects]
        return _expected_answer(SimpleNamespace(objects=still, question=q, text=c.text, size=(IMAGE_SIZE,) * 2))
    if m := re.fullmatch(r"Toward which side does the (\w+) (\w+) move\?", q):
        named = [o for o in objects if (o["color"], o["shape"]) == (m[1], m[2])]
        assert len(named) == 1, q
        centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (named[0]["boxes"][f] for f in sampled) if b]
        dx, dy = centres[-1][0] - centres[0][0], centres[-1][1] - centres[0][1]
        assert (dx == 0) != (dy == 0) and max(abs(dx), abs(dy)) >= MIN_TRAVEL * LATTICE, (q, centres)
        steps = [np.sign(b[0] - a[0]) if dx else np.sign(b[1] - a[1]) for a, b in zip(centres, centres[1:])]
        assert set(steps) <= {0, np.sign(dx or dy)}  # it never turns back
        return {(1, 0): "right", (-1, 0): "left", (0, 1): "bottom", (0, -1): "top"}[(np.sign(dx), np.sign(dy))]
    appear = r"What (shape|color) (?:is the shape that )?(appears|disappears) partway through the video\?"
    if m := re.fullmatch(appear, q):
        if m[2] == "appears":
            changed = [k for k, s in enumerate(shown) if not s[0] and any(s)]
            assert all(s[k:] == [True] * (8 - k) for s in (shown[j] for j in changed) for k in [s.index(True)])
        else:
            changed = [k for k, s in enumerate(shown) if s[0] and not all(s)]
            assert all(not any(s[s.index(False):]) for s in (shown[j] for j in changed))
        assert len(changed) == 1 and all(all(s) for k, s in enumerate(shown) if k != changed[0]), q
        return objects[changed[0]][m[1]]
    if m := re.fullmatch(r"What shape is shown (first|last)\?", q):
        for i in range(8):
            assert sum(s[i] for s in shown) <= 1  # one at a time
        assert len({o["shape"] for o in objects}) == len(objects)
        frames = [i for i in range(8) if any(s[i] for s in shown)]
        edge = frames[0] if m[1] == "first" else frames[-1]
        return next(o["shape"] for o, s in zip(objects, shown) if s[edge])
    if m := re.fullmatch(r"What shape is shown while the (word|number) is visible\?", q):
        assert c.text is not None and c.text.isdigit() == (m[1] == "number")
        word = [c.text_frames[0] <= f <= c.text_frames[1] for f in sampled]
        during = [k for k, s in enumerate(shown) if any(a and b for a, b in zip(s, word))]
        assert len(during) == 1 and shown[during[0]] == word, q  # the one object, shown exactly then
        return objects[during[0]]["shape"]
    if q == "How many shapes pass by?":
        movers = 0
        for o in objects:
            boxes = [o["boxes"][f] for f in sampled if o["boxes"][f]]
            travel = max(abs(b[0] - boxes[0][0]) + abs(b[1] - boxes[0][1]) for b in boxes)
            assert travel == 0 or travel >= MIN_TRAVEL * LATTICE
            movers += travel > 0
        return str(movers)
    raise AssertionError(f"unexpected question {q!r}")


def test_questions_are_unambiguous_and_answers_right(clips):
    assert {c.question_type for c in clips} == set(VIDEO_QUESTION_TYPES)
    for c in clips:
        assert _expected(c) == c.answer, (c.question_id, c.question, c.answer)


def test_answers_are_in_the_trained_vocabulary(clips):
    from llava.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    allowed = {"color": set(COLORS), "shape": set(SHAPES), "exist": {"yes", "no"}, "count": set("12345"),
               "position": {"left", "right", "top", "bottom"}, "motion": {"left", "right", "top", "bottom"},
               "order": set(SHAPES), "during_word": set(SHAPES), "pass": set("1234")}
    for c in clips:
        if c.question_type == "ocr":
            assert c.answer in OCR_WORDS or c.answer.isdigit()
        elif c.question_type in ("appear", "disappear"):
            assert c.answer in (SHAPES if "What shape" in c.question else COLORS)
        else:
            assert c.answer in allowed[c.question_type], (c.question_type, c.answer)
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(c.answer, add_special_tokens=False).input_ids)
        if c.answer.isdigit():  # digits are single pieces, as in Llama
            assert [p for p in pieces if p != "\u2581"] == list(c.answer), pieces
        else:  # a word the tokenizer learnt whole: the model has seen it
            assert len(pieces) == 1 and not pieces[0].startswith("<0x"), (c.answer, pieces)


# ----------------------------------------------------------------------------
# Where the answer is


def test_answer_frames_are_the_sampled_frames_showing_the_answer(clips):
    for c in clips:
        sampled, plan = _sampled(len(c.frames)), video_plan(c.index)
        if c.question_type not in TEMPORAL_TYPES:
            assert c.answer_frames == list(range(8))
            continue
        assert c.answer_frames == [i for i in range(8) if any(_shown(c.objects[t], sampled)[i] for t in c.targets)]
        if c.question_type == "pass":  # each mover on two sampled frames (brief) or on all 8
            lengths = {sum(_shown(c.objects[t], sampled)) for t in c.targets}
            assert lengths == ({2} if plan.brief else {8}), c.question_id
        elif plan.brief:
            assert 1 <= len(c.answer_frames) <= BRIEF_FRAMES, (c.question_id, c.answer_frames)
        else:
            assert len(c.answer_frames) >= SPREAD_FRAMES, (c.question_id, c.answer_frames)


def test_answer_patches_cover_the_answer_on_each_answer_frame(clips):
    for c in clips:
        assert len(c.answer_patches) == len(c.answer_frames)
        for k, patches in zip(c.answer_frames, c.answer_patches):
            frame = c.sampled[k]
            boxes = [c.objects[t]["boxes"][frame] for t in c.targets if c.objects[t]["boxes"][frame]]
            if c.question_type in ("ocr", "during_word"):
                boxes.append(c.text_bbox)
            if not boxes:  # an exist question answered no: nothing to point at
                assert patches == [] and c.answer == "no"
                continue
            assert patches, (c.question_id, k)
            for p in patches:
                x0, y0, x1, y1 = patch_bbox(p)
                assert any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes), (c.question_id, p)


# ----------------------------------------------------------------------------
# The pixels of the 8 sampled frames show the description


def _saturated(rgb: np.ndarray) -> np.ndarray:
    high, low = rgb.max(axis=2).astype(int), rgb.min(axis=2).astype(int)
    return (high - low) > 0.5 * np.maximum(high, 1)  # saturation above 0.5: objects >= 0.7, background <= 0.25


def test_sampled_frames_of_the_written_gif_show_the_description(written):
    annotations = json.loads((written / "annotations.json").read_text())
    palette = {name: np.array(rgb) for name, rgb in COLORS.items()}
    for a in annotations:
        with Image.open(written / "videos" / f"{a['question_id']}.gif") as gif:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
        assert len(frames) == a["frames"] and a["sampled"] == _sampled(len(frames))
        for f in _sampled(len(frames)):
            saturated = _saturated(frames[f])
            covered = np.zeros_like(saturated)
            for o in a["objects"]:
                box = o["boxes"][f]
                if box is None:
                    continue
                covered[box[1]:box[3], box[0]:box[2]] = True
                inside = saturated[box[1]:box[3], box[0]:box[2]]
                assert inside.mean() > 0.25, (a["question_id"], f, o["shape"])  # the shape is drawn there
                mean = frames[f][box[1]:box[3], box[0]:box[2]][inside].mean(axis=0)
                nearest = min(palette, key=lambda name: np.abs(palette[name] - mean).sum())
                assert nearest == o["color"], (a["question_id"], f, o["color"], mean)
            assert not (saturated & ~covered).any(), (a["question_id"], f)  # nothing else is
            if a["text"] is not None:
                x0, y0, x1, y1 = a["text_bbox"]
                light = (frames[f][y0:y1, x0:x1].astype(int) - [236, 234, 228]).__abs__().max(axis=2) < 12
                shown = a["text_frames"][0] <= f <= a["text_frames"][1]
                assert (light.mean() > 0.5) == shown, (a["question_id"], f)


def test_written_split_files(written):
    questions = [json.loads(line) for line in (written / "questions.jsonl").read_text().splitlines()]
    annotations = json.loads((written / "annotations.json").read_text())
    meta = json.loads((written / "meta.json").read_text())
    conversations = json.loads((written / "test.json").read_text())
    assert meta["look"] == "video" and meta["version"] == video_clips.VIDEO_GENERATOR_VERSION and meta["n"] == 24
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in annotations] == \
           [c["id"] for c in conversations]
    for q, a, c in zip(questions, annotations, conversations):
        assert (written / "videos" / q["video"]).is_file() and q["video"] == c["video"]
        assert q["text"].endswith(SHORT_ANSWER_PROMPT) and q["category"] == a["question_type"]
        assert q["answer_frames"] == a["answer_frames"]
        assert c["conversations"][0]["value"] == f"<video>\n{q['text']}"
        assert c["conversations"][1]["value"] == a["answer"]
    clip = make_clip("test", 7)
    with Image.open(written / "videos" / "test_0000007.gif") as gif:
        decoded = [f.convert("RGB").tobytes() for f in ImageSequence.Iterator(gif)]
    assert decoded == [f.tobytes() for f in clip.rgb_frames]


def test_write_split_hands_the_video_look_to_video_clips(written, tmp_path):
    """synthetic.write_split(look="video") writes what the command line wrote: clips under videos/, no images/."""
    folder = synthetic.write_split("test", 2, tmp_path / "two", start=3, look="video")
    assert not (folder / "images").exists()
    assert sorted(p.name for p in (folder / "videos").iterdir()) == ["test_0000003.gif", "test_0000004.gif"]
    for name in ("test_0000003.gif", "test_0000004.gif"):
        assert (folder / "videos" / name).read_bytes() == (written / "videos" / name).read_bytes()
    lines = (written / "questions.jsonl").read_text().splitlines()
    assert (folder / "questions.jsonl").read_text().splitlines() == lines[3:5]
    assert json.loads((folder / "meta.json").read_text())["look"] == synthetic.VIDEO_LOOK == "video"
    with pytest.raises(ValueError, match="unknown look 'clips'"):
        synthetic.write_split("test", 1, tmp_path / "bad", look="clips")


def test_pyav_reads_the_gif_as_pillow_does(written):
    _need(importlib.util.find_spec("av") is not None, "PyAV (av) is not installed")
    import av

    path = written / "videos" / "test_0000006.gif"
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert [d.tobytes() for d in decoded] == [f.tobytes() for f in make_clip("test", 6).rgb_frames]


# ----------------------------------------------------------------------------
# The shapes_video benchmark


def test_shapes_video_questions_name_their_clips(written):
    from llava.eval.registry import get_benchmark

    bench = get_benchmark("shapes_video")
    assert (bench.folder, bench.image_folder) == ("shapes_video", "videos")
    questions = list(bench.load_questions(written / bench.question_file, written / bench.image_folder))
    assert len(questions) == 24 and all(q.error is None and q.video.is_file() and q.image is None for q in questions)
    assert {q.fields["category"] for q in questions} == set(VIDEO_QUESTION_TYPES)
    assert all(q.fields["answer_frames"] for q in questions)


def test_shapes_video_refuses_another_look_and_others_refuse_it(written, tmp_path):
    from llava.data.synthetic import write_split
    from llava.eval import shapes

    lattice = write_split("test", 2, tmp_path / "shapes")
    with pytest.raises(InputError, match="holds the lattice look, but shapes_video is the video look.*"
                       r"python -m llava.data.synthetic --split test --n 600 --look video"):
        shapes.load_questions(lattice / "questions.jsonl", lattice / "images", "shapes_video")
    with pytest.raises(InputError, match="holds the video look, but shapes is the lattice look"):
        shapes.load_questions(written / "questions.jsonl", written / "images", "shapes")


def test_shapes_video_scores_every_type(written):
    from llava.eval import shapes
    from llava.eval.common import Question

    annotations = json.loads((written / "annotations.json").read_text())
    questions = [Question(a["question_id"], "q") for a in annotations]
    answers = {q.key: {"text": a["answer"] if a["question_type"] in TEMPORAL_TYPES else "wrong"}
               for q, a in zip(questions, annotations)}
    result = shapes.score(questions, answers, written, written)
    assert result["accuracy"] == 50.0 and result["questions"] == 24
    assert result["types"] == {t: (100.0 if t in TEMPORAL_TYPES else 0.0) for t in VIDEO_QUESTION_TYPES}
    brief = {t: sum(1 for a in annotations if a["question_type"] == t and len(a["answer_frames"]) <= 2)
             for t in VIDEO_QUESTION_TYPES}
    spread = {t: sum(1 for a in annotations if a["question_type"] == t) - brief[t] for t in VIDEO_QUESTION_TYPES}
    assert result["answer_frames_questions"] == {"brief": {t: n for t, n in brief.items() if n},
                                                 "spread": {t: n for t, n in spread.items() if n}}
    assert set(result["answer_frames_questions"]["brief"]) <= set(TEMPORAL_TYPES)  # a still answer is on all 8
    assert result["answer_frames"]["brief"] == {t: 100.0 for t in result["answer_frames_questions"]["brief"]}
    assert result["answer_frames"]["spread"] == {t: (100.0 if t in TEMPORAL_TYPES else 0.0)
                                                 for t in result["answer_frames_questions"]["spread"]}
