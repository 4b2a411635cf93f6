"""A new user's bad inputs, as a table: `fastv` and the eval runner answer each with one line,
`error: ...` naming the problem, and exit status 2; none prints a traceback.

Each row runs in-process (quick; any exception that escapes fails the row) and a few
rows run once more as a real process, where a traceback would be visible on stderr.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastv import cli
from llava.eval import run as eval_run
from tests import helpers
from tests.eval_fakes import make_all, make_pope, write_jsonl

REPO = Path(__file__).resolve().parents[1]
FAKE = ["--pipeline", "tests.eval_fakes:FakePipeline.load", "--no-progress"]


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_llava_dir):
    """Paths the rows name: {image}, {folder}, {file}, {tiny}, {bad_json}, {not_object}, {data}, {empty},
    {missing} (no checkpoint there), {bomb} (a PNG header claiming 20,000 x 20,000 pixels)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    image = root / "picture.png"
    helpers.random_images(1, seed=3)[0].save(image)
    (root / "a-file.txt").write_text("not a folder")
    for name, text in [("bad-json", "{not json"), ("not-object", "[1, 2]")]:
        (root / name).mkdir()
        (root / name / "config.json").write_text(text)
    (root / "bomb.png").write_bytes(helpers.huge_png(20_000, 20_000))
    data = make_all(root / "data")
    empty = root / "empty-data"
    make_pope(empty)
    write_jsonl(empty / "pope/llava_pope_test.jsonl", [])
    return {"image": image, "folder": root, "file": root / "a-file.txt", "tiny": tiny_llava_dir,
            "bad_json": root / "bad-json", "not_object": root / "not-object", "data": data, "empty": empty,
            "missing": root / "checkpoints/llava-v1.5-7b", "bomb": root / "bomb.png"}


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

# (argv, words the one line must hold); "{name}" is a path from `places`.
CLI_ROWS = [
    (["run", "--prompt", "hi", "--device", "foo"], "unknown device 'foo'"),
    pytest.param(["run", "--prompt", "hi", "--device", "cuda"], "no CUDA GPU", marks=NO_GPU),
    (["run", "--prompt", "hi", "--temperature", "nan"], "temperature must be a finite number"),
    (["run", "--prompt", "hi", "--max-new-tokens", "-1"], "max_new_tokens must be an integer >= 0"),
    (["run", "--prompt", "hi", "--method", "random:keep=4,seed=9223372036854775808"], "random:seed must be in"),
    (["run", "--prompt", "hi", "--method", "fastv:keep=36,keep=10"], "'keep' is given twice"),
    (["run", "--prompt", "hi", "--method", "fastvv"], "unknown method 'fastvv'"),
    (["run", "--prompt", "hi", "--conv-mode", "bogus"], "unknown conversation mode 'bogus'"),
    (["run", "--prompt", "  "], "the prompt is empty"),
    (["run", "--prompt", "hi", "--image", "{folder}/nothing.png"], "image not found"),
    (["run", "--prompt", "hi", "--image", ""], "the image path is empty"),
    (["run", "--prompt", "hi", "--image", "{folder}"], "is a folder, not an image file"),
    (["run", "--prompt", "hi", "--image", "https://example.com/cat.jpg"], "https://example.com/cat.jpg: URLs are not fetched"),
    (["run", "--prompt", "hi", "--image", "{file}"], "not an image or corrupt"),
    (["run", "--prompt", "hi", "--image", "{bomb}"], "is too large"),
    (["run", "--prompt", "hi", "--model-path", "{missing}"], "checkpoint folder not found"),
    (["run", "--prompt", "hi", "--model-path", "{file}"], "is a file, not a checkpoint folder"),
    (["run", "--prompt", "hi", "--model-path", "{bad_json}"], "is not valid JSON"),
    (["run", "--prompt", "hi", "--model-path", "{not_object}"], "config.json"),
    (["run", "--prompt", "hi", "--model-path", "{tiny}", "--vision-tower", "{folder}"], "--vision-tower"),
    (["sweep", "--out", "{folder}/sweep", "--shares", "0"], "--shares must be fractions of the visual tokens kept"),
    (["sweep", "--out", "{file}"], "is a file: name a folder"),
    (["sweep", "--out", "{folder}/sweep", "--batch-size", "-3"], "--batch-size must be at least 1"),
    (["report", "{folder}/nothing"], "no such run directory or folder"),
    (["report", "{bad_json}"], "no scores.json or run.json in"),
    (["bench", "--repeats", "0"], "--repeats must be at least 1"),
    (["bench", "--batch", "0"], "--batch must be at least 1"),
    (["bench", "--new-tokens", "0"], "--new-tokens must be at least 1"),
    (["bench", "--device", "foo"], "unknown device 'foo'"),
    (["bench", "--methods", "fastv:keep=3,keep=4"], "given twice"),
    (["bench", "--json", "{folder}"], "is a folder"),
    (["bench", "--preset", "llava-v1.5-7b"], "add --random-weights"),
    (["bench", "--preset", "llava-v9-7b", "--random-weights"], "unknown preset 'llava-v9-7b'"),
    (["bench", "--random-weights"], "--random-weights is for --preset"),
    (["bench-prefill", "--repeats", "0"], "--repeats must be at least 1"),  # the old name is an alias
    (["flops", "--text-tokens", "0"], "--text-tokens must be at least 1"),
    (["flops", "--method", "fastvv:k=2"], "unknown method 'fastvv'"),
]

EVAL_ROWS = [
    (["--benchmark", "nope"], "unknown benchmark 'nope'"),
    (["--benchmark", "pope", "--batch-size", "-3", *FAKE], "--batch-size must be at least 1"),
    (["--benchmark", "pope", "--batch-size", "0", *FAKE], "--batch-size must be at least 1"),
    (["--benchmark", "pope", "--limit", "-1", *FAKE], "--limit must be at least 1"),
    (["--benchmark", "pope", "--max-new-tokens", "-1", *FAKE], "max_new_tokens must be an integer >= 0"),
    (["--benchmark", "pope", "--temperature", "nan", *FAKE], "temperature must be a finite number"),
    (["--benchmark", "pope", "--seed", "9223372036854775808", *FAKE], "seed must be an integer"),
    (["--benchmark", "pope", "--device", "foo", *FAKE], "unknown device 'foo'"),
    pytest.param(["--benchmark", "pope", "--device", "cuda", *FAKE], "no CUDA GPU", marks=NO_GPU),
    (["--benchmark", "pope", "--output-dir", "{file}", *FAKE], "it or a folder above it is a file"),
    (["--benchmark", "pope", "--output-dir", "{file}/run", *FAKE], "it or a folder above it is a file"),
    (["--benchmark", "pope", "--data-root", "{empty}", *FAKE], "holds no questions"),
    (["--benchmark", "pope", "--data-root", "{folder}", *FAKE], "question file not found"),
    (["--benchmark", "pope", "--model-path", "{missing}"], "checkpoint folder not found"),
    (["--benchmark", "pope", "--model-path", "{bad_json}"], "is not valid JSON"),
    (["--benchmark", "pope", "--model-path", "{tiny}", "--vision-tower", "{folder}"], "--vision-tower"),
]


def fill(argv, places, tmp_path):
    argv = [a.format(**places) for a in argv]
    if argv and argv[0] in ("run", "bench", "bench-prefill", "flops", "sweep", "report"):
        return argv
    defaults = {"--data-root": str(places["data"]), "--output-dir": str(tmp_path / "out"), "--model-path": "tiny"}
    return argv + [item for flag, value in defaults.items() if flag not in argv for item in (flag, value)]


def one_line_error(capsys, main, argv) -> str:
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, words", CLI_ROWS)
def test_fastv_answers_bad_input_in_one_line(argv, words, places, tmp_path, capsys):
    assert words in one_line_error(capsys, cli.main, fill(argv, places, tmp_path))


@pytest.mark.parametrize("argv, words", EVAL_ROWS)
def test_eval_runner_answers_bad_input_in_one_line(argv, words, places, tmp_path, capsys):
    err = one_line_error(capsys, eval_run.main, fill(argv, places, tmp_path))
    assert words in err
    assert not (tmp_path / "out/scores.json").exists()  # nothing that looks like a score


@pytest.mark.parametrize("command, argv, words", [
    ("fastv.cli", ["run", "--prompt", "hi", "--device", "foo"], "unknown device 'foo'"),
    ("fastv.cli", ["run", "--prompt", "hi", "--model-path", "{bad_json}"], "is not valid JSON"),
    ("llava.eval.run", ["--benchmark", "pope", "--batch-size", "-3", *FAKE], "--batch-size must be at least 1"),
    ("llava.eval.run", ["--benchmark", "pope", "--model-path", "{missing}"], "checkpoint folder not found"),
])
def test_as_a_process_the_error_is_one_line_without_traceback(command, argv, words, places, tmp_path):
    result = subprocess.run([sys.executable, "-m", command, *fill(argv, places, tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr


@pytest.mark.parametrize("argv, words", [
    (["--n", "0"], "--n must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--n", "2", "--method", "fastvv"], "unknown method 'fastvv'"),
    (["--n", "2", "--model-path", "{missing}"], "checkpoint folder not found"),
])
def test_the_shapes_evaluation_script_answers_bad_input_in_one_line(argv, words, places, capsys):
    script = helpers.load_script("eval_shapes")
    with pytest.raises(SystemExit) as exited:
        script.main([a.format(**places) for a in argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert words in err and "Traceback" not in err


def test_a_sweep_limit_above_the_question_count_says_so(tiny_llava_dir, tmp_path, capsys):
    from fastv import sweep

    sweep.main(str(tmp_path / "sweep"), model_path=str(tiny_llava_dir), data_root=str(tmp_path / "data"),
               methods=["none"], limit=20, n_questions=2, batch_size=2, max_new_tokens=2)
    err = capsys.readouterr().err
    assert "note: --limit 20 but" in err and "holds 2 questions: all 2 are asked" in err
