"""MM-Vet: the answer file its GPT-4-based grader takes. No local score.

Files (under `<data root>/mm-vet/`):
    llava-mm-vet.jsonl   questions (asked as they are, no instruction added: LLaVA's model_vqa)
    images/              the images

MM-Vet is graded by GPT-4 against reference answers (the official MM-Vet
evaluator, see EVAL.md), which needs an OpenAI API key; this toolkit does not
call it and reports no score. It writes `mmvet_results.json`, {"v1_<question_id>":
answer}, the file LLaVA's convert_mmvet_for_eval makes for the grader.
"""

from __future__ import annotations

from pathlib import Path

from llava.eval.common import Question, answer_text, read_llava_questions, write_json

FOLDER = "mm-vet"
QUESTION_FILE = "llava-mm-vet.jsonl"
IMAGE_FOLDER = "images"
JUDGE_INPUT = "mmvet_results.json"


def build_prompt(question: str) -> str:
    return question.strip()


def load_questions(question_file: Path, image_folder: Path):
    return read_llava_questions(question_file, image_folder, build_prompt)


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    # An unreadable line has no MM-Vet id to grade; the run names it in scores.json.
    results = {f"v1_{q.question_id}": answer_text(answers.get(q.key)) or "" for q in questions if q.error is None}
    write_json(output_dir / JUDGE_INPUT, results)
    return {
        "score": None, "judge_input": JUDGE_INPUT, "questions": len(results),
        "judge": "MM-Vet's GPT-4 grader (needs an OpenAI API key; not run here, see EVAL.md)",
    }
