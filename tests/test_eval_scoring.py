"""Every scorer on small hand-made files in its benchmark's real format; the expected
scores are worked out by hand in the comments."""

import json
import zipfile
from pathlib import Path

import pytest

from llava.eval import gqa, llavabench, mmbench, mme, mmvet, pope, scienceqa, seed, textvqa, vizwiz, vqav2
from llava.eval.common import normalize_vqa_answer, parse_option_letter, vqa_soft_accuracy
from tests.eval_fakes import image_base64, write_json, write_jsonl

SHORT = "Answer the question using a single word or phrase."
CHOICE = "Answer with the option's letter from the given choices directly."


def answers_for(questions, texts):
    """Answer lines keyed as the runner keys them; None stands for an error line."""
    lines = {}
    for question, text in zip(questions, texts):
        metadata = {"error": "image not found: x.jpg"} if text is None else {}
        lines[question.key] = {"question_id": question.question_id, "prompt": question.text, "text": text or "",
                               "metadata": metadata}
    return lines


# ----------------------------------------------------------------------------- VQA normalisation


@pytest.mark.parametrize("raw, normalised", [
    ("Two dogs.", "2 dogs"),  # number word, final period
    ("The T-shirt", "t shirt"),  # article; hyphen inside a word becomes a space
    ("hello - world", "hello world"),  # a mark next to a space is dropped
    ("dont", "don't"),  # contraction restored
    ("isnt", "isn't"),
    ("couldnt've", "couldn't've"),  # two-apostrophe form, either apostrophe left out
    ("couldn'tve", "couldn't've"),
    ("3.5", "3.5"),  # a period followed by a digit stays
    ("5.", "5"),
    ("u.s.a.", "usa"),
    ("1,000", "1000"),  # commas go
    ("Yes!", "yes"),
    ("(left)", "left"),
    ("red/white", "red white"),
    ("a/b", "b"),  # the slash becomes a space, then "a" is an article
    ("man's hat", "man 's hat"),  # the processor splits the possessive
    ("an apple", "apple"),
    ("none", "0"),
    ("Line one\nline\ttwo", "line 1 line 2"),
    ("Im here", "im here"),  # the official table's "Im" key is capitalised and never matches
    ("." * 40, "." * 8),  # the official re.sub passes re.UNICODE (32) as its count: at most 32 periods go
    ("a." * 33, "a" * 32 + "a."),
])
def test_vqa_normalisation(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def test_vqa_soft_accuracy_by_number_of_matching_humans():
    others = ["x"] * 10
    for matches, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        humans = ["cat"] * matches + others[matches:]
        assert vqa_soft_accuracy("Cat.", humans) == pytest.approx(expected)
    assert vqa_soft_accuracy(None, ["cat"] * 10) == 0.0  # an error line scores nothing


@pytest.mark.parametrize("answer, letters, letter", [
    ("B", "ABCD", "B"),
    ("B. Louisiana", "ABCD", "B"),
    ("Because of the heat. The answer is C.", "ABCD", "C"),
    ("The answer is A. The answer is B.", "ABCD", None),  # said twice: no answer
    ("E", "ABCD", None),  # not one of this question's options
    ("B.Louisiana", "ABCD", None),  # LLaVA's rule wants ". " after the letter
    ("Louisiana", "ABCD", None),
    (None, "ABCD", None),
    ("BC", "ABCD", None),  # two letters are no answer (a substring of "ABCD" is not one letter)
    ("ABCD", "ABCD", None),
    ("", "ABCD", None),
    ("  C ", "ABCD", "C"),
])
def test_option_letter(answer, letters, letter):
    assert parse_option_letter(answer, letters) == letter


# ----------------------------------------------------------------------------- benchmarks


def test_textvqa(tmp_path):
    folder = tmp_path / "textvqa"
    ocr = "Reference OCR token: nikon, 2"
    write_jsonl(folder / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "img0", "image": "img0.jpg", "text": f"what brand is this?\n{ocr}\n{SHORT}"},
        {"question_id": "img0", "image": "img0.jpg", "text": f"how many lenses?\n{ocr}\n{SHORT}"},  # same image
        {"question_id": "img1", "image": "img1.jpg", "text": f"what does it say?\n{ocr}\n{SHORT}"},
        {"question_id": 7, "image": "img2.jpg", "text": f"what color?\n{ocr}\n{SHORT}"},  # numeric id
    ])
    write_json(folder / "TextVQA_0.5.1_val.json", {"data": [
        {"question_id": 1, "image_id": "img0", "question": "What brand is this?", "answers": ["nikon"] * 3 + ["canon"] * 7},
        {"question_id": 2, "image_id": "img0", "question": "how many lenses?", "answers": ["2"] * 10},
        {"question_id": 3, "image_id": "img1", "question": "what does it say?", "answers": ["stop"] + ["go"] * 9},
        {"question_id": 7, "image_id": "img2", "question": "what color?", "answers": ["red"] * 10},
    ]})
    questions = list(textvqa.load_questions(folder / "llava_textvqa_val_v051_ocr.jsonl", folder / "train_images"))
    answers = answers_for(questions, ["Nikon.", "two", "STOP!", None])
    # nikon: 3 humans -> 0.9; "two" -> "2": 10 humans -> 1.0; stop: 1 human -> 0.3; error -> 0
    result = textvqa.score(questions, answers, folder, tmp_path)
    assert result["accuracy"] == pytest.approx(100 * (0.9 + 1.0 + 0.3 + 0.0) / 4)  # 55.0
    assert result["questions"] == 4 and result["not_in_annotations"] == 0


def test_pope(tmp_path):
    folder = tmp_path / "pope"
    q = "Is there a {} in the image?"
    rows = [  # (split, image, object, label, answer)
        ("adversarial", "a.jpg", "dog", "yes", "Yes, there is a dog."),
        ("adversarial", "b.jpg", "dog", "yes", "No."),
        ("adversarial", "c.jpg", "cat", "no", "There is not a cat."),
        ("adversarial", "d.jpg", "cat", "no", "Yes"),
        ("popular", "a.jpg", "car", "yes", "Yes. No cat though."),  # first sentence only: yes
        ("popular", "b.jpg", "car", "no", "nope"),  # no "no" word: yes
        ("random", "a.jpg", "bus", "yes", None),  # error: counts as the wrong answer, "no"
        ("random", "b.jpg", "bus", "no", "No, not at all"),
    ]
    write_jsonl(folder / "llava_pope_test.jsonl", [
        {"question_id": i, "image": image, "text": f"{q.format(obj)}\n{SHORT}", "category": split}
        for i, (split, image, obj, _, _) in enumerate(rows)
    ])
    for split in ("adversarial", "popular", "random"):
        labels = [{"question_id": i, "image": image, "text": q.format(obj), "label": label}
                  for i, (s, image, obj, label, _) in enumerate(rows) if s == split]
        write_jsonl(folder / "coco" / f"coco_pope_{split}.json", labels[::-1])  # other order: matched by content
    questions = list(pope.load_questions(folder / "llava_pope_test.jsonl", folder / "val2014"))
    result = pope.score(questions, answers_for(questions, [r[4] for r in rows]), folder, tmp_path)
    adversarial, popular, random = (result["splits"][s] for s in ("adversarial", "popular", "random"))
    # adversarial: TP 1, FN 1, TN 1, FP 1 -> every metric 50
    assert (adversarial["TP"], adversarial["FN"], adversarial["TN"], adversarial["FP"]) == (1, 1, 1, 1)
    assert adversarial["f1"] == pytest.approx(50) and adversarial["yes_ratio"] == pytest.approx(50)
    # popular: TP 1, FP 1 -> precision 50, recall 100, F1 2*50*100/150 = 66.67, yes ratio 100
    assert popular["precision"] == pytest.approx(50) and popular["recall"] == pytest.approx(100)
    assert popular["f1"] == pytest.approx(200 / 3) and popular["yes_ratio"] == pytest.approx(100)
    # random: FN 1 (the error), TN 1 -> precision 0 (no yes at all), F1 0, accuracy 50
    assert (random["f1"], random["accuracy"], random["yes_ratio"]) == (0.0, 50.0, 0.0)
    assert result["f1"] == pytest.approx((50 + 200 / 3 + 0) / 3)  # 38.89


def _mme_files(release: Path, subtask: str, image: str, questions: list[tuple[str, str]], in_images_folder=False):
    folder = release / subtask
    answers_folder = folder / "questions_answers_YN" if in_images_folder else folder
    if in_images_folder:
        (folder / "images").mkdir(parents=True, exist_ok=True)
    answers_folder.mkdir(parents=True, exist_ok=True)
    (answers_folder / (Path(image).stem + ".txt")).write_text("".join(f"{q}\t{a}\n" for q, a in questions))


def test_mme(tmp_path):
    folder = tmp_path / "MME"
    release = folder / "MME_Benchmark_release_version"
    yes_q, no_q = "Is there a cat? Please answer yes or no.", "Is there a car? Please answer yes or no."
    _mme_files(release, "existence", "1.jpg", [(yes_q, "Yes"), (no_q, "No")])
    _mme_files(release, "existence", "2.jpg", [(yes_q, "Yes"), (no_q, "No")])
    _mme_files(release, "count", "3.jpg", [("Are there two dogs? Please answer yes or no.", "Yes"),
                                           ("Are there five dogs?  Please answer yes or no.", "No")])  # MME's double space
    _mme_files(release, "artwork", "4.jpg", [(yes_q, "Yes"), (no_q, "No")], in_images_folder=True)
    _mme_files(release, "code_reasoning", "5.png", [(yes_q, "Yes"), (no_q, "No")])
    lines, texts = [], []
    for subtask, image, question, answer in [
        ("existence", "existence/1.jpg", yes_q, "Yes"),
        ("existence", "existence/1.jpg", no_q, "No, there is not."),  # "no" within the first 4 characters
        ("existence", "existence/2.jpg", yes_q, "yes"),
        ("existence", "existence/2.jpg", no_q, "Yes"),  # wrong
        ("count", "count/3.jpg", "Are there two dogs? Please answer yes or no.", "There are two"),  # neither: wrong
        ("count", "count/3.jpg", "Are there five dogs? Please answer yes or no.", "no"),
        ("artwork", "artwork/images/4.jpg", yes_q, "Yes"),
        ("artwork", "artwork/images/4.jpg", no_q, "No"),
        ("code_reasoning", "code_reasoning/5.png", yes_q, "Yes"),
        ("code_reasoning", "code_reasoning/5.png", no_q, "No"),
    ]:
        lines.append({"question_id": image, "image": image, "text": f"{question}\n{SHORT}", "category": subtask})
        texts.append(answer)
    write_jsonl(folder / "llava_mme.jsonl", lines)
    from llava.eval.common import number_repeats

    questions = number_repeats(list(mme.load_questions(folder / "llava_mme.jsonl", release)))
    result = mme.score(questions, answers_for(questions, texts), folder, tmp_path)
    subtasks = result["subtasks"]
    # existence: 3 of 4 right = 75; image 1 both right, image 2 not: acc+ 50 -> 125
    assert (subtasks["existence"]["acc"], subtasks["existence"]["acc_plus"]) == (75.0, 50.0)
    # count: 1 of 2 = 50, acc+ 0 -> 50; artwork (annotations in questions_answers_YN/): 200
    assert subtasks["count"]["score"] == 50.0 and subtasks["artwork"]["score"] == 200.0
    assert result["perception"] == 125 + 50 + 200
    assert result["cognition"] == 200.0


def test_gqa(tmp_path):
    folder = tmp_path / "gqa"
    texts = ["Is it overcast?", "What is on the table?", "Where is the cup?", "What color is it?", "Who is it?"]
    write_jsonl(folder / "llava_gqa_testdev_balanced.jsonl",
                [{"question_id": str(100 + i), "image": "n1.jpg", "text": f"{t}\n{SHORT}"} for i, t in enumerate(texts)])
    write_json(folder / "data/testdev_balanced_questions.json",
               {"100": {"answer": "yes"}, "101": {"answer": "cup"}, "102": {"answer": "table"},
                "103": {"answer": "blue"}, "104": {"answer": "man"}})
    questions = list(gqa.load_questions(folder / "llava_gqa_testdev_balanced.jsonl", folder / "data/images"))
    answers = answers_for(questions, ["Yes.", "Cup", "the table", "blue..", None])
    # "Yes." -> yes (right); "Cup" -> cup (right); "the table" (no article removal: wrong);
    # "blue.." -> blue (right); error (wrong): 3 of 5 = 60
    result = gqa.score(questions, answers, folder, tmp_path)
    assert result["accuracy"] == pytest.approx(60.0)
    predictions = json.loads((tmp_path / "testdev_balanced_predictions.json").read_text())
    assert predictions[0] == {"questionId": "100", "prediction": "yes"} and predictions[4]["prediction"] == ""


def test_scienceqa(tmp_path):
    folder = tmp_path / "scienceqa"
    problems = {  # id: (choices, answer index, has image, model answer)
        "1": (["x", "y", "z"], 1, True, "B"),
        "2": (["x", "y"], 0, True, "A. x"),
        "3": (["w", "x", "y", "z"], 2, False, "Hmm. The answer is C."),
        "4": (["x", "y"], 1, True, "C"),  # not one of two options: unparsed, wrong
        "5": (["x", "y"], 0, False, "The answer is A. The answer is B."),  # two answers: unparsed, wrong
    }
    records = []
    for pid, (choices, _, has_image, _) in problems.items():
        record = {"id": pid, "conversations": [{"from": "human", "value": f"<image>\nQuestion: q{pid}?\nOptions: ..."}]}
        if has_image:
            record["image"] = f"{pid}/image.png"
        records.append(record)
    write_json(folder / "llava_test_CQM-A.json", records)
    write_json(folder / "problems.json", {pid: {"choices": c, "answer": a} for pid, (c, a, _, _) in problems.items()})
    questions = list(scienceqa.load_questions(folder / "llava_test_CQM-A.json", folder / "images/test"))
    result = scienceqa.score(questions, answers_for(questions, [p[3] for p in problems.values()]), folder, tmp_path)
    # right: 1, 2, 3 -> 3 of 5 = 60; with an image: 1, 2 right, 4 wrong -> 2 of 3 = 66.67
    assert result["accuracy"] == pytest.approx(60.0)
    assert result["img_accuracy"] == pytest.approx(200 / 3)
    assert (result["img_questions"], result["unparsed_answers"]) == (3, 2)


def test_seed(tmp_path):
    folder = tmp_path / "seed_bench"
    text = f"How many?\nA. One\nB. Two\nC. Three\nD. Four\n{CHOICE}"
    write_jsonl(folder / "llava-seed-bench.jsonl", [
        {"question_id": str(i), "image": f"SEED-Bench-image/{i}.jpg", "text": text} for i in range(4)
    ] + [{"question_id": "9", "image": "SEED-Bench-video-image/9.png", "text": text}])  # video: left out
    write_json(folder / "SEED-Bench.json", {
        "question_type": {"Scene Understanding": 1, "Instance Identity": 2},
        "questions": [{"question_id": str(i), "answer": a, "question_type_id": t, "data_type": "image"}
                      for i, (a, t) in enumerate([("A", 1), ("B", 1), ("C", 2), ("A", 2)])]})
    questions = list(seed.load_questions(folder / "llava-seed-bench.jsonl", folder))
    assert [q.question_id for q in questions] == ["0", "1", "2", "3"]
    result = seed.score(questions, answers_for(questions, ["A", "B. Two", "D", None]), folder, tmp_path)
    # Scene Understanding: both right = 100 ("B. Two" parses to B); Instance Identity: both wrong = 0; overall 50
    assert result["accuracy"] == pytest.approx(50.0)
    assert result["dimensions"] == {"Scene Understanding": 100.0, "Instance Identity": 0.0}


def _mmbench_tsv(path: Path) -> None:
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "comment", "split"]
    rows = [
        ["0", "Which is red?", "Look closely.", "apple", "sky", "nan", "nan", "A", "color", image_base64(0), "s", "l", "nan", "dev"],
        ["1", "Which is green?", "nan", "apple", "sky", "grass", "nan", "C", "color", image_base64(1), "s", "l", "nan", "dev"],
        ["2", "Which is blue?", "", "apple", "grass", "sky", "", "C", "scene", image_base64(2), "s", "l", "nan", "dev"],
        ["3", "Which is up?", "nan", "sky", "ground", "nan", "nan", "", "scene", image_base64(3), "s", "l", "nan", "test"],
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")


def test_mmbench_accuracy_and_submission(tmp_path):
    folder = tmp_path / "mmbench"
    _mmbench_tsv(folder / "mmbench_dev_20230712.tsv")
    questions = list(mmbench.load_questions(folder / "mmbench_dev_20230712.tsv", None))
    answers = answers_for(questions, ["A", "C. grass", "D", "A"])
    result = mmbench.score(questions, answers, folder, tmp_path)
    # with an answer: 0 right, 1 right ("C. grass"), 2 wrong (D is not one of its 3 options); 3 has none
    assert result["accuracy"] == pytest.approx(200 / 3) and result["questions_with_answer"] == 3
    assert result["categories"] == {"color": 100.0, "scene": 0.0}
    sheet = _read_xlsx(tmp_path / "mmbench_dev_20230712_submission.xlsx")
    assert sheet[0] == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert sheet[2] == ["1", "Which is green?", "apple", "sky", "grass", "", "C. grass", "C", "dev"]  # "nan": empty
    assert len(sheet) == 5


def _read_xlsx(path: Path) -> list[list[str]]:
    """Cell texts of the sheet our writer makes (inline strings and numbers)."""
    import xml.etree.ElementTree as ET

    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(path) as archive:
        assert {"[Content_Types].xml", "xl/workbook.xml", "xl/worksheets/sheet1.xml"} <= set(archive.namelist())
        root = ET.fromstring(archive.read("xl/worksheets/sheet1.xml"))
    table = []
    for row in root.iter(f"{{{ns['m']}}}row"):
        cells = {"".join(filter(str.isalpha, c.get("r"))): "".join(c.itertext()) for c in row.findall("m:c", ns)}
        table.append([cells.get(column, "") for column in "ABCDEFGHI"])
    return table


def test_vqav2_submission_covers_every_test_question(tmp_path):
    folder = tmp_path / "vqav2"
    write_jsonl(folder / "llava_vqav2_mscoco_test-dev2015.jsonl",
                [{"question_id": i, "image": f"{i}.jpg", "text": f"How many?\n{SHORT}"} for i in (1, 2)])
    write_jsonl(folder / "llava_vqav2_mscoco_test2015.jsonl", [{"question_id": i} for i in (1, 2, 3)])
    questions = list(vqav2.load_questions(folder / "llava_vqav2_mscoco_test-dev2015.jsonl", folder / "test2015"))
    result = vqav2.score(questions, answers_for(questions, ["Two.", None]), folder, tmp_path)
    submission = json.loads((tmp_path / "vqav2_test-dev_submission.json").read_text())
    assert submission == [{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": ""},
                          {"question_id": 3, "answer": ""}]  # 3 was not asked: "" as LLaVA writes it
    assert result["accuracy"] is None and result["answered"] == 1


def test_vqav2_val_accuracy(tmp_path):
    folder = tmp_path / "vqav2"
    write_json(folder / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": [
        {"question_id": 11, "image_id": 42, "question": "What sport?"},
        {"question_id": 12, "image_id": 42, "question": "How many people?"}]})
    write_json(folder / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": 11, "answers": [{"answer": a} for a in ["tennis"] * 2 + ["golf"] * 8]},
        {"question_id": 12, "answers": [{"answer": a} for a in ["3"] * 10]}]})
    questions = list(vqav2.load_val_questions(folder / "v2_OpenEnded_mscoco_val2014_questions.json", folder / "val2014"))
    assert questions[0].image.name == "COCO_val2014_000000000042.jpg"
    assert questions[0].text == f"What sport?\n{SHORT}"
    result = vqav2.score_val(questions, answers_for(questions, ["Tennis", "three"]), folder, tmp_path)
    assert result["accuracy"] == pytest.approx(100 * (0.6 + 1.0) / 2)  # 2 humans -> 0.6; "three" -> "3": 1.0


def test_vizwiz_submission_and_val(tmp_path):
    folder = tmp_path / "vizwiz"
    tail = f"When the provided information is insufficient, respond with 'Unanswerable'.\n{SHORT}"
    write_jsonl(folder / "llava_test.jsonl", [
        {"question_id": 0, "image": "VizWiz_test_00000000.jpg", "text": f"What is this?\n{tail}"},
        {"question_id": 1, "image": "VizWiz_test_00000001.jpg", "text": f"What color?\n{tail}"}])
    questions = list(vizwiz.load_questions(folder / "llava_test.jsonl", folder / "test"))
    vizwiz.score(questions, answers_for(questions, ["A can of Coke.", "Unanswerable"]), folder, tmp_path)
    assert json.loads((tmp_path / "vizwiz_test_submission.json").read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "can of coke"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "unanswerable"}]
    write_json(folder / "val.json", [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is it?",
         "answers": [{"answer": "soup", "answer_confidence": "yes"}] * 3 + [{"answer": "can"}] * 7}])
    val = list(vizwiz.load_val_questions(folder / "val.json", folder / "val"))
    assert vizwiz.score_val(val, answers_for(val, ["Soup"]), folder, tmp_path)["accuracy"] == pytest.approx(90.0)


def test_mmvet_and_llavabench_write_the_judges_input_and_no_score(tmp_path):
    folder = tmp_path / "mm-vet"
    write_jsonl(folder / "llava-mm-vet.jsonl", [{"question_id": i, "image": f"v1_{i}.png", "text": "What is x?"}
                                                for i in (0, 1)])
    questions = list(mmvet.load_questions(folder / "llava-mm-vet.jsonl", folder / "images"))
    result = mmvet.score(questions, answers_for(questions, ["x = 3", None]), folder, tmp_path)
    assert result["score"] is None
    assert json.loads((tmp_path / "mmvet_results.json").read_text()) == {"v1_0": "x = 3", "v1_1": ""}
    folder = tmp_path / "llava-bench-in-the-wild"
    write_jsonl(folder / "questions.jsonl", [{"question_id": 0, "image": "001.jpg", "text": "Describe it.",
                                              "category": "detail"}])
    questions = list(llavabench.load_questions(folder / "questions.jsonl", folder / "images"))
    assert llavabench.score(questions, {}, folder, tmp_path)["score"] is None


# ----------------------------------------------------------------------------- every question counts


def test_percent_of_nothing_is_no_number():
    from llava.eval.common import accuracy_by, percent

    assert percent(1, 4) == 25.0 and percent(0, 0) is None
    assert accuracy_by([]) == {"accuracy": None, "questions": 0, "groups": {}}
    # a question no annotation grades (group None) counts wrong overall, in no group
    assert accuracy_by([("a", True), (None, False)]) == {"accuracy": 50.0, "questions": 2, "groups": {"a": 100.0}}


def test_scienceqa_two_letters_are_wrong_and_an_unknown_id_counts(tmp_path):
    folder = tmp_path / "scienceqa"
    write_json(folder / "llava_test_CQM-A.json", [
        {"id": pid, "conversations": [{"from": "human", "value": f"Question: q{pid}?"}]} for pid in ("1", "2", "3")
    ] + [{"id": "4"}])  # no conversations: unreadable
    write_json(folder / "problems.json", {"1": {"choices": ["x", "y", "z"], "answer": 1},
                                          "2": {"choices": ["x", "y", "z"], "answer": 2}})
    questions = list(scienceqa.load_questions(folder / "llava_test_CQM-A.json", folder / "images/test"))
    result = scienceqa.score(questions, answers_for(questions, ["BC", "C", "A", None]), folder, tmp_path)
    # "BC" is no option (was scored as B, right); "C" right; "3" is not in problems.json and the
    # fourth entry is unreadable: both wrong. 1 of 4 = 25, no question with an image: no number
    assert result["accuracy"] == pytest.approx(25.0) and result["questions"] == 4
    assert (result["not_in_problems"], result["unparsed_answers"], result["img_accuracy"]) == (2, 1, None)


def test_seed_and_mmbench_refuse_two_letters(tmp_path):
    folder = tmp_path / "seed_bench"
    text = f"How many?\nA. One\nB. Two\nC. Three\nD. Four\n{CHOICE}"
    write_jsonl(folder / "llava-seed-bench.jsonl",
                [{"question_id": str(i), "image": f"SEED-Bench-image/{i}.jpg", "text": text} for i in range(3)])
    write_json(folder / "SEED-Bench.json", {
        "question_type": {"Scene Understanding": 1},
        "questions": [{"question_id": str(i), "answer": "B", "question_type_id": 1, "data_type": "image"}
                      for i in range(2)]})
    questions = list(seed.load_questions(folder / "llava-seed-bench.jsonl", folder))
    result = seed.score(questions, answers_for(questions, ["AB", "B", "B"]), folder, tmp_path)
    # "AB" wrong, "B" right, the third is not in the annotations: wrong. 1 of 3
    assert result["accuracy"] == pytest.approx(100 / 3) and result["questions"] == 3
    assert result["not_in_annotations"] == 1 and result["dimensions"] == {"Scene Understanding": 50.0}

    folder = tmp_path / "mmbench"
    _mmbench_tsv(folder / "mmbench_dev_20230712.tsv")
    questions = list(mmbench.load_questions(folder / "mmbench_dev_20230712.tsv", None))
    truths = [q.fields["answer"] for q in questions]
    both = [t + ("A" if t != "A" else "B") for t in truths]  # the right letter and another
    result = mmbench.score(questions, answers_for(questions, both), folder, tmp_path)
    assert result["accuracy"] == 0.0


def test_mme_puts_back_the_yes_no_suffix_and_counts_an_unknown_question_wrong(tmp_path):
    folder = tmp_path / "MME"
    release = folder / "MME_Benchmark_release_version"
    _mme_files(release, "existence", "1.jpg", [("Is there a cat? Please answer yes or no.", "Yes"),
                                               ("Is there a car?  Please answer yes or no.", "No")])
    lines = [
        {"question_id": "existence/1.jpg", "image": "existence/1.jpg", "text": f"Is there a cat?\n{SHORT}",
         "category": "existence"},  # the suffix missing: LLaVA's converter puts it back
        {"question_id": "existence/1.jpg", "image": "existence/1.jpg", "text": "Is there a car?  Please answer yes or no.",
         "category": "existence"},  # two spaces, no instruction
        {"question_id": "existence/1.jpg", "image": "existence/1.jpg", "text": "Is there a bus?", "category": "existence"},
    ]
    write_jsonl(folder / "llava_mme.jsonl", lines)
    questions = list(mme.load_questions(folder / "llava_mme.jsonl", release))
    result = mme.score(questions, answers_for(questions, ["Yes", "No", "No"]), folder, tmp_path)
    # cat and car right, bus not in the annotations: wrong. acc 2/3, acc+ 0 (one image, not all right)
    existence = result["subtasks"]["existence"]
    assert existence["acc"] == pytest.approx(200 / 3) and existence["acc_plus"] == 0.0
    assert existence["questions"] == 3 and result["not_in_annotations"] == 1


def test_unannotated_questions_count_wrong_in_every_accuracy(tmp_path):
    # TextVQA: one matched question answered right, one the annotations lack -> 50, not 100
    folder = tmp_path / "textvqa"
    write_jsonl(folder / "llava_textvqa_val_v051_ocr.jsonl",
                [{"question_id": i, "image": f"{i}.jpg", "text": f"what is it?\n{SHORT}"} for i in ("a", "b")])
    write_json(folder / "TextVQA_0.5.1_val.json",
               {"data": [{"image_id": "a", "question_id": 1, "question": "what is it?", "answers": ["it"] * 10}]})
    questions = list(textvqa.load_questions(folder / "llava_textvqa_val_v051_ocr.jsonl", folder / "train_images"))
    result = textvqa.score(questions, answers_for(questions, ["it", "it"]), folder, tmp_path)
    assert (result["accuracy"], result["questions"], result["not_in_annotations"]) == (50.0, 2, 1)
