"""What every benchmark shares: the Question record, JSONL reading and writing, images,
the VQA answer normaliser and soft accuracy, and option-letter parsing.

Each rule here is written once and used by every benchmark that needs it:

- `normalize_vqa_answer` and `vqa_soft_accuracy`: the standard VQA evaluation
  (TextVQA, VQAv2, VizWiz), as the EvalAI answer processor LLaVA's scorers use.
- `parse_option_letter`: the option letter in a multiple-choice answer, with the
  rules of LLaVA's ScienceQA scorer (ScienceQA, SEED-Bench, MMBench).

Answers are LLaVA's JSONL lines: `question_id`, `prompt`, `text`, `answer_id`,
`model_id`, `metadata`. An answer that could not be produced (missing or corrupt
image, prompt too long, unreadable question line) is still a line: `text` is ""
and `metadata.error` says why. Scorers count such an answer as wrong, never as
a free point.

Every question the file holds is in the denominator. A question the annotations
cannot grade (an unreadable line, or an id the annotations lack) is counted
wrong, and `not_in_annotations` says how many there were; in `accuracy_by` such
a question has group None: it counts in the overall number, in no group.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from llava.errors import InputError
from llava.jsonfile import is_json_type, json_type, kinds_named
from llava.mm_utils import decode_image, load_image

SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
WHERE_FROM = "see EVAL.md for where it comes from"  # said with an input file that is missing or broken


# ----------------------------------------------------------------------------- questions


@dataclass
class Question:
    """One question as the model is asked it.

    `text` is the user turn exactly as sent (without `<image>`: the pipeline puts
    `<image>\\n` in front, LLaVA-1.5's convention); it is also the answer line's
    `prompt`. `fields` holds what the benchmark's scorer needs (category, split, ...).
    `error` is set when the question itself could not be read (a malformed line).
    """

    question_id: int | str
    text: str
    image: Path | None = None
    image_base64: str | None = None  # MMBench: the image is inside the TSV
    video: Path | None = None  # video QA: the clip, as named (`open_video` finds its extension)
    fields: dict = field(default_factory=dict)
    error: str | None = None
    occurrence: int = 0  # > 0 only when the file repeats the same (question_id, text)

    def __post_init__(self):
        # The one check every loader shares: an id that cannot key an answer line, or a text that is
        # no string, is the question's own error (the loaders turn it into a malformed question).
        if not is_json_type(self.question_id, (int, str)):
            raise ValueError(f"field 'question_id' is {json_type(self.question_id)}, not a number or a string")
        if not isinstance(self.text, str):
            raise ValueError(f"the question text is {json_type(self.text)}, not a string")

    @property
    def key(self) -> tuple:
        """Identity of the question within a run (LLaVA's TextVQA and MME files reuse question_ids)."""
        return (self.question_id, self.text, self.occurrence)

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_base64 is not None


def answer_key(record: dict) -> tuple:
    """The key of the question an answer line belongs to (see `Question.key`)."""
    metadata = record.get("metadata") or {}
    return (record["question_id"], record.get("prompt", ""), metadata.get("occurrence", 0))


def number_repeats(questions: list[Question]) -> list[Question]:
    """Give repeated (question_id, text) pairs distinct occurrences, so every key is unique."""
    seen: dict[tuple, int] = {}
    for question in questions:
        pair = (question.question_id, question.text)
        question.occurrence = seen.get(pair, 0)
        seen[pair] = question.occurrence + 1
    return questions


def with_instruction(question: str, instruction: str) -> str:
    """`question` ending with `instruction` on its own line, as LLaVA-1.5's question files are written.

    LLaVA's published question files already end with the instruction; they are
    used as they are. A question written without it gets it appended.
    """
    question = question.strip()
    if question.endswith(instruction):
        return question
    return f"{question}\n{instruction}"


def without_instruction(text: str, instruction: str) -> str:
    """The question as its benchmark's annotations write it: `text` less a trailing instruction line."""
    return text[: -len(instruction)].rstrip() if text.endswith(instruction) else text


def read_jsonl_questions(path: Path, make_question) -> Iterator[Question]:
    """Questions from a JSONL file: `make_question(record)` per line; a bad line becomes an error record.

    A UTF-8 byte order mark before line 1 is skipped; a line that is not UTF-8 is a malformed question."""
    if not path.is_file():
        raise InputError(f"question file not found: {path} ({WHERE_FROM})")
    for number, record, problem in jsonl_values(path):
        if problem:
            yield malformed_question(path, number, problem)
        else:
            yield from questions_from(path, [(number, record)], make_question)


def jsonl_values(path: Path) -> Iterator[tuple[int, object, str | None]]:
    """(line number, JSON value, None) for each non-blank line of a JSONL file, or (line number, None,
    what is wrong) for a line that is not UTF-8 or not JSON. A UTF-8 byte order mark before line 1 is skipped."""
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                yield number, None, f"not UTF-8 text (byte {error.start + 1} of the line)"
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except ValueError as error:
                yield number, None, str(error)


def questions_from(path: Path, records: Iterable[tuple[int, object]], make_question, place: str = "line") -> Iterator[Question]:
    """`make_question(record)` (a Question or a list of them) for each (number, record) of a question file.

    The one place a question's fields are checked against what it needs: a record that is no
    JSON object, lacks a field or holds one of the wrong type becomes a malformed question at
    `place` `number` ("line 3", "entry 3"), counted wrong, never a crash of the run."""
    for number, record in records:
        try:
            if not isinstance(record, dict):
                raise ValueError(f"{json_type(record)}, not a JSON object")
            made = make_question(record)
            yield from made if isinstance(made, list) else [made]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            yield malformed_question(path, number, detail, record, place)


def read_llava_questions(question_file: Path, image_folder: Path, build_prompt, keep: tuple[str, ...] = ()):
    """LLaVA's question lines, {question_id, image, text, ...}: the text goes through the
    benchmark's `build_prompt`; `keep` names the line's fields its scorer needs."""

    def make(record: dict) -> Question:
        return Question(
            typed(record, "question_id", int, str), build_prompt(typed(record, "text", str)),
            image=image_folder / typed(record, "image", str), fields={name: record.get(name) for name in keep},
        )

    return read_jsonl_questions(question_file, make)


def malformed_question(path: Path, number: int, detail: str, record=None, place: str = "line") -> Question:
    """The error record of an unreadable question at `place` `number` of `path` ("line 3", "entry 3");
    the record's own question_id, when it has a readable one, is named in the message."""
    own_id = record.get("question_id") if isinstance(record, dict) else None
    named = f" (question_id {own_id!r})" if is_json_type(own_id, (int, str)) else ""
    return Question(
        question_id=f"{path.name}:{number}",
        text="",
        error=f"malformed question, {path.name} {place} {number}{named}: {detail}",
    )


# ----------------------------------------------------------------------------- input files and field types


def typed(record: dict, name: str, *kinds: type):
    """`record[name]`, checked to be of one of `kinds` (JSON's types); a missing field is a KeyError,
    one of another type a ValueError that names the field, what it holds and what it should."""
    value = record[name]
    if not is_json_type(value, kinds):
        raise ValueError(f"field '{name}' is {json_type(value)}, not {kinds_named(kinds)}")
    return value


def typed_list(record: dict, name: str, *kinds: type) -> list:
    """`record[name]`, checked to be a list whose every item is of one of `kinds`.

    A string is no list here: "abcd" is not four choices."""
    values = typed(record, name, list)
    for index, value in enumerate(values):
        if not is_json_type(value, kinds):
            raise ValueError(f"field '{name}' item {index + 1} is {json_type(value)}, not {kinds_named(kinds)}")
    return values


def read_checked_jsonl(path: Path, what: str, check) -> list[dict]:
    """Every line of a JSONL annotation file, each a JSON object passing `check`; any line that fails
    (not UTF-8, not JSON, another type, a field missing or of the wrong type) is a one-line InputError."""
    values = []
    for number, value, problem in jsonl_values(path):
        if problem:
            raise InputError(f"{what} {path}, line {number}: {problem}")
        values.append((f"line {number}", value))
    checked_entries(path, what, values, check)
    return [value for _, value in values]


def checked_entries(path: Path, what: str, entries: Iterable[tuple[str, object]], check) -> None:
    """Run `check(entry)` on each (name, entry) of an annotation file; the first failure is a one-line
    InputError naming the file, the entry and the field. Annotations grade every question, so a broken
    one is the file's error, found before the first question is answered."""
    for name, entry in entries:
        try:
            if not isinstance(entry, dict):
                raise ValueError(f"{json_type(entry)}, not a JSON object")
            check(entry)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            detail = f"lacks field {error}" if isinstance(error, KeyError) else str(error)
            raise InputError(f"{what} {path}, {name}: {detail}") from None


def read_jsonl(path: Path) -> list[dict]:
    """Every well-formed JSON line of a file (a line cut short by a kill is skipped)."""
    records = []
    if not path.is_file():
        return records
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


# ----------------------------------------------------------------------------- answers


class AnswerWriter:
    """Appends answer lines to a JSONL file, flushed one by one, so a killed run loses nothing it wrote.

    A line left half-written by a kill is cut off before appending, so the file
    stays valid JSONL.
    """

    def __init__(self, path: Path):
        self.path = path
        drop_partial_last_line(path)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def drop_partial_last_line(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(path)


def answer_text(record: dict | None) -> str | None:
    """The model's answer, or None when there is none (no line, or an error line)."""
    if record is None or (record.get("metadata") or {}).get("error"):
        return None
    return record.get("text", "")


# ----------------------------------------------------------------------------- images


def open_image(question: Question) -> Image.Image:
    """The question's image, read as `fastv run` reads one (`llava.mm_utils.decode_image`: EXIF
    orientation, 16-bit and float images, a pixel limit); a missing, corrupt, undecodable or too
    large image is an InputError naming it, which the runner writes as that question's error line."""
    if question.image_base64 is not None:
        try:
            source = io.BytesIO(base64.b64decode(question.image_base64))
        except (binascii.Error, ValueError) as error:
            raise InputError(f"cannot read the image of question {question.question_id}: not base64 ({error})")
        return decode_image(source, f"of question {question.question_id} (base64 in the question file)")
    return load_image(question.image)


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")  # Video-LLaVA's four, in its order, then two


def open_video(question: Question, num_frames: int | None = None):
    """The question's video (`llava.video.Video`: `num_frames` frames, the model's config.video.num_frames; None:
    Video-LLaVA's 8; Video-LLaVA's sampling), the file as named or the first of it with one of `VIDEO_EXTENSIONS`
    that exists; a missing, unreadable or too short video is an InputError naming it, which the runner writes as
    that question's error line."""
    from llava.video import NUM_FRAMES, read_video

    path = question.video
    found = next((p for p in (path, *(path.with_name(path.name + e) for e in VIDEO_EXTENSIONS)) if p.is_file()), None)
    if found is None:
        raise InputError(f"video not found: {path} (as named, or with {', '.join(VIDEO_EXTENSIONS)})")
    return read_video(found, num_frames or NUM_FRAMES)


# ----------------------------------------------------------------------------- VQA answers

# The standard VQA contractions table, written as the restored forms: the keys are
# each form with one apostrophe left out ("dont" -> "don't"; "couldnt've" and
# "couldn'tve" -> "couldn't've"). The official table's capitalised keys ("Im",
# "Ive") never match lower-cased text and are left out.
_CONTRACTED_FORMS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've
they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's
where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've
wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()
CONTRACTIONS = {
    form[:i] + form[i + 1:]: form for form in _CONTRACTED_FORMS for i, char in enumerate(form) if char == "'"
}
CONTRACTIONS["somebody'd"] = "somebodyd"  # sic: the official table maps this one backwards
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# "(?!<=\d)" is a look-ahead, not the look-behind it was meant to be: as released, a
# period is dropped unless a digit follows it ("3.5" stays, "5." -> "5").
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official processor calls periodStrip.sub("", text, re.UNICODE): re.UNICODE (32) lands in
# `count`, so at most the first 32 such periods go.
PERIOD_STRIP_COUNT = int(re.UNICODE)


def normalize_vqa_answer(answer: str) -> str:
    """The EvalAI VQA answer processor (used on predictions and on every human answer).

    "Two dogs." -> "2 dogs"; "the T-shirt" -> "t shirt"; "dont" -> "don't"; "3.5" stays.
    """
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _process_punctuation(text)
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def _process_punctuation(text: str) -> str:
    out = text
    for mark in PUNCTUATION:
        # next to a space the mark goes; inside a word it becomes a space ("t-shirt" -> "t shirt").
        # (The processor also drops every mark when digits are separated by commas, but
        # commas are already gone by then: "1,000" -> "1000".)
        if f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def vqa_soft_accuracy(prediction: str | None, human_answers: list[str]) -> float:
    """VQA accuracy of one prediction: the mean over the leave-one-out subsets of the
    human answers of min(1, matches / 3). With 10 answers: 1 match -> 0.3, 2 -> 0.6,
    3 -> 0.9, 4 or more -> 1.0. Both sides are normalised; None (no answer) scores 0.
    """
    if prediction is None or not human_answers:
        return 0.0
    predicted = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(a) for a in human_answers]
    matches = sum(h == predicted for h in humans)
    # leaving out a matching answer leaves matches - 1; leaving out another leaves matches
    total = matches * min(1.0, (matches - 1) / 3) + (len(humans) - matches) * min(1.0, matches / 3)
    return total / len(humans)


def vqa_accuracy(pairs: Iterable[tuple[str | None, list[str]]]) -> dict:
    """Benchmark VQA accuracy in percent over (prediction, human answers) pairs."""
    scores = [vqa_soft_accuracy(prediction, humans) for prediction, humans in pairs]
    return {"accuracy": percent(sum(scores), len(scores)), "questions": len(scores)}


# ----------------------------------------------------------------------------- multiple choice

OPTION_LETTERS = "ABCDE"
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_option_letter(answer: str | None, letters: str = OPTION_LETTERS) -> str | None:
    """The option letter an answer picks, by the rules of LLaVA's ScienceQA scorer, else None.

    "B" -> B; "B. Louisiana" -> B; "... The answer is B." -> B (only if said once);
    anything else ("BC", "", a letter not in `letters`) -> None (counted wrong).
    """
    if answer is None:
        return None
    answer = answer.strip()
    if len(answer) == 1:  # one letter, not any substring of `letters` ("BC" in "ABCD")
        letter = answer
    elif len(answer) >= 3 and answer[0] in letters and answer[1:3] == ". ":
        letter = answer[0]
    else:
        found = _THE_ANSWER_IS.findall(answer)
        letter = found[0] if len(found) == 1 else None
    return letter if letter and letter in letters else None


# ----------------------------------------------------------------------------- numbers and tables


def percent(part: float, whole: float) -> float | None:
    """100 * part / whole; None (shown "-") when there is nothing to take a share of, never 0.0."""
    return 100.0 * part / whole if whole else None


def accuracy_by(groups: Iterable[tuple[str | None, bool]]) -> dict:
    """{"accuracy": overall %, "questions": n, "groups": {group: %}} from (group, correct) pairs.

    A pair with group None (a question no annotation grades) counts in the overall number only.
    """
    right: dict[str | None, int] = {}
    count: dict[str | None, int] = {}
    for group, correct in groups:
        count[group] = count.get(group, 0) + 1
        right[group] = right.get(group, 0) + bool(correct)
    return {
        "accuracy": percent(sum(right.values()), sum(count.values())),
        "questions": sum(count.values()),
        "groups": {group: percent(right[group], count[group]) for group in count if group is not None},
    }


def format_table(metrics: dict, title: str = "") -> str:
    """A readable plain-text table: scalars as `name  value` rows; a dict of dicts as a grid."""
    lines = [title, "=" * len(title)] if title else []
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    width = max((len(k) for k in scalars), default=0)
    for name, value in scalars.items():
        lines.append(f"{name:<{width}}  {_cell(value)}")
    for name, value in metrics.items():
        if not isinstance(value, dict) or not value:
            continue
        lines.append("")
        if all(isinstance(v, dict) for v in value.values()):
            columns = list(dict.fromkeys(c for row in value.values() for c in row))
            rows = [[str(r)] + [_cell(value[r].get(c)) for c in columns] for r in value]
            header = [name] + columns
            widths = [max(len(x) for x in col) for col in zip(header, *rows)]
            lines.extend("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [header, *rows])
        else:
            lines.append(f"{name}:")
            inner = max(len(str(k)) for k in value)
            lines.extend(f"  {str(k):<{inner}}  {_cell(v)}" for k, v in value.items())
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)
