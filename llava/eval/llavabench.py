"""LLaVA-Bench (In-the-Wild): the answer file its GPT-4 judge takes. No local score.

Files (under `<data root>/llava-bench-in-the-wild/`):
    questions.jsonl      questions (asked as they are: LLaVA's model_vqa)
    images/              the images
    context.jsonl, answers_gpt4.jsonl   what the judge compares against (not read here)

The score is a GPT-4 judge's rating of our answer against GPT-4's reference
answer, relative (LLaVA's eval_gpt_review_bench.py, then summarize_gpt_review.py),
which needs an OpenAI API key: this toolkit does not call it and reports no
score. The run's `answers.jsonl` is already in the judge's answer format
(question_id, prompt, text, answer_id, model_id, metadata); pass it as the
second file of `--answer-list` (see EVAL.md).
"""

from __future__ import annotations

from pathlib import Path

from llava.eval.common import Question, read_llava_questions

FOLDER = "llava-bench-in-the-wild"
QUESTION_FILE = "questions.jsonl"
IMAGE_FOLDER = "images"


def build_prompt(question: str) -> str:
    return question.strip()


def load_questions(question_file: Path, image_folder: Path):
    # category (conv, detail, complex): the judge's summary reports a score per category
    return read_llava_questions(question_file, image_folder, build_prompt, keep=("category",))


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    return {
        "score": None, "judge_input": "answers.jsonl", "questions": len(questions),
        "judge": "GPT-4 review against answers_gpt4.jsonl (needs an OpenAI API key; not run here, see EVAL.md)",
    }
