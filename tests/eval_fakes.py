"""A fake pipeline with LlavaPipeline's interface (docs/PIPELINE_API.md), and tiny benchmark folders.

The fake answers without a model, deterministically from the question text, so
the evaluation runner, its resume and its multi-process merge can be tested in
a second. The runner reaches it with `--pipeline tests.eval_fakes:FakePipeline.load`.

    EVAL_FAKE_DELAY=0.5   seconds to wait after each answer (to kill a run midway)
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from llava.errors import InputError

SHORT = "Answer the question using a single word or phrase."
CHOICE = "Answer with the option's letter from the given choices directly."


@dataclass
class Request:
    image: Image.Image | None
    text: str
    video: object | None = None  # a llava.video.Video


@dataclass
class Answer:
    text: str
    prompt: str
    prompt_ids: list[int]
    visual_tokens: list[int]
    kept: list[list[int]]
    prefill_s: float
    total_s: float
    stop_reason: str = "eos"
    frames: list[int] | None = None  # a video: the frame indices read
    kept_frames: list[list[int]] | None = None  # a video: per frame, the patches kept


class FakePipeline:
    context_len = 400  # characters here: a longer question is "too long for the context"

    def __init__(self, model_id: str = "fake-llava", method_spec: str = "none", delay: float = 0.0):
        self.model_id, self.method_spec, self.delay = model_id, method_spec, delay
        keep = re.search(r"keep=(\d+)", method_spec)
        self.keep = int(keep.group(1)) if keep else 576
        self.calls: list[int] = []  # batch sizes, for tests

    @classmethod
    def load(cls, model_path, method=None, conv_mode="vicuna_v1", device="cpu", **options) -> "FakePipeline":
        return cls(Path(model_path).name, method or "none", float(os.environ.get("EVAL_FAKE_DELAY", "0")))

    def answer(self, requests, max_new_tokens=128, temperature=0.0, top_p=None, seed=0) -> list[Answer]:
        self.calls.append(len(requests))
        for request in requests:
            if len(request.text) > self.context_len:
                raise InputError(f"prompt too long: {len(request.text)} characters, the context holds {self.context_len}")
        answers = []
        for request in requests:
            visual, video = ([self.keep] if request.image is not None else []), {}
            if request.video is not None:  # keep=N patches per frame (all 256 without a budget)
                per_frame, frames = (self.keep if self.keep != 576 else 256), list(request.video.indices)
                visual = [per_frame * len(frames)]
                video = {"frames": frames, "kept_frames": [list(range(per_frame)) for _ in frames]}
            answers.append(Answer(
                fake_answer(request.text), f"USER: <image>\n{request.text} ASSISTANT:", [1, -200], visual,
                [list(range(n)) for n in visual], 0.0, 0.0, **video,
            ))
            if self.delay:
                time.sleep(self.delay)
        return answers


def fake_answer(text: str) -> str:
    """'A' to multiple choice, 'Yes' to yes/no questions, else the question's last word."""
    if CHOICE in text or "请直接回答选项字母" in text:
        return "A"
    first = text.split("\n")[0]
    if re.match(r"(Is|Are|Does|Do|Can)\b", first):
        return "Yes"
    words = re.findall(r"[A-Za-z]+", first)
    return words[-1].lower() if words else "unanswerable"


# ----------------------------------------------------------------------------- tiny benchmark folders


def save_image(path: Path, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.name


def write_jsonl(path: Path, records: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def image_base64(seed: int = 0) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def make_all(root: Path) -> Path:
    """Three questions of every benchmark, in its real file layout under `root` (the data root)."""
    for build in BUILDERS.values():
        build(root)
    return root


def _simple(root: Path, folder: str, question_file: str, image_folder: str, texts: list[str], **extra) -> None:
    records = []
    for i, text in enumerate(texts):
        image = save_image(root / folder / image_folder / f"img{i}.jpg", seed=i)
        records.append({"question_id": i, "image": image, "text": text, **{k: v[i] for k, v in extra.items()}})
    write_jsonl(root / folder / question_file, records)


def make_textvqa(root: Path) -> None:
    questions = ["what brand is it?", "what number is shown?", "what does the sign say?"]
    records = []
    for i, q in enumerate(questions):
        save_image(root / "textvqa/train_images" / f"t{i}.jpg", seed=i)
        records.append({"question_id": f"t{i}", "image": f"t{i}.jpg",
                        "text": f"{q}\nReference OCR token: nikon, 7, stop\n{SHORT}"})
    write_jsonl(root / "textvqa/llava_textvqa_val_v051_ocr.jsonl", records)
    data = [{"question_id": 100 + i, "image_id": f"t{i}", "question": q, "answers": ["it"] * 10}
            for i, q in enumerate(questions)]
    write_json(root / "textvqa/TextVQA_0.5.1_val.json", {"data": data})


def make_vqav2(root: Path) -> None:
    _simple(root, "vqav2", "llava_vqav2_mscoco_test-dev2015.jsonl", "test2015",
            [f"What color is the bus?\n{SHORT}", f"Is it raining?\n{SHORT}", f"How many dogs?\n{SHORT}"])
    write_jsonl(root / "vqav2/llava_vqav2_mscoco_test2015.jsonl", [{"question_id": i} for i in range(4)])


def make_gqa(root: Path) -> None:
    _simple(root, "gqa", "llava_gqa_testdev_balanced.jsonl", "data/images",
            [f"Is it overcast?\n{SHORT}", f"What is the man holding?\n{SHORT}", f"Who wears the hat?\n{SHORT}"])
    write_json(root / "gqa/data/testdev_balanced_questions.json",
               {"0": {"answer": "yes"}, "1": {"answer": "holding"}, "2": {"answer": "man"}})


def make_vizwiz(root: Path) -> None:
    tail = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT
    _simple(root, "vizwiz", "llava_test.jsonl", "test",
            [f"What is this?\n{tail}", f"What color is the shirt?\n{tail}", f"Is the light on?\n{tail}"])


def make_sqa(root: Path) -> None:
    records, problems = [], {}
    for i in range(3):
        record = {"id": str(10 + i), "conversations": [
            {"from": "human", "value": f"Context: none\nQuestion: Which is north {i}?\nOptions: (A) x (B) y\n<image>"},
            {"from": "gpt", "value": "The answer is A."}]}
        if i < 2:
            save_image(root / f"scienceqa/images/test/{10 + i}/image.png", seed=i)
            record["image"] = f"{10 + i}/image.png"
        records.append(record)
        problems[str(10 + i)] = {"choices": ["x", "y"], "answer": i % 2}
    write_json(root / "scienceqa/llava_test_CQM-A.json", records)
    write_json(root / "scienceqa/problems.json", problems)
    write_json(root / "scienceqa/pid_splits.json", {"test": list(problems)})


def make_pope(root: Path) -> None:
    splits = ["adversarial", "popular", "random"]
    _simple(root, "pope", "llava_pope_test.jsonl", "val2014",
            [f"Is there a dog in the image?\n{SHORT}"] * 3, category=splits)
    for i, split in enumerate(splits):
        write_jsonl(root / f"pope/coco/coco_pope_{split}.json",
                    [{"question_id": i, "image": f"img{i}.jpg", "text": "Is there a dog in the image?",
                      "label": "yes" if i != 1 else "no"}])


def make_mme(root: Path) -> None:
    release = root / "MME/MME_Benchmark_release_version"
    records = []
    for subtask, image, seed in (("existence", "000.jpg", 0), ("code_reasoning", "001.png", 1)):
        save_image(release / subtask / image, seed=seed)
        questions = [("Is there a cat in this image? Please answer yes or no.", "Yes"),
                     ("Is there a car in this image? Please answer yes or no.", "No")]
        (release / subtask / (Path(image).stem + ".txt")).write_text(
            "".join(f"{q}\t{a}\n" for q, a in questions), encoding="utf-8")
        records += [{"question_id": f"{subtask}/{image}", "image": f"{subtask}/{image}", "text": f"{q}\n{SHORT}",
                     "category": subtask} for q, _ in questions]
    write_jsonl(root / "MME/llava_mme.jsonl", records[:3])


def make_mmbench(root: Path, name: str = "mmbench_dev_20230712.tsv") -> None:
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "comment", "split"]
    rows = [[str(i), f"Which one is red {i}?", "A hint." if i == 0 else "nan", "apple", "sky", "grass" if i else "nan",
             "nan", "AB"[i % 2], "color", image_base64(i), "src", "l2", "nan", "dev"] for i in range(3)]
    path = root / "mmbench" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")


def make_seed(root: Path) -> None:
    texts = [f"How many towels?\nA. One\nB. Two\nC. Three\nD. Four\n{CHOICE}"] * 4
    records = []
    for i in range(4):
        folder = "SEED-Bench-image" if i < 3 else "SEED-Bench-video-image"
        save_image(root / "seed_bench" / folder / f"s{i}.jpg", seed=i)
        records.append({"question_id": str(200 + i), "image": f"{folder}/s{i}.jpg", "text": texts[i]})
    write_jsonl(root / "seed_bench/llava-seed-bench.jsonl", records)
    write_json(root / "seed_bench/SEED-Bench.json", {
        "question_type": {"Scene Understanding": 1, "Instance Counting": 2},
        "questions": [{"question_id": str(200 + i), "answer": "AB"[i % 2], "question_type_id": 1 + i % 2,
                       "data_type": "image" if i < 3 else "video"} for i in range(4)]})


def make_llavabench(root: Path) -> None:
    _simple(root, "llava-bench-in-the-wild", "questions.jsonl", "images",
            ["What is the name of this place?", "Describe the photo in detail.", "What is unusual here?"])


def make_mmvet(root: Path) -> None:
    _simple(root, "mm-vet", "llava-mm-vet.jsonl", "images", ["What is x in the equation?", "Which is larger?", "Why?"])


def five_questions_one_malformed(root: Path, benchmark: str) -> Path:
    """Four questions the fake answers right and, third, a line without `text` (gqa or shapes); the question file.

    Every question the file holds counts: 80.00 over 5, not 100.00 over 4.
    """
    folder, question_file, image_folder = {
        "gqa": ("gqa", "llava_gqa_testdev_balanced.jsonl", "data/images"),
        "shapes": ("shapes", "questions.jsonl", "images"),
    }[benchmark]
    words = ["apple", "table", "dog", "sky"]
    records = []
    for i, word in enumerate(words):
        save_image(root / folder / image_folder / f"g{i}.png", seed=i)
        records.append({"question_id": str(i), "image": f"g{i}.png", "text": f"What is the {word}?", "category": "ocr"})
    records.insert(2, '{"question_id": "9", "image": "g0.png"}')  # no text
    write_jsonl(root / folder / question_file, records)
    if benchmark == "gqa":
        write_json(root / folder / "data/testdev_balanced_questions.json", {str(i): {"answer": w} for i, w in enumerate(words)})
    else:
        write_json(root / folder / "annotations.json",
                   [{"question_id": str(i), "answer": w, "question_type": "ocr"} for i, w in enumerate(words)])
    return root / folder / question_file


def make_aokvqa(root: Path) -> None:
    """Three questions; the fake answers 'A' (right for the first two) and the question's last word."""
    records = []
    for i, (question, correct, answers) in enumerate([
        ("What is the animal eating?", 0, ["eating"] * 3 + ["grass"] * 7),
        ("What season is it?", 0, ["winter"] * 10),
        ("Why is the man running?", 2, ["running"] * 2 + ["late"] * 8),
    ]):
        save_image(root / "aokvqa/val2017" / f"{1000 + i:012d}.jpg", seed=i)
        records.append({"question_id": f"q{i}", "image_id": 1000 + i, "question": question,
                        "choices": ["one", "two", "three", "four"], "correct_choice_idx": correct,
                        "direct_answers": answers})
    write_json(root / "aokvqa/aokvqa_v1p0_val.json", records)


def make_ocrvqa(root: Path) -> None:
    """Two test images (three questions) and one training image that is not asked."""
    dataset = {
        "b1": {"imageURL": "http://x/b1.jpg", "split": 3, "questions": ["Who wrote this book?", "What is the genre?"],
               "answers": ["Wrote", "Cooking"]},
        "b2": {"imageURL": "http://x/b2.png", "split": 3, "questions": ["Is this a comic?"], "answers": ["Yes"]},
        "b3": {"imageURL": "http://x/b3.jpg", "split": 1, "questions": ["Title?"], "answers": ["x"]},
    }
    for name, record in dataset.items():
        save_image(root / "ocrvqa/images" / f"{name}{Path(record['imageURL']).suffix}", seed=len(name))
    write_json(root / "ocrvqa/dataset.json", dataset)


BUILDERS = {
    "textvqa": make_textvqa, "vqav2": make_vqav2, "gqa": make_gqa, "vizwiz": make_vizwiz, "sqa": make_sqa,
    "pope": make_pope, "mme": make_mme, "mmbench": make_mmbench,
    "mmbench_cn": lambda root: make_mmbench(root, "mmbench_dev_cn_20231003.tsv"),
    "seed": make_seed, "llavabench": make_llavabench, "mmvet": make_mmvet, "aokvqa": make_aokvqa,
    "ocrvqa": make_ocrvqa,
}
