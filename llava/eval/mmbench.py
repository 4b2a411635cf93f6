"""MMBench and MMBench-CN (dev, single round): option-letter accuracy and the leaderboard's submission file.

Files (under `<data root>/mmbench/`):
    mmbench_dev_20230712.tsv      English dev set; columns index, question, hint, A..D, answer,
    mmbench_dev_cn_20231003.tsv   category, image (base64), source, l2-category, comment, split

The prompt is LLaVA's `model_vqa_mmbench --single-pred-prompt`, one round (options
in their published order): the hint (if any) and the question, one "A. ..." line
per option up to the first empty one, then the instruction ("请直接回答选项字母。"
for the Chinese set). Dev accuracy is computed where `answer` is present; the
submission spreadsheet the leaderboard takes (LLaVA's convert_mmbench_for_submission:
the TSV less hint/category/source/image/comment/l2-category, with a `prediction`
column) is written as `<set>_submission.xlsx` in the run directory.
"""

from __future__ import annotations

import csv
import sys
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

from llava.errors import InputError
from llava.eval.common import MULTIPLE_CHOICE, Question, accuracy_by, answer_text, malformed_question, parse_option_letter

FOLDER = "mmbench"
QUESTION_FILES = {"en": "mmbench_dev_20230712.tsv", "cn": "mmbench_dev_cn_20231003.tsv"}
INSTRUCTIONS = {"en": MULTIPLE_CHOICE, "cn": "请直接回答选项字母。"}
OPTIONS = "ABCD"
DROPPED_FOR_SUBMISSION = ("hint", "category", "source", "image", "comment", "l2-category")


def is_none(value: str | None) -> bool:
    """An empty cell, as pandas reads it (NaN) or as written out ('nan', 'none')."""
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


def build_prompt(row: dict, lang: str = "en") -> str:
    question = row["question"]
    if not is_none(row.get("hint")):
        question = f"{row['hint']}\n{question}"
    for letter in OPTIONS:
        if is_none(row.get(letter)):
            break
        question += f"\n{letter}. {row[letter]}"
    return f"{question}\n{INSTRUCTIONS[lang]}"


def read_tsv(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"MMBench file not found: {path} (see EVAL.md for where it comes from)")
    limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images are larger than csv's default cell limit
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:  # -sig: a byte order mark is not in the header
            return list(csv.DictReader(file, delimiter="\t"))
    except UnicodeDecodeError as error:
        raise InputError(f"MMBench file {path} is not UTF-8 text (byte {error.start + 1} of a block)") from None
    except csv.Error as error:
        raise InputError(f"MMBench file {path} is not a readable TSV: {error}") from None
    finally:
        csv.field_size_limit(limit)


def load_questions(question_file: Path, image_folder: Path | None, lang: str = "en"):
    for number, row in enumerate(read_tsv(question_file), start=2):  # line 1 is the header
        try:
            index = int(row["index"])
            options = "".join(letter for letter in OPTIONS if not is_none(row.get(letter)))
            yield Question(
                index, build_prompt(row, lang), image_base64=row["image"] or "",  # empty: an error, not a text-only question
                fields={"answer": row.get("answer"), "category": row.get("category") or "", "options": options},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            yield malformed_question(question_file, number, f"bad row ({error})")


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path, lang: str = "en") -> dict:
    question_file = folder / QUESTION_FILES[lang]
    graded = []
    predictions = {}
    for question in questions:
        text = answer_text(answers.get(question.key))
        predictions[question.question_id] = text or ""
        truth = question.fields.get("answer")
        if question.error is not None:  # an unreadable row: counted wrong, in no category
            graded.append((None, False))
        elif not is_none(truth):
            graded.append((question.fields["category"], parse_option_letter(text, question.fields["options"]) == truth.strip()))
    name = Path(QUESTION_FILES[lang]).stem + "_submission.xlsx"
    write_submission(read_tsv(question_file), predictions, output_dir / name)
    result = accuracy_by(graded)
    return {"accuracy": result["accuracy"] if graded else None, "questions_with_answer": len(graded),
            "categories": result["groups"], "submission_file": name}


def write_submission(rows: list[dict], predictions: dict, path: Path) -> None:
    """The leaderboard's spreadsheet: TSV columns less the dropped ones, `prediction` inserted as the 7th."""
    columns = [c for c in (rows[0].keys() if rows else []) if c not in DROPPED_FOR_SUBMISSION]
    columns.insert(min(6, len(columns)), "prediction")
    table = [columns]
    for row in rows:
        try:
            index = int(row["index"])
        except (KeyError, ValueError):
            continue
        values = {c: None if is_none(v) else v for c, v in row.items()}  # empty cells, as pandas writes NaN
        values.update(index=index, prediction=predictions.get(index))
        table.append([values.get(c) for c in columns])
    write_xlsx(path, table)


def write_xlsx(path: Path, table: list[list]) -> None:
    """A one-sheet .xlsx (Office Open XML: inline strings, ints as numbers, None as an empty cell), without openpyxl."""

    def cell(column: int, row: int, value) -> str:
        ref = f"{_column_name(column)}{row}"
        if value is None:
            return ""
        if isinstance(value, int):
            return f'<c r="{ref}"><v>{value}</v></c>'
        text = escape(_xml_safe(str(value)))
        return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{text}</t></is></c>'

    rows = "".join(
        f'<row r="{r + 1}">' + "".join(cell(c, r + 1, v) for c, v in enumerate(values)) + "</row>"
        for r, values in enumerate(table)
    )
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    relationships = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    parts = {
        "[Content_Types].xml": (
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>'
        ),
        "_rels/.rels": (
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{relationships}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<workbook xmlns="{main}" xmlns:r="{relationships}"><sheets>'
            '<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{relationships}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>'
        ),
        "xl/worksheets/sheet1.xml": f'<worksheet xmlns="{main}"><sheetData>{rows}</sheetData></worksheet>',
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, xml in parts.items():
            archive.writestr(name, '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + xml)


def _column_name(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        name = chr(ord("A") + remainder) + name
    return name


def _xml_safe(text: str) -> str:
    return "".join(ch for ch in text if ch in "\t\n\r" or ord(ch) >= 0x20)
