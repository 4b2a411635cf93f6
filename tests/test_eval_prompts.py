"""Prompt snapshots: one question of every benchmark, as the model is asked it.

`text` is the user turn the runner sends (the pipeline puts `<image>\\n` in front
and wraps it in the vicuna_v1 template); the expected strings are those LLaVA-1.5's
evaluation builds from the same files (model_vqa_loader, model_vqa_science
--single-pred-prompt, model_vqa_mmbench --single-pred-prompt, model_vqa).
"""

from pathlib import Path

import pytest

from llava.conversation import build_prompt
from llava.eval.registry import BENCHMARKS
from llava.eval.run import load_questions
from tests.eval_fakes import make_all

SHORT = "Answer the question using a single word or phrase."
CHOICE = "Answer with the option's letter from the given choices directly."

FIRST_QUESTION = {
    "textvqa": f"what brand is it?\nReference OCR token: nikon, 7, stop\n{SHORT}",
    "vqav2": f"What color is the bus?\n{SHORT}",
    "gqa": f"Is it overcast?\n{SHORT}",
    "vizwiz": f"What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n{SHORT}",
    # the human turn without <image>, then the instruction
    "sqa": f"Context: none\nQuestion: Which is north 0?\nOptions: (A) x (B) y\n{CHOICE}",
    "pope": f"Is there a dog in the image?\n{SHORT}",
    "mme": f"Is there a cat in this image? Please answer yes or no.\n{SHORT}",
    # hint, question, one line per option up to the first empty one, instruction
    "mmbench": f"A hint.\nWhich one is red 0?\nA. apple\nB. sky\n{CHOICE}",
    "mmbench_cn": "A hint.\nWhich one is red 0?\nA. apple\nB. sky\n请直接回答选项字母。",
    "seed": f"How many towels?\nA. One\nB. Two\nC. Three\nD. Four\n{CHOICE}",
    "llavabench": "What is the name of this place?",  # asked as it is
    "mmvet": "What is x in the equation?",
    # A-OKVQA as LLaVA-1.5 asks multiple choice (MMBench's option lines) and short answers; OCR-VQA short
    "aokvqa": f"What is the animal eating?\nA. one\nB. two\nC. three\nD. four\n{CHOICE}",
    "aokvqa_da": f"What is the animal eating?\n{SHORT}",
    "ocrvqa": f"Who wrote this book?\n{SHORT}",
}
VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions. USER: <image>\n")  # LLaVA-1.5's conv_vicuna_v1


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("name", list(FIRST_QUESTION))
def test_first_question(name, data_root):
    question = load_questions(BENCHMARKS[name], Path(data_root), None, None, limit=1)[0]
    assert question.text == FIRST_QUESTION[name]
    assert question.has_image
    assert build_prompt(question.text) == f"{VICUNA}{FIRST_QUESTION[name]} ASSISTANT:"


def test_every_benchmark_has_a_snapshot():
    # val splits: tests/test_eval_scoring.py; the project's own shapes benchmarks: tests/test_eval_shapes.py;
    # the video QA sets (no image): tests/test_video_qa.py
    video = {name for name, bench in BENCHMARKS.items() if bench.folder.startswith("GPT_Zero_Shot_QA/")}
    assert set(FIRST_QUESTION) == set(BENCHMARKS) - {"vqav2_val", "vizwiz_val", "shapes", "shapes_style", "shapes_hr",
                                                     "shapes_video"} - video


def test_a_question_written_without_its_instruction_gets_it(tmp_path):
    from llava.eval import pope, textvqa

    assert pope.build_prompt("Is there a dog in the image?") == f"Is there a dog in the image?\n{SHORT}"
    assert textvqa.build_prompt("what is it?", ["a", "b"]) == f"what is it?\nReference OCR token: a, b\n{SHORT}"
