"""Tests of the synthetic shapes-VQA generator and of the small LLaVA's tokenizer.

Every answer is worked out again here from the sample's objects, with the
question parsed back from its text, so a generator that asks an ambiguous
question or answers it wrongly fails.
"""

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava.data import synthetic
from llava.data.synthetic import (
    COLORS, GRID_SIZE, IMAGE_SIZE, OCR_WORDS, PLURALS, POSITION_MARGIN, QUESTION_TYPES, SHAPES,
    SHORT_ANSWER_PROMPT, SPLIT_SEED_BASE, SPLIT_SIZE_LIMIT, generate_split, make_sample, patch_bbox,
    sample_seed, write_split,
)

N_SAMPLES = 120  # ten cycles of the six question types
EXAMPLE_JSON = Path(__file__).resolve().parents[1] / "docs" / "examples" / "shapes.json"


@pytest.fixture(scope="module")
def samples():
    return list(generate_split("test", N_SAMPLES))


@pytest.fixture(scope="module")
def tokenizer():
    from llava.data.tokenizer import build_tokenizer
    return build_tokenizer()


def _image_hash(sample) -> str:
    return hashlib.sha256(sample.image.tobytes()).hexdigest()


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# ----------------------------------------------------------------------------
# Determinism and splits


def test_same_index_gives_same_sample():
    first, again = make_sample("train", 37), make_sample("train", 37)
    assert _image_hash(first) == _image_hash(again)
    assert (first.question, first.answer, first.objects, first.patches) == \
           (again.question, again.answer, again.objects, again.patches)


def test_sample_is_reproducible_alone(samples):
    alone = make_sample("test", 53)
    assert _image_hash(alone) == _image_hash(samples[53])
    assert alone.question == samples[53].question
    from_offset = next(generate_split("test", 1, start=53))
    assert _image_hash(from_offset) == _image_hash(samples[53])


def test_splits_have_disjoint_seeds_and_images():
    ranges = sorted((base, base + SPLIT_SIZE_LIMIT) for base in SPLIT_SEED_BASE.values())
    assert all(end <= next_start for (_, end), (next_start, _) in zip(ranges, ranges[1:]))
    hashes = {split: {_image_hash(s) for s in generate_split(split, 12)} for split in SPLIT_SEED_BASE}
    assert not hashes["train"] & hashes["validation"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["validation"] & hashes["test"]
    assert make_sample("train", 0).question_id != make_sample("test", 0).question_id


def test_bad_split_or_index_is_refused():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        sample_seed("dev", 0)
    with pytest.raises(ValueError, match="outside"):
        sample_seed("test", SPLIT_SIZE_LIMIT)


# ----------------------------------------------------------------------------
# Questions and answers


def test_every_question_type_appears_in_each_cycle(samples):
    for start in range(0, N_SAMPLES, len(QUESTION_TYPES)):
        cycle = samples[start:start + len(QUESTION_TYPES)]
        assert sorted(s.question_type for s in cycle) == sorted(QUESTION_TYPES)


def test_yes_and_no_are_balanced(samples):
    answers = [s.answer for s in samples if s.question_type == "exist"]
    assert len(answers) == N_SAMPLES // len(QUESTION_TYPES)
    assert answers.count("yes") == answers.count("no") == len(answers) // 2


def test_answers_are_one_lower_case_word(samples):
    allowed = {
        "color": set(COLORS), "shape": set(SHAPES), "exist": {"yes", "no"},
        "count": {str(n) for n in range(1, 6)}, "position": {"left", "right", "top", "bottom"},
    }
    for s in samples:
        assert re.fullmatch(r"[a-z0-9]+", s.answer), (s.question_id, s.answer)
        if s.question_type == "ocr":
            assert s.answer in OCR_WORDS or s.answer.isdigit()
        else:
            assert s.answer in allowed[s.question_type], (s.question_id, s.answer)


def test_answer_distributions_are_not_degenerate(samples):
    for question_type in ("color", "shape", "count", "position", "ocr"):
        answers = {s.answer for s in samples if s.question_type == question_type}
        assert len(answers) >= 3, (question_type, answers)


def _expected_answer(sample):
    """The answer worked out from the objects alone; asserts the question's uniqueness rule."""
    objects, question = sample.objects, sample.question
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        named = [o for o in objects if o["shape"] == m[1]]
        assert len(named) == 1, question
        return named[0]["color"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        named = [o for o in objects if o["color"] == m[1]]
        assert len(named) == 1, question
        return named[0]["shape"]
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "yes" if any((o["color"], o["shape"]) == (m[1], m[2]) for o in objects) else "no"
    if question == "How many shapes are there?":
        return str(len(objects))
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        return str(sum(PLURALS[o["shape"]] == m[1] for o in objects))
    if m := re.fullmatch(r"Is the (\w+) (\w+) (?:on the left or the right|at the top or the bottom)\?", question):
        named = [o for o in objects if (o["color"], o["shape"]) == (m[1], m[2])]
        assert len(named) == 1, question
        return _clear_side(named[0]["bbox"], horizontal="left" in question, size=sample.size)
    if question in ("What word is written in the image?", "What number is written in the image?"):
        assert sample.text is not None and sample.text.isdigit() == ("number" in question)
        return sample.text.lower()
    raise AssertionError(f"unexpected question {question!r}")


def _clear_side(bbox, horizontal: bool, size=(IMAGE_SIZE, IMAGE_SIZE)) -> str:
    low, high = (bbox[0], bbox[2]) if horizontal else (bbox[1], bbox[3])
    middle = (size[0] if horizontal else size[1]) // 2
    if high <= middle - POSITION_MARGIN:
        return "left" if horizontal else "top"
    assert low >= middle + POSITION_MARGIN, f"box {bbox} is not clearly in one half"
    return "right" if horizontal else "bottom"


def test_questions_are_unambiguous_and_answers_right(samples):
    for s in samples:
        assert _expected_answer(s) == s.answer, (s.question_id, s.question)


def test_no_answers_are_hard_negatives(samples):
    for s in samples:
        if s.answer == "no":
            color, shape = re.fullmatch(r"Is there a (\w+) (\w+)\?", s.question).groups()
            assert any(o["color"] == color or o["shape"] == shape for o in s.objects), s.question_id


def test_count_questions_name_repeated_shapes(samples):
    counts = [int(s.answer) for s in samples if s.question_type == "count"]
    assert max(counts) >= 3


# ----------------------------------------------------------------------------
# Scenes and patches


def test_scenes_follow_the_layout_rules(samples):
    for s in samples:
        assert 1 <= len(s.objects) <= synthetic.MAX_OBJECTS
        boxes = [o["bbox"] for o in s.objects] + ([s.text_bbox] if s.text_bbox else [])
        for i, a in enumerate(boxes):
            assert 0 <= a[0] < a[2] <= IMAGE_SIZE and 0 <= a[1] < a[3] <= IMAGE_SIZE
            assert not any(_overlap(a, b) for b in boxes[i + 1:]), s.question_id
        assert s.image.size == (IMAGE_SIZE, IMAGE_SIZE) and s.image.mode == "RGB"


def test_objects_are_drawn_exactly_in_their_box(samples):
    """The pixels of an object's colour around its box span exactly its box (boxes are tight)."""
    margin = 3  # < PLACEMENT_MARGIN: no other object reaches into the window
    for s in samples:
        pixels = np.asarray(s.image).astype(int)  # (H, W, 3)
        for o in s.objects:
            x0, y0, x1, y1 = o["bbox"]
            wx0, wy0 = max(0, x0 - margin), max(0, y0 - margin)
            window = pixels[wy0:y1 + margin, wx0:x1 + margin]
            ys, xs = np.nonzero(np.abs(window - COLORS[o["color"]]).max(-1) <= synthetic.COLOR_JITTER)
            drawn = [wx0 + xs.min(), wy0 + ys.min(), wx0 + xs.max() + 1, wy0 + ys.max() + 1]
            assert drawn == o["bbox"], (s.question_id, o)


def test_patches_lie_inside_the_object_box(samples):
    for s in samples:
        for o in s.objects:
            assert o["patches"] == sorted(o["patches"]) and o["patches"]
            assert all(_overlap(patch_bbox(p), o["bbox"]) for p in o["patches"])
            center_patch = (o["center"][1] // 14) * GRID_SIZE + o["center"][0] // 14
            assert center_patch in o["patches"]


def test_question_patches_are_those_of_its_targets(samples):
    for s in samples:
        assert all(0 <= p < GRID_SIZE * GRID_SIZE for p in s.patches)
        if s.question_type == "ocr":
            assert s.patches and all(_overlap(patch_bbox(p), s.text_bbox) for p in s.patches)
        else:
            union = sorted({p for k in s.targets for p in s.objects[k]["patches"]})
            assert s.patches == union
        if s.answer == "no":
            assert s.patches == []
        elif s.question_type != "ocr":
            assert s.patches


def test_boxes_sit_centred_in_lattice_cells(samples):
    """Each object fills one cell (small) or 2x2 cells (large) of the 28-px lattice, and no cell holds two."""
    L = synthetic.LATTICE
    for s in samples:
        owners = {}
        for k, o in enumerate(s.objects):
            x0, y0, x1, y1 = o["bbox"]
            cells = 1 if o["size"] == "small" else 2
            assert (x0 // L, y0 // L) == ((x1 - 1) // L - cells + 1, (y1 - 1) // L - cells + 1), o
            assert x0 % L == y0 % L == (cells * L - (x1 - x0)) // 2, o
            for cell in {(x // L, y // L) for x in (x0, x1 - 1) for y in (y0, y1 - 1)}:
                assert owners.setdefault(cell, k) == k, (s.question_id, cell)


def test_char_spans_cover_the_printed_glyphs(samples):
    """The dark pixels of the printed text lie inside the spans, and every span holds some of them."""
    for s in [s for s in samples if s.text][:10]:
        spans = synthetic.char_spans(s.text, s.text_bbox)
        assert "".join(ch for ch, _, _ in spans) == s.text.upper()
        x0, y0, x1, y1 = s.text_bbox
        dark = (np.asarray(s.image)[y0:y1, x0:x1].astype(int).max(-1) < 100).any(axis=0)
        columns = x0 + np.nonzero(dark)[0]
        assert spans[0][1] - 1 <= columns.min() and columns.max() < spans[-1][2] + 1, s.question_id
        for _, a, b in spans:
            assert ((columns >= a) & (columns < b)).any(), s.question_id


def test_some_images_carry_text(samples):
    texts = [s.text for s in samples if s.question_type != "ocr"]
    assert 0 < sum(t is not None for t in texts) < len(texts)


# ----------------------------------------------------------------------------
# Files on disk


def test_write_split_files_parse(tmp_path):
    out = write_split("validation", 12, tmp_path / "shapes", start=5)
    questions = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    annotations = json.loads((out / "annotations.json").read_text())
    conversations = json.loads((out / "validation.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    assert len(questions) == len(annotations) == len(conversations) == 12
    assert meta["split"] == "validation" and meta["start"] == 5 and meta["n"] == 12

    first = make_sample("validation", 5)
    assert questions[0] == {"question_id": first.question_id, "image": f"{first.question_id}.png",
                            "text": f"{first.question}\n{SHORT_ANSWER_PROMPT}",
                            "category": first.question_type}
    assert annotations[0]["answer"] == first.answer and annotations[0]["patches"] == first.patches
    for q, a, c in zip(questions, annotations, conversations):
        assert q["question_id"] == a["question_id"] == c["id"]
        assert a["question_type"] == q["category"]
        human, gpt = c["conversations"]
        assert human == {"from": "human", "value": f"<image>\n{q['text']}"}
        assert gpt == {"from": "gpt", "value": a["answer"]}
        with Image.open(out / "images" / q["image"]) as image:
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
    with Image.open(out / "images" / questions[0]["image"]) as image:
        assert image.convert("RGB").tobytes() == first.image.tobytes()


def test_cli_writes_a_split(tmp_path, capsys):
    synthetic.main(["--split", "test", "--n", "2", "--out", str(tmp_path)])
    assert len((tmp_path / "questions.jsonl").read_text().splitlines()) == 2
    assert "wrote 2 test samples" in capsys.readouterr().out


def test_the_scene_model_is_one_module_read_through_synthetic():
    """The scene model and its questions live in llava.data.scenes; synthetic hands its users the same objects
    (no second copy that could drift), and the video look builds on scenes without importing synthetic."""
    from llava.data import scenes, video_clips

    for name in ("COLORS", "SHAPES", "QUESTION_TYPES", "TEMPLATES", "SHORT_ANSWER_PROMPT", "SPLIT_SEED_BASE",
                 "TEXT_BOX_ID", "LATTICE", "HR_CANVASES", "Plan", "ask", "side_of", "sample_seed", "tokens_on_grid",
                 "patch_bbox"):
        assert getattr(synthetic, name) is getattr(scenes, name), name
    assert video_clips.sample_scene is scenes.sample_scene and not hasattr(video_clips, "synthetic")
    assert synthetic.VIDEO_LOOK == video_clips.LOOK == "video" and "video" not in synthetic.LOOKS


def test_readme_example_matches_the_generator():
    example = json.loads(EXAMPLE_JSON.read_text())
    sample = make_sample(example["split"], example["index"])
    assert (sample.question, sample.answer, sample.text) == \
           (example["question"], example["answer"], example["text"])
    assert sample.objects == example["objects"]
    assert len(sample.objects) >= 3 and sample.text is not None
    for extra in example["more_questions"]:  # written by hand: check them like generated ones
        asked = dataclasses.replace(sample, question=extra["question"])
        assert _expected_answer(asked) == extra["answer"], extra


# ----------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_special_tokens(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<pad>")] == [0, 1, 2, 3]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == \
           ("<s>", "</s>", "<pad>", "<unk>")
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert image_id not in (0, tokenizer.unk_token_id)
    assert tokenizer("a <image> b").input_ids.count(image_id) == 1
    assert tokenizer("red").input_ids[0] == 1
    assert tokenizer("red", add_special_tokens=False).input_ids[0] != 1
    assert 200 <= len(tokenizer) <= 2048


def test_tokenizer_round_trips_answers(tokenizer, samples):
    texts = {s.answer for s in samples} | set(OCR_WORDS) | set(COLORS) | set(SHAPES)
    texts |= {"0", "7", "427", "xylophone", "QWERTY", "Hello, world!", "请直接回答选项字母。"}
    for text in texts:
        ids = tokenizer(text).input_ids
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_round_trips_prompts(tokenizer, samples):
    for s in samples[:12]:
        prompt = (f"A chat between a curious human and an artificial intelligence assistant. "
                  f"USER: <image>\n{s.prompt} ASSISTANT: {s.answer}</s>")
        ids = tokenizer(prompt).input_ids
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[1:]) == prompt


def test_task_words_are_single_pieces(tokenizer):
    for word in list(COLORS) + list(SHAPES) + list(OCR_WORDS) + ["yes", "no", "left", "right", "top", "bottom"]:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_tokenizer_saves_and_loads_with_auto_tokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "USER: <image>\nWhat color is the star? ASSISTANT: red</s>"
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert len(loaded) == len(tokenizer)
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 3)


def test_tokenizer_build_is_deterministic(tokenizer):
    from llava.data.tokenizer import build_tokenizer
    assert build_tokenizer().backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


# ----------------------------------------------------------------------------
# The other looks: varied (training), drawn (held out), hr (LLaVA-NeXT canvases)


@pytest.fixture(scope="module")
def looks():
    return {look: list(generate_split("test", 60, look=look)) for look in ("varied", "drawn", "hr")}


def test_the_lattice_look_is_the_default_and_the_looks_draw_apart():
    assert make_sample("test", 5).look == "lattice"
    images = {look: _image_hash(make_sample("test", 5, look=look)) for look in synthetic.LOOKS}
    assert len(set(images.values())) == len(synthetic.LOOKS)  # one seed, a stream of its own per look
    assert _image_hash(make_sample("test", 5, look="hr")) == images["hr"]  # reproducible alone
    with pytest.raises(ValueError, match="unknown look"):
        make_sample("test", 5, look="sketch")


def test_every_look_asks_unambiguous_questions_with_right_answers(looks):
    for samples in looks.values():
        for s in samples:
            assert _expected_answer(s) == s.answer, (s.look, s.question_id, s.question)
        assert {s.question_type for s in samples} == set(QUESTION_TYPES)


def test_varied_and_drawn_objects_come_in_many_sizes_on_the_lattice(looks):
    sides = {o["bbox"][2] - o["bbox"][0] for s in looks["varied"] for o in s.objects}
    assert sides == {25, 53, 81, 109}  # 1 to 4 lattice cells: 7% of the image to a third of it
    assert {o["bbox"][2] - o["bbox"][0] for s in looks["drawn"] for o in s.objects} == {53, 81, 109}  # large
    L = synthetic.LATTICE
    for s in looks["varied"] + looks["drawn"]:
        boxes = [o["bbox"] for o in s.objects] + ([s.text_bbox] if s.text_bbox else [])
        for o in s.objects:  # centred in a block of whole cells, as the lattice look's objects are
            cells = (o["bbox"][2] - o["bbox"][0] + 3) // L
            assert o["bbox"][0] % L == o["bbox"][1] % L == (cells * L - (o["bbox"][2] - o["bbox"][0])) // 2
        for i, a in enumerate(boxes):
            assert 0 <= a[0] < a[2] <= IMAGE_SIZE and 0 <= a[1] < a[3] <= IMAGE_SIZE
            assert not any(_overlap(a, b) for b in boxes[i + 1:]), s.question_id


def test_the_drawn_look_is_plain_and_anti_aliased(looks):
    """A flat pale background, and object edges that mix with it (the training looks' edges never do)."""
    for s in looks["drawn"][:12]:
        pixels = np.asarray(s.image).astype(int)
        background = pixels[s.label_map == 0]
        corner = pixels[0, 0]
        assert (np.abs(background - corner).max(axis=1) <= 1).mean() > 0.95  # plain, but for the text box
        o = s.objects[0]
        x0, y0, x1, y1 = o["bbox"]
        window = pixels[y0:y1, x0:x1].reshape(-1, 3)
        colour = np.asarray(COLORS[o["color"]])
        mixed = [p for p in window if 8 < np.abs(p - colour).max() and 8 < np.abs(p - corner).max()]
        assert len(mixed) > 0.03 * len(window), s.question_id  # the outline and the blended edge


def test_the_hr_look_clusters_small_objects_in_some_crops(looks):
    canvases = set()
    for s in looks["hr"]:
        width, height = s.size
        canvases.add((width, height))
        rows, cols = s.layout["crop_grid"]
        assert (rows, cols) == (height // 336, width // 336)
        busy = set(s.layout["busy_crops"])
        assert 1 <= len(busy) <= 2 and not busy & set(s.layout["cluttered_crops"])
        for box in [o["bbox"] for o in s.objects] + ([s.text_bbox] if s.text_bbox else []):
            row, col = box[1] // 336, box[0] // 336
            assert (box[3] - 1) // 336 == row and (box[2] - 1) // 336 == col  # inside one crop
            assert row * cols + col in busy
        for o in s.objects:  # small, centred in one cell of the 28-px lattice
            assert o["size"] == "small" and o["bbox"][2] - o["bbox"][0] == 2 * synthetic.HR_HALF + 1
            assert o["bbox"][0] % synthetic.LATTICE == o["bbox"][1] % synthetic.LATTICE == (28 - 25) // 2
        blobs = (s.label_map == synthetic.DISTRACTOR_ID)
        assert bool(blobs.any()) == (s.layout["distractors"] > 0)
        for crop in range(rows * cols):
            r, c = divmod(crop, cols)
            if crop not in s.layout["cluttered_crops"]:
                assert not blobs[r * 336:(r + 1) * 336, c * 336:(c + 1) * 336].any()
    assert canvases == set(synthetic.HR_CANVASES)
    assert any(s.layout["cluttered_crops"] for s in looks["hr"]) and any(not s.layout["distractors"] for s in looks["hr"])


def test_hr_patches_index_the_whole_images_14_px_grid(looks):
    for s in looks["hr"]:
        columns = s.size[0] // 14
        for o in s.objects:
            x, y = o["center"]
            assert (y // 14) * columns + x // 14 in o["patches"]


def test_write_split_records_the_look(tmp_path):
    out = write_split("test", 3, tmp_path / "hr", look="hr")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["look"] == "hr" and meta["image_size"] == 1008
    annotations = json.loads((out / "annotations.json").read_text())
    assert all("layout" in a for a in annotations)
    with Image.open(out / "images" / "test_0000000.png") as image:
        assert image.size == make_sample("test", 0, look="hr").size
