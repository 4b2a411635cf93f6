"""The video QA benchmarks of Video-LLaVA and FasterVLM: MSVD-QA, MSRVTT-QA, TGIF-QA and ActivityNet-QA.

Files (Video-LLaVA's layout, TRAIN_AND_VALIDATE.md, under `<data root>/GPT_Zero_Shot_QA/<Set>_Zero_Shot_QA/`):
    test_q.json, test_a.json          the full test sets: [{video_name, question_id, question}] and
                                      [{answer, type, question_id}]
    test_q_1k.json, test_a_1k.json    FasterVLM's subsets, the first 1000 questions of each set (its
                                      repository's eval/GPT_Zero_Shot_QA/), the `<name>_1k` benchmarks
    the videos: MSVD videos/ (.avi), MSRVTT videos/all/, TGIF mp4/, ActivityNet all_test/ (file names
    `v_` + video_name); each is looked for as named and with .mp4, .avi, .mov, .mkv, .webm, .gif, in that order

Pairing: test_a.json is matched to test_q.json by list position, which is how Video-LLaVA's inference
script reads the two files (an answer entry that names another question_id than its question is refused:
the files do not pair up). The ground truth then travels with its question, and every answer line is
matched to its question by question_id (the runner's question key), never by position.

The question is asked as it is written (no instruction appended, as Video-LLaVA), in Video-LLaVA's
template (`--conv-mode llava_v1`), with up to 1024 new tokens. A missing or unreadable video is an error
line, counted wrong: every question of the file is in every denominator (upstream skips such a question).

Scores (scores.json):
- `accuracy` and `score`: the paper's metric, Video-LLaVA's GPT judge (`llava.eval.video_judge`: yes/no
  and an integer 0-5 per question), once `python -m llava.eval.judge_run RUN_DIR ...` has judged every
  answer; None before (the run is then shown without a number), with `judge` saying how far it got.
- `offline`: always computed, and NOT the paper's metric: `exact_match`, the normalised answer equals the
  normalised prediction, and `contained`, the normalised answer appears in the normalised prediction as
  whole words (normalised as VQA answers are: lower case, punctuation and articles dropped, number words
  as digits). The ground truth is one word, often stemmed ("gras", "wildernes"), so both undercount.
- judge_input.jsonl: every question as Video-LLaVA's merge.jsonl ({id, question, answer, pred}), for its
  own eval_video_qa.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llava.errors import InputError
from llava.eval.common import (
    WHERE_FROM, Question, answer_text, checked_entries, normalize_vqa_answer, percent, questions_from, typed,
)
from llava.eval.video_judge import parse_reply, read_cached, read_judge_record, tally
from llava.jsonfile import is_json_type, read_json

ROOT = "GPT_Zero_Shot_QA"
QUESTION_FILES = {"": "test_q.json", "1k": "test_q_1k.json"}
JUDGE_INPUT = "judge_input.jsonl"
OFFLINE_NOTE = "not the paper's metric (the paper's is the GPT judge): normalised exact match and answer contained"


@dataclass(frozen=True)
class VideoSet:
    title: str
    folder: str  # under the data root
    video_folder: str  # in `folder`
    prefix: str = ""  # before video_name in the file name


SETS = {
    "msvd": VideoSet("MSVD-QA", f"{ROOT}/MSVD_Zero_Shot_QA", "videos"),
    "msrvtt": VideoSet("MSRVTT-QA", f"{ROOT}/MSRVTT_Zero_Shot_QA", "videos/all"),
    "tgif": VideoSet("TGIF-QA", f"{ROOT}/TGIF_Zero_Shot_QA", "mp4"),
    "activitynet": VideoSet("ActivityNet-QA", f"{ROOT}/Activitynet_Zero_Shot_QA", "all_test", prefix="v_"),
}


# ----------------------------------------------------------------------------- questions


def answer_file(question_file: Path) -> Path:
    """The answer file beside a question file: test_q*.json -> test_a*.json."""
    if not question_file.name.startswith("test_q"):
        raise InputError(f"cannot tell the answer file of {question_file}: a video QA question file is named "
                         "test_q*.json, beside its test_a*.json")
    return question_file.with_name("test_a" + question_file.name.removeprefix("test_q"))


def load_questions(question_file: Path, video_folder: Path, prefix: str = "") -> Iterator[Question]:
    """The set's questions, each with its ground truth (`fields['answer']`, from the answer entry at the same
    position) and its video path (`video_folder` / prefix + video_name, the extension found when read)."""
    questions = read_json(question_file, list, what="video QA questions", fix=WHERE_FROM)
    path = answer_file(question_file)
    truths = read_json(path, list, what="video QA answers", fix=WHERE_FROM)
    if len(truths) != len(questions):
        raise InputError(f"{path} holds {len(truths)} answers but {question_file} {len(questions)} questions: "
                         "the two files pair up by position and must be as long")
    checked_entries(path, "video QA answers", ((f"entry {i}", t) for i, t in enumerate(truths, 1)), _check_truth)
    for number, (record, truth) in enumerate(zip(questions, truths), 1):
        asked = record.get("question_id") if isinstance(record, dict) else None
        if is_json_type(asked, (int, str)) and "question_id" in truth and truth["question_id"] != asked:
            raise InputError(f"{path} entry {number} answers question_id {truth['question_id']!r} but "
                             f"{question_file.name} entry {number} is {asked!r}: the files do not pair up")

        def make(record: dict, truth=truth) -> Question:
            return Question(
                typed(record, "question_id", int, str), typed(record, "question", str),
                video=video_folder / (prefix + typed(record, "video_name", str)),
                fields={"answer": str(truth["answer"]), "type": truth.get("type")},
            )

        yield from questions_from(question_file, [(number, record)], make, place="entry")


def _check_truth(entry: dict) -> None:
    typed(entry, "answer", str, int, float)
    if "question_id" in entry:
        typed(entry, "question_id", int, str)


# ----------------------------------------------------------------------------- scores


def judged_pair(question: Question, prediction: str) -> dict:
    """What the judge is shown of one question, as eval_video_qa.py's qa_set: question, answer, prediction."""
    return {"q": question.text, "a": question.fields["answer"], "pred": prediction}


def offline_match(prediction: str | None, answer: str) -> tuple[bool, bool]:
    """(exact, contained) of one prediction against its one-word answer, both normalised (see the module)."""
    if prediction is None:
        return False, False
    predicted, expected = normalize_vqa_answer(prediction), normalize_vqa_answer(answer)
    exact = predicted == expected
    return exact, exact or (bool(expected) and f" {expected} " in f" {predicted} ")


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    exact = contained = 0
    for question in questions:
        if question.error is None:
            match = offline_match(answer_text(answers.get(question.key)), question.fields["answer"])
            exact, contained = exact + match[0], contained + match[1]
    write_judge_input(questions, answers, output_dir / JUDGE_INPUT)
    judge = judge_scores(questions, answers, output_dir)
    return {
        "accuracy": judge.pop("accuracy"), "score": judge.pop("score"), "questions": len(questions),
        "judge": judge,
        "offline": {"exact_match": percent(exact, len(questions)), "contained": percent(contained, len(questions)),
                    "metric": OFFLINE_NOTE},
        "judge_input": JUDGE_INPUT,
    }


def judge_scores(questions: list[Question], answers: dict, output_dir: Path) -> dict:
    """The GPT judge's Accuracy and Score over every question, from the replies cached for this run's judge
    (judge.json); both None until every answered question has a reply to its current answer."""
    record = read_judge_record(output_dir)
    if record is None:
        return {"accuracy": None, "score": None,
                "status": f"not judged: python -m llava.eval.judge_run {output_dir} --judge-url URL (EVAL.md)"}
    folder = output_dir / record["folder"]
    verdicts, answered_by, errors, waiting = [], set(), 0, 0
    for question in questions:
        prediction = answer_text(answers.get(question.key))
        if question.error or prediction is None:
            errors += 1  # no answer (an error line): wrong, score 0, never asked
            continue
        cached = read_cached(folder, question.question_id, question.occurrence, judged_pair(question, prediction))
        if cached is None:
            waiting += 1
            continue
        verdicts.append(parse_reply(cached["reply"]))
        if cached.get("model"):
            answered_by.add(cached["model"])
    counts = tally(verdicts, errors)
    if waiting:
        counts.update(accuracy=None, score=None)
    return {
        "accuracy": counts.pop("accuracy"), "score": counts.pop("score"),
        "model": record["model"], "answered_by": ", ".join(sorted(answered_by)) or None, "url": record.get("url"),
        "judged": len(verdicts), "not_judged": waiting, **counts,
        "status": "complete" if not waiting else f"{waiting} answers not judged yet: run the judge again",
    }


def write_judge_input(questions: list[Question], answers: dict, path: Path) -> None:
    """Every readable question as a line of Video-LLaVA's merge.jsonl: {id, question, answer, pred} (pred "" for
    an error line: upstream's judge then counts it, as we do). A malformed question entry has no line (it has no
    question or answer to show), though our scores count it wrong."""
    with open(path, "w", encoding="utf-8") as file:
        for question in questions:
            if question.error is None:
                pred = answer_text(answers.get(question.key)) or ""
                line = {"id": question.question_id, "question": question.text, "answer": question.fields["answer"],
                        "pred": pred}
                file.write(json.dumps(line, ensure_ascii=False) + "\n")
