"""The video QA benchmarks (llava/eval/video_qa.py) and Video-LLaVA's GPT judge (llava/eval/video_judge.py,
llava/eval/judge_run.py).

Scores are worked out by hand here; the judge is a stub OpenAI-compatible server on 127.0.0.1 started by the
test (never the internet); the runs go through the real runner with tests.eval_fakes.FakePipeline and real
video files written by the test (an animated GIF, an mp4 through PyAV), one video missing.
"""

import json
import os
import random
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from llava.errors import InputError
from llava.eval.common import Question
from llava.eval.registry import get_benchmark
from llava.eval.run import load_questions, run_benchmark
from llava.eval.judge_run import judge_run, main as judge_main
from llava.eval.video_judge import SYSTEM_PROMPT, ChatJudge, Verdict, messages, parse_reply, read_cached, tally, write_cached
from llava.eval.video_qa import offline_match, score
from tests.eval_fakes import FakePipeline
from tests.helpers import write_random_gif

REPO = Path(__file__).resolve().parents[1]
MSVD = "GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA"


# ----------------------------------------------------------------------------- tiny video sets


def write_mp4(path: Path, frames: int = 12, seed: int = 1) -> None:
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


# (video_name, question_id, question, answer): the fake answers a question with its last word
QUESTIONS = [
    ("clip0", "v_clip0_0", "what is the man holding?", "holding"),  # fake: "holding" (right)
    ("clip0", "v_clip0_1", "who is dancing?", "man"),  # fake: "dancing" (wrong)
    ("clip1", "v_clip1_0", "what is the dog chasing?", "ball"),  # fake: "chasing"; the stub judge's reply is unreadable
    ("clip2", "v_clip2_0", "what is in the box?", "rifle"),  # clip2 is missing: an error line
]


def make_msvd(root: Path, suffix: str = "_1k", questions=QUESTIONS) -> Path:
    folder = root / MSVD
    write_random_gif(folder / "videos/clip0.gif", 10, size=(48, 32), frame_ms=40)
    write_mp4(folder / "videos/clip1.mp4")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"test_q{suffix}.json").write_text(json.dumps(
        [{"video_name": v, "question_id": i, "question": q} for v, i, q, _ in questions]))
    (folder / f"test_a{suffix}.json").write_text(json.dumps(
        [{"answer": a, "type": 3, "question_id": i} for _, i, _, a in questions]))
    return root


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- a stub judge on 127.0.0.1


class StubJudge:
    """An OpenAI-compatible /v1/chat/completions answering by the prediction it is shown."""

    REPLIES = {"holding": "{'pred': 'yes', 'score': 4.8}", "chasing": "Yes, the answer is right."}
    OTHERWISE = "{'pred': 'no', 'score': 1}"

    def __init__(self):
        self.requests: list[dict] = []
        self.fail_next = 0  # answer this many requests with HTTP 503 first
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if stub.fail_next:
                    stub.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                pred = body["messages"][1]["content"].split("Predicted Answer: ")[1].split("\n")[0]
                reply = {"model": "stub-judge-0613",
                         "choices": [{"message": {"role": "assistant", "content": stub.REPLIES.get(pred, stub.OTHERWISE)}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    judge = StubJudge()
    yield judge
    judge.close()


# ----------------------------------------------------------------------------- the judge's prompt and parsing


def test_the_prompt_is_video_llavas_character_for_character():
    # eval_video_qa.py's strings, joined as Python joins them (no separator between the pieces)
    assert SYSTEM_PROMPT == (
        "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
        "question-answer pairs. Your task is to compare the predicted answer with the correct answer and determine "
        "if they match meaningfully. Here's how you can accomplish the task:------##INSTRUCTIONS: - Focus on the "
        "meaningful match between the predicted answer and the correct answer.\n- Consider synonyms or paraphrases "
        "as valid matches.\n- Evaluate the correctness of the prediction compared to the answer.")
    system, user = messages("who is dancing?", "man", "a woman")
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user == {"role": "user", "content": (
        "Please evaluate the following video-based question-answer pair:\n\nQuestion: who is dancing?\n"
        "Correct Answer: man\nPredicted Answer: a woman\n\nProvide your evaluation only as a yes/no and score where "
        "the score is an integer value between 0 and 5, with 5 indicating the highest meaningful match. Please "
        "generate the response in the form of a Python dictionary string with keys 'pred' and 'score', where value "
        "of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE ANY "
        "OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. For example, your response "
        "should look like this: {'pred': 'yes', 'score': 4.8}.")}
    # braces in a prediction are text, not format fields
    assert "Predicted Answer: {'x': 1}\n" in messages("q", "a", "{'x': 1}")[1]["content"]


@pytest.mark.parametrize("reply, verdict", [
    ("{'pred': 'yes', 'score': 5}", Verdict(True, 5, True)),
    ("{'pred': 'yes', 'score': 4.8}", Verdict(True, 4, True)),  # int() truncates, as released
    ("  {'pred': 'Yes.', 'score': 3}\n", Verdict(True, 3, True)),  # "yes" in the lower-cased text
    ('{"pred": "no", "score": 2}', Verdict(False, 2, True)),  # JSON is a Python literal too
    ("{'pred': 'NO', 'score': '1'}", Verdict(False, 1, True)),  # int('1'), as released
    ("{'pred': 'not sure', 'score': 2}", Verdict(False, 2, True)),  # "no" is a substring of "not", as released
    ("{'pred': 'yes', 'score': True}", Verdict(True, 1, True)),  # int(True), as released
    ("Yes, score 4", Verdict(False, 0, False)),  # not a literal
    ("```python\n{'pred': 'yes', 'score': 4}\n```", Verdict(False, 0, False)),
    ("['yes', 4]", Verdict(False, 0, False)),  # a literal, not a dict
    ("{'pred': 'maybe', 'score': 3}", Verdict(False, 0, False)),  # neither yes nor no
    ("{'pred': 1, 'score': 3}", Verdict(False, 0, False)),  # 'pred' is no string
    ("{'pred': 'yes', 'score': '4.5'}", Verdict(False, 0, False)),  # int('4.5') fails
    ("{'pred': 'yes'}", Verdict(False, 0, False)),  # no score
    ("{'pred': 'yes', 'score': float('inf')}", Verdict(False, 0, False)),  # a call is no literal
    ("", Verdict(False, 0, False)),
])
def test_reply_parsing(reply, verdict):
    assert parse_reply(reply) == verdict


def test_tally_counts_every_question_worked_by_hand():
    verdicts = [Verdict(True, 5, True), Verdict(True, 4, True), Verdict(False, 2, True), Verdict(False, 0, False)]
    # 5 questions (4 judged + 1 error line): yes 2 -> 40 %; score (5 + 4 + 2 + 0 + 0) / 5 = 2.2
    assert tally(verdicts, errors=1) == {"accuracy": 40.0, "score": 2.2, "yes": 2, "no": 3, "unparsed": 1, "errors": 1}
    assert tally([])["accuracy"] is None


# ----------------------------------------------------------------------------- the offline score


def test_offline_match_worked_by_hand(tmp_path):
    assert offline_match("2", "two") == (True, True)  # number words as digits
    assert offline_match("The dog.", "dog") == (True, True)  # articles and the period go
    assert offline_match("A man is walking.", "man") == (False, True)  # contained as a whole word
    assert offline_match("woman", "man") == (False, False)  # not inside another word
    assert offline_match(None, "man") == (False, False)  # no answer (an error line)

    questions = [Question(f"q{i}", f"question {i}?", fields={"answer": a})
                 for i, a in enumerate(["two", "man", "man", "dog", "box"])]
    answers = {q.key: {"question_id": q.question_id, "text": t, "metadata": {}}
               for q, t in zip(questions, ["2", "A man is walking.", "woman", "The dog."])}
    answers[questions[4].key] = {"question_id": "q4", "text": "", "metadata": {"error": "video not found"}}
    metrics = score(questions, answers, tmp_path, tmp_path)
    # exact: q0, q3 -> 2 / 5; contained: q0, q1, q3 -> 3 / 5; the error line counts in both denominators
    assert metrics["offline"]["exact_match"] == 40.0 and metrics["offline"]["contained"] == 60.0
    assert "not the paper's metric" in metrics["offline"]["metric"]
    assert metrics["accuracy"] is None and metrics["score"] is None and metrics["questions"] == 5
    assert metrics["judge"]["status"].startswith("not judged")
    judge_input = lines(tmp_path / "judge_input.jsonl")  # Video-LLaVA's merge.jsonl
    assert judge_input[1] == {"id": "q1", "question": "question 1?", "answer": "man", "pred": "A man is walking."}
    assert judge_input[4]["pred"] == ""


# ----------------------------------------------------------------------------- loading the files


def test_questions_pair_with_answers_by_position_and_find_their_videos(tmp_path):
    make_msvd(tmp_path)
    questions = load_questions(get_benchmark("msvd_1k"), tmp_path, None, None, None)
    assert [q.question_id for q in questions] == [i for _, i, _, _ in QUESTIONS]
    assert [q.fields["answer"] for q in questions] == [a for *_, a in QUESTIONS]
    assert questions[0].text == "what is the man holding?"  # asked as written, no instruction
    assert questions[0].video == tmp_path / MSVD / "videos/clip0"  # the extension is found when it is read
    assert get_benchmark("msvd_1k").max_new_tokens == 1024


def test_activitynet_names_its_videos_with_v_(tmp_path):
    folder = tmp_path / "GPT_Zero_Shot_QA/Activitynet_Zero_Shot_QA"
    folder.mkdir(parents=True)
    (folder / "test_q.json").write_text(json.dumps([{"video_name": "abc", "question_id": "v_abc_0", "question": "is it?"}]))
    (folder / "test_a.json").write_text(json.dumps([{"answer": "yes", "type": 0, "question_id": "v_abc_0"}]))
    (question,) = load_questions(get_benchmark("activitynet"), tmp_path, None, None, None)
    assert question.video == folder / "all_test/v_abc"


@pytest.mark.parametrize("answers, message", [
    ([{"answer": "holding", "question_id": "v_clip0_0"}], "holds 1 answers but"),
    ([{"answer": a, "question_id": "x"} for *_, a in QUESTIONS], "answers question_id 'x' but test_q_1k.json entry 1"),
    ([{"answer": ["a"]} for _ in QUESTIONS], "entry 1: field 'answer' is a list"),
])
def test_answer_files_that_do_not_pair_up_are_refused(tmp_path, answers, message):
    make_msvd(tmp_path)
    (tmp_path / MSVD / "test_a_1k.json").write_text(json.dumps(answers))
    with pytest.raises(InputError, match=message):
        load_questions(get_benchmark("msvd_1k"), tmp_path, None, None, None)


def test_a_missing_subset_file_is_one_line(tmp_path):
    make_msvd(tmp_path, suffix="")
    with pytest.raises(InputError, match="test_q_1k.json.*EVAL.md"):
        load_questions(get_benchmark("msvd_1k"), tmp_path, None, None, None)


# ----------------------------------------------------------------------------- runs, the judge, resume


def run(data, out, **options):
    return run_benchmark("msvd_1k", FakePipeline("tiny-video-llava", "fastervlm:keep=16"), data, out,
                         method="fastervlm:keep=16", conv_mode="llava_v1", progress=False, **options)


def test_a_run_reads_each_video_and_a_missing_one_is_an_error_line_counted_wrong(tmp_path):
    scores = run(make_msvd(tmp_path / "data"), tmp_path / "out")
    answers = lines(tmp_path / "out/answers.jsonl")
    assert [a["text"] for a in answers] == ["holding", "dancing", "chasing", ""]
    # the GIF (10 frames) and the mp4 (12) read by llava.video: 8 frames at linspace(0, n - 1, 8)
    assert answers[0]["metadata"]["frames"] == [0, 1, 2, 3, 5, 6, 7, 9]
    assert answers[2]["metadata"]["frames"] == [0, 1, 3, 4, 6, 7, 9, 11]
    assert answers[0]["metadata"]["visual_tokens"] == [8 * 16] and answers[0]["metadata"]["kept_frame_tokens"] == [16] * 8
    assert answers[3]["metadata"]["error"].startswith(f"video not found: {tmp_path / 'data' / MSVD / 'videos/clip2'}")
    run_json = scores["run"]
    assert (run_json["questions"], run_json["answered"], run_json["errors"]) == (4, 3, 1)
    assert scores["headline"] == {"metric": "accuracy", "value": None}  # not judged yet
    # offline: only "holding" matches, over all 4 questions
    assert scores["metrics"]["offline"]["exact_match"] == 25.0 and scores["metrics"]["offline"]["contained"] == 25.0
    assert "headline: none" in (tmp_path / "out/scores.txt").read_text()


def test_an_unreadable_video_is_an_error_line(tmp_path):
    data = make_msvd(tmp_path / "data")
    (data / MSVD / "videos/clip1.mp4").write_bytes(b"not a video")
    run(data, tmp_path / "out")
    error = lines(tmp_path / "out/answers.jsonl")[2]["metadata"]["error"]
    assert "clip1.mp4" in error and "\n" not in error


@dataclass
class Request:  # the requests of ImageOnlyPipeline below (TorchBackend uses its module's Request): no video field
    image: object
    text: str


class ImageOnlyPipeline(FakePipeline):
    """A pipeline whose Request takes no video."""


def test_a_pipeline_that_takes_no_video_gives_error_lines(tmp_path):
    scores = run_benchmark("msvd_1k", ImageOnlyPipeline("tiny-llava"), make_msvd(tmp_path / "data"), tmp_path / "out",
                           progress=False)
    assert scores["run"]["errors"] == 4
    assert lines(tmp_path / "out/answers.jsonl")[0]["metadata"]["error"] == (
        "ImageOnlyPipeline takes no video (its Request has no video field)")


def test_the_judge_through_a_stub_endpoint_records_its_model_and_resumes(tmp_path, stub, monkeypatch):
    run(make_msvd(tmp_path / "data"), tmp_path / "out")
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test")
    assert judge_main([str(tmp_path / "out"), "--judge-url", stub.url, "--judge-model", "stub-judge",
                       "--key-env", "JUDGE_TEST_KEY", "--no-progress", "--workers", "2"]) == 0
    # three answers asked (the error line is not), each with Video-LLaVA's two messages and nothing else
    assert len(stub.requests) == 3
    assert {r["path"] for r in stub.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in stub.requests} == {"Bearer sk-test"}
    first = next(r["body"] for r in stub.requests if "Predicted Answer: holding\n" in r["body"]["messages"][1]["content"])
    assert first == {"model": "stub-judge", "messages": messages("what is the man holding?", "holding", "holding")}

    scores = json.loads((tmp_path / "out/scores.json").read_text())
    metrics = scores["metrics"]
    # yes: holding (4.8 -> 4); no: dancing (1); unreadable: chasing (no, 0); error line: no, 0.
    # Accuracy 1 / 4 = 25 %, Score (4 + 1 + 0 + 0) / 4 = 1.25: every question in both denominators
    assert (metrics["accuracy"], metrics["score"]) == (25.0, 1.25)
    assert scores["headline"] == {"metric": "accuracy", "value": 25.0}
    judge = metrics["judge"]
    assert (judge["model"], judge["answered_by"]) == ("stub-judge", "stub-judge-0613")
    assert (judge["yes"], judge["no"], judge["unparsed"], judge["errors"], judge["judged"]) == (1, 3, 1, 1, 3)
    assert judge["status"] == "complete" and judge["url"] == stub.url + "/chat/completions"
    assert metrics["offline"]["exact_match"] == 25.0  # still there
    assert len(list((tmp_path / "out/judge/stub-judge").glob("*.json"))) == 3

    # again: every reply is cached, nothing is asked; the scores are the same
    judge_run(tmp_path / "out", ChatJudge(stub.url, "stub-judge"), progress=False)
    assert len(stub.requests) == 3
    assert json.loads((tmp_path / "out/scores.json").read_text())["metrics"]["score"] == 1.25
    # the runner scoring the run again keeps the judge's numbers (read from the cache)
    again = run(tmp_path / "data", tmp_path / "out")
    assert again["metrics"]["accuracy"] == 25.0


def test_a_changed_answer_is_judged_again(tmp_path):
    qa = {"q": "who?", "a": "man", "pred": "man"}
    write_cached(tmp_path, "v_0", 0, qa, "{'pred': 'yes', 'score': 5}", "m")
    assert read_cached(tmp_path, "v_0", 0, qa)["reply"] == "{'pred': 'yes', 'score': 5}"
    assert read_cached(tmp_path, "v_0", 0, {**qa, "pred": "woman"}) is None
    write_cached(tmp_path, "a/b c", 1, qa, "{}", None)  # an id that is no file name
    assert read_cached(tmp_path, "a/b c", 1, qa)["question_id"] == "a/b c"


def test_a_partly_judged_run_has_no_accuracy_and_a_failing_endpoint_is_one_line(tmp_path, stub, capsys):
    run(make_msvd(tmp_path / "data"), tmp_path / "out")
    stub.fail_next = 100
    judge = ChatJudge(stub.url, "stub-judge", retries=1, wait=0.0)
    with pytest.raises(InputError, match=r"did not answer \(HTTP 503 .*2 tries\)"):
        judge_run(tmp_path / "out", judge, workers=1, progress=False)
    stub.fail_next = 1  # one transient failure, then answers
    judge_run(tmp_path / "out", judge, workers=1, progress=False)
    metrics = json.loads((tmp_path / "out/scores.json").read_text())["metrics"]
    assert metrics["accuracy"] == 25.0
    # a judge file removed: that answer is not judged, and the run shows no accuracy (never a smaller denominator)
    next((tmp_path / "out/judge/stub-judge").glob("v_clip0_1.json")).unlink()
    from llava.eval.registry import get_benchmark as bench
    from llava.eval.run import score as rescore
    from llava.eval.runfolder import read_answers, read_run

    questions = load_questions(bench("msvd_1k"), tmp_path / "data", None, None, None)
    scores = rescore(bench("msvd_1k"), questions, read_answers(tmp_path / "out"), tmp_path / "data", tmp_path / "out",
                     read_run(tmp_path / "out"))
    assert scores["metrics"]["accuracy"] is None and scores["metrics"]["judge"]["not_judged"] == 1


def test_judging_a_run_of_another_benchmark_or_a_bad_url_is_refused(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps({"benchmark": "pope"}))
    with pytest.raises(InputError, match="only video QA"):
        judge_run(tmp_path, ChatJudge("http://127.0.0.1:9", "m"), progress=False)
    assert judge_main([str(tmp_path), "--judge-url", "api.openai.com/v1"]) == 2
    assert capsys.readouterr().err == "error: --judge-url 'api.openai.com/v1' is no http:// or https:// URL\n"


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:notaport/v1", "no valid URL .*Port could not be cast"),
    ("http://127.0.0.1:99999/v1", "no valid URL .*out of range"),
    ("http:///v1", "no valid URL \\(no host name"),
    ("http://exa mple.com/v1", "no valid URL \\(no host name, or spaces"),
])
def test_a_judge_url_that_names_no_server_is_refused_before_any_request(url, message):
    # refused when the judge is made: a request to it would only be retried as if the failure were transient
    with pytest.raises(InputError, match=message):
        ChatJudge(url, "m")


def test_a_timeout_that_is_no_positive_number_of_seconds_is_one_line(tmp_path, capsys):
    for timeout in ("-1", "0", "nan", "inf"):
        assert judge_main([str(tmp_path), "--judge-url", "http://127.0.0.1:9/v1", "--timeout", timeout]) == 2
        assert capsys.readouterr().err == f"error: --timeout must be a positive number of seconds, got {float(timeout)}\n"


def test_answers_are_matched_by_question_id_not_position_and_resume(tmp_path):
    data = make_msvd(tmp_path / "data")
    run(data, tmp_path / "out")
    path = tmp_path / "out/answers.jsonl"
    shuffled = path.read_text().splitlines()
    random.Random(0).shuffle(shuffled)
    path.write_text("\n".join(shuffled[:3]) + "\n")  # one answer lost, the others out of order
    fake = FakePipeline("tiny-video-llava", "fastervlm:keep=16")
    scores = run_benchmark("msvd_1k", fake, data, tmp_path / "out", method="fastervlm:keep=16", conv_mode="llava_v1",
                           progress=False)
    assert fake.calls in ([1], [])  # only the lost one is asked (none when it was the missing video's)
    assert [a["question_id"] for a in lines(path)] == [i for _, i, _, _ in QUESTIONS]  # question order again
    assert scores["metrics"]["offline"]["exact_match"] == 25.0 and scores["run"]["errors"] == 1


def test_two_processes_share_the_questions_and_merge(tmp_path):
    data = make_msvd(tmp_path / "data")
    barrier, results = threading.Barrier(2), {}

    def process(rank):  # what torchrun's processes do, with a thread barrier for gloo's
        results[rank] = run(data, tmp_path / "out", rank=rank, world_size=2, barrier=barrier.wait)

    threads = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    scores = results[0]
    assert results[1] is None and not list((tmp_path / "out").glob("answers.rank*.jsonl"))
    assert [a["text"] for a in lines(tmp_path / "out/answers.jsonl")] == ["holding", "dancing", "chasing", ""]
    assert scores["run"]["errors"] == 1


def test_fastv_report_shows_the_judged_accuracy(tmp_path, stub):
    from fastv.report import report

    run(make_msvd(tmp_path / "data"), tmp_path / "runs/fastervlm")
    judge_run(tmp_path / "runs/fastervlm", ChatJudge(stub.url, "stub-judge"), progress=False)
    table = report([str(tmp_path / "runs")])
    assert "MSVD-QA-1K" in table and "25.0/1.25 (4)" in table and "the GPT judge's Accuracy/Score" in table


# ----------------------------------------------------------------------------- the scripts


def script_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NPROC", "METHOD", "SUBSET",
                                                             "JUDGE_URL", "JUDGE_MODEL")}
    env.update(PYTHON=sys.executable, DATA_ROOT=str(tmp_path / "data"), OUTPUT_ROOT=str(tmp_path / "out"),
               MODEL_PATH=str(tmp_path / "checkpoints/Video-LLaVA-7B-hf"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               EVAL_ARGS="--pipeline tests.eval_fakes:FakePipeline.load --device cpu --no-progress", **extra)
    return env


def bash(script, *args, env):
    return subprocess.run(["bash", script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_every_video_set_has_a_thin_script():
    scripts = sorted(p.stem for p in (REPO / "scripts/video/eval").glob("*.sh"))
    assert scripts == ["activitynet", "msrvtt", "msvd", "tgif"]
    for name in scripts:
        text = (REPO / f"scripts/video/eval/{name}.sh").read_text()
        assert f"llava_eval video {name} " in text and len(text.splitlines()) <= 5


def test_the_script_runs_the_1k_subset_then_the_judge(tmp_path, stub):
    make_msvd(tmp_path / "data")
    make_msvd(tmp_path / "data", suffix="", questions=QUESTIONS[:2])
    result = bash("scripts/video/eval/msvd.sh", "16", env=script_env(tmp_path, JUDGE_URL=stub.url,
                                                                     JUDGE_MODEL="stub-judge"))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "out/Video-LLaVA-7B-hf/fastervlm_16/msvd_1k"
    run_json = json.loads((run_dir / "run.json").read_text())
    assert (run_json["method_spec"], run_json["conv_mode"], run_json["questions"]) == ("fastervlm:keep=16", "llava_v1", 4)
    assert json.loads((run_dir / "scores.json").read_text())["metrics"]["judge"]["model"] == "stub-judge"
    assert len(stub.requests) == 3

    full = bash("scripts/video/eval/msvd.sh", "16", env=script_env(tmp_path, SUBSET="full"))
    assert full.returncode == 0, full.stderr
    assert "JUDGE_URL not set" in full.stderr
    assert json.loads((tmp_path / "out/Video-LLaVA-7B-hf/fastervlm_16/msvd/run.json").read_text())["questions"] == 2
    wrong = bash("scripts/video/eval/msvd.sh", "16", env=script_env(tmp_path, SUBSET="2k"))
    assert wrong.returncode == 2 and "SUBSET=2k is neither 1k nor full" in wrong.stderr
    usage = bash("scripts/video/eval/msvd.sh", env=script_env(tmp_path))
    assert usage.returncode == 2 and "usage: bash scripts/video/eval/msvd.sh BUDGET" in usage.stderr


def test_a_run_through_the_real_pipeline_on_a_tiny_video_llava(tiny_video_dir, tmp_path):
    from llava.pipeline import LlavaPipeline

    model = tiny_video_dir
    scores = run_benchmark(
        "msvd_1k", lambda: LlavaPipeline.load(str(model), method="fastervlm:keep=16", conv_mode="llava_v1"),
        make_msvd(tmp_path / "data"), tmp_path / "out", model_path=str(model), method="fastervlm:keep=16",
        conv_mode="llava_v1", max_new_tokens=3, progress=False)
    answers = lines(tmp_path / "out/answers.jsonl")
    assert (scores["run"]["answered"], scores["run"]["errors"]) == (3, 1)
    first = answers[0]["metadata"]
    # 8 frames read; FasterVLM keeps 16 of each frame's 64 patches (the frame's [CLS] kept too: video_cls=keep)
    assert first["frames"] == [0, 1, 2, 3, 5, 6, 7, 9] and first["kept_frame_tokens"] == [16] * 8
    assert first["visual_tokens"] == [8 * (16 + 1)]
    assert answers[3]["metadata"]["error"].startswith("video not found")
