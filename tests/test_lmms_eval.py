"""The lmms-eval plugin (`llava.integrations.lmms_eval_plugin`) answers lmms-eval's own `Instance`
requests on the shipped model: generate_until equals our pipeline's answers (batched, stop strings
applied); loglikelihood is the loss lmms-eval's scorers take the minimum of, equal to minus a direct
computation, and a multiple_choice task scored by lmms-eval's own `process_results` and aggregation
picks the most likely choice; the method's spec is rebuilt from lmms-eval's comma-split model_args;
model_args and command-line options are checked when the model is made; the entry point registers
`llava_fastv`. Skipped where lmms-eval does not import, failed in CI (setup.sh installs it).
tests/test_lmms_eval_cli.py runs the real `lmms-eval` command line."""

import copy

import pytest
import torch

from llava.data import synthetic
from llava.errors import InputError
from llava.pipeline import Request
from tests.lmms_tasks import SHIPPED_MODEL, TASKS, choice_logprobs, direct_logprobs, need_lmms_eval, write_docs

need_lmms_eval()
from lmms_eval.api.instance import Instance  # noqa: E402

from llava.integrations import lmms_eval_plugin as plugin  # noqa: E402

pytestmark = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here")

TASK, SPLIT = "shapes_test", "test"
DOCS = {n: synthetic.make_sample("test", n) for n in range(6)}
NO_COMMAND_LINE = {"batch_size": 1, "max_batch_size": None, "device": None}  # lmms-eval's CLI, no option given


def doc_to_visual(doc):
    return [doc.image]


def instance(request_type: str, n: int, second, visual=doc_to_visual) -> Instance:
    arguments = (DOCS[n].prompt, second, visual, n, TASK, SPLIT)
    return Instance(request_type=request_type, arguments=arguments, idx=0,
                    metadata={"task": TASK, "doc_id": n, "repeats": 1})


@pytest.fixture(scope="module", params=["none", "fastv"])
def model(request):
    """`--model_args pretrained=...,method=fastv:k=2,keep=36` arrives split at its commas."""
    args = {"pretrained": str(SHIPPED_MODEL), "batch_size": 4}
    if request.param == "fastv":
        args.update(method="fastv:k=2", keep=36)
    lm = plugin.LlavaFastV(**args)
    lm.task_dict = {TASK: {SPLIT: DOCS}}
    return lm


def test_the_spec_is_rebuilt_from_comma_split_model_args(model):
    assert model.pipeline.method_spec in ("none", "fastv:keep=36")  # canonical: k=2 is the default
    assert plugin.method_spec("fastv:k=2", {"keep": 36, "mode": "mask"}) == "fastv:k=2,keep=36,mode=mask"
    assert plugin.method_spec("fastervlm", {"keep": 58}) == "fastervlm:keep=58"


def test_model_args_are_split_where_lmms_eval_splits_them():
    """At commas outside quotes and braces (lmms-eval's own splitter): a quoted spec stays whole, unquoted."""
    from lmms_eval.utils import simple_parse_args_string

    text = 'pretrained=m,method="fastv:k=2,keep=36",conv_mode=vicuna_v1'
    assert set(simple_parse_args_string(text)) == {"pretrained", "method", "conv_mode"}  # lmms-eval's items
    assert plugin.parse_model_args(text) == {"pretrained": "m", "method": "fastv:k=2,keep=36", "conv_mode": "vicuna_v1"}
    assert plugin.parse_model_args("pretrained=m,method=fastv:k=2,keep=36") == {
        "pretrained": "m", "method": "fastv:k=2", "keep": "36"}


def test_generate_until_equals_the_pipeline_and_applies_stop_strings(model):
    kwargs = {"max_new_tokens": 8, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    requests = [instance("generate_until", n, dict(kwargs)) for n in range(6)]
    requests[5] = instance("generate_until", 5, dict(kwargs, until=[" "]))  # a second setting: its own batch
    texts = model.generate_until(requests)
    expected = model.pipeline.answer([Request(DOCS[n].image, DOCS[n].prompt) for n in range(6)], max_new_tokens=8)
    assert texts[:5] == [a.text for a in expected[:5]]
    assert texts[5] == expected[5].text.split(" ", 1)[0]
    assert sum(text == DOCS[n].answer for n, text in enumerate(texts[:5])) >= 3  # the shipped model answers


def test_loglikelihood_is_the_loss_of_a_direct_computation_and_flags_the_greedy_answer(model):
    """lmms-eval sends " " + the answer; the plugin returns -log p, as lmms-eval's own llava models."""
    greedy = model.generate_until([instance("generate_until", 0, {"max_new_tokens": 8})])[0]
    results = model.loglikelihood([instance("loglikelihood", 0, " " + greedy), instance("loglikelihood", 0, " zzz qqq")])
    (loss, is_greedy), (other, other_greedy) = results
    assert is_greedy and not other_greedy and 0 < loss < other
    (logprob,) = direct_logprobs(model.pipeline, Request(DOCS[0].image, DOCS[0].prompt), [" " + greedy])
    assert abs(loss + logprob) < 1e-4


@pytest.fixture(scope="module")
def shapes_mc(tmp_path_factory):
    """lmms-eval's multiple_choice task `shapes_lmms_mc` (tests/lmms_tasks) on the first 12 shapes questions, the
    10 with a closed answer set: (the task with its requests built, the docs)."""
    from lmms_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("lmms-shapes")
    docs = write_docs(folder, 12)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the task reads shapes_docs.jsonl from the working directory
        patch.setenv("LMMS_EVAL_DATASETS_CACHE", str(folder / "datasets"))
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        tasks = TaskManager(include_path=str(TASKS), include_defaults=False).load_task_or_group(["shapes_lmms_mc"])
        task = tasks["shapes_lmms_mc"]
        task.build_all_requests(limit=None, rank=0, world_size=1)
    return task, docs


def test_multiple_choice_scored_by_lmms_eval_picks_the_most_likely_choice(model, shapes_mc, monkeypatch):
    """lmms-eval's own construct_requests, process_results (argmin over what loglikelihood returns) and
    aggregation give the accuracy of choosing the choice of highest log-probability (and, for acc_norm, of
    highest log-probability per character), computed here from the model directly. Returning log-probabilities
    instead gives the least likely choice: 0.00 where 1.00 is right on the unpruned model."""
    task, docs = shapes_mc
    monkeypatch.setattr(model, "task_dict", {task.config.task: task.dataset})
    for request in task.instances:
        request.resps.clear()
    for request, result in zip(task.instances, model.loglikelihood(task.instances)):
        request.resps.append(result)
    scores = {"acc": [], "acc_norm": []}
    for doc_id, doc in enumerate(task.test_docs()):
        results = [request.resps[0] for request in sorted(task.instances, key=lambda r: r.idx) if request.doc_id == doc_id]
        for metric, value in task.process_results(doc, results).items():
            scores[metric].append(value)
    aggregate = task.aggregation()
    acc, acc_norm = aggregate["acc"](scores["acc"]), aggregate["acc_norm"](scores["acc_norm"])

    right = right_norm = 0
    for doc in docs:
        logprobs = choice_logprobs(model.pipeline, doc)
        per_char = [lp / len(c) for lp, c in zip(logprobs, doc["choices"])]
        right += doc["choices"][logprobs.index(max(logprobs))] == doc["answer"]
        right_norm += doc["choices"][per_char.index(max(per_char))] == doc["answer"]
    assert len(docs) == 10 and len(scores["acc"]) == 10
    assert acc == pytest.approx(right / len(docs)) and acc_norm == pytest.approx(right_norm / len(docs))
    assert right >= 8  # the shipped model knows most answers: the least likely choice would score far lower


def test_a_leading_space_is_scored_as_the_model_generates_it(model, monkeypatch):
    """lmms-eval's " " + answer under a SentencePiece Llama tokenizer (transformers' conversion prepends "▁" and
    turns spaces into "▁"): tokenised alone it starts with a "▁" token the model never generates after
    "ASSISTANT:"; scored as it follows the prompt it is the answer's own token, the greedy one."""
    from tokenizers import normalizers

    legacy = copy.deepcopy(model.pipeline.tokenizer)
    legacy.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    monkeypatch.setattr(model.pipeline, "tokenizer", legacy)
    greedy = model.generate_until([instance("generate_until", 0, {"max_new_tokens": 8})])[0]
    alone = legacy(" " + greedy, add_special_tokens=False)["input_ids"]
    assert legacy.convert_ids_to_tokens(alone) == ["▁", "▁" + greedy]  # the case this test is about
    ((loss, is_greedy),) = model.loglikelihood([instance("loglikelihood", 0, " " + greedy)])
    (text,), (prompt,), images, _ = model.pipeline.encode([Request(DOCS[0].image, DOCS[0].prompt)])
    logits = model.pipeline.model([prompt], images).logits[0, -1].float()
    assert is_greedy
    assert loss == pytest.approx(-float(logits.log_softmax(dim=-1)[alone[1]]), abs=1e-4)


@pytest.mark.parametrize("gen_kwargs, expected", [
    ({"temperature": 0.7, "top_p": 0.9}, (0.7, 0.9)),  # do_sample defaults to temperature > 0; top_p honoured
    ({"temperature": 0.7, "top_p": 0.9, "do_sample": True}, (0.7, 0.9)),
    ({"temperature": 0.7, "top_p": 0.9, "do_sample": False}, (0.0, None)),  # greedy, as transformers
    ({"temperature": 0, "top_p": 0.9, "do_sample": True}, (0.0, None)),  # temperature 0 is greedy (lmms-eval)
    ({"do_sample": True, "top_p": 0.5}, (1.0, 0.5)),  # transformers' default temperature
    ({"temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}, (0.0, None)),  # pope's settings
    ({}, (0.0, None)),
])
def test_sampling_settings_follow_lmms_evals_rule(gen_kwargs, expected):
    _, temperature, top_p, _ = plugin._settings(gen_kwargs)
    assert (temperature, top_p) == expected


def test_batch_size_and_device_may_come_from_model_args_or_the_command_line():
    lm = plugin.LlavaFastV.create_from_arg_string(f"pretrained={SHIPPED_MODEL},batch_size=2,device=cpu", NO_COMMAND_LINE)
    assert lm.batch_size == 2 and lm.pipeline.model.device.type == "cpu"
    with pytest.raises(InputError, match=r"batch_size is given twice, batch_size=2 in model_args and --batch_size 4"):
        plugin.LlavaFastV.create_from_arg_string(f"pretrained={SHIPPED_MODEL},batch_size=2", dict(NO_COMMAND_LINE, batch_size=4))
    with pytest.raises(InputError, match=r"device is given twice, device=cpu in model_args and --device cuda"):
        plugin.LlavaFastV.create_from_arg_string(f"pretrained={SHIPPED_MODEL},device=cpu", dict(NO_COMMAND_LINE, device="cuda"))


@pytest.mark.parametrize("model_args, command_line, message", [
    ("batch_size=0", {}, "batch_size must be a positive integer, got 0"),
    ("batch_size=-3", {}, "batch_size must be a positive integer, got -3"),
    ("batch_size=two", {}, "batch_size must be a positive integer, got 'two'"),
    ("", {"batch_size": "auto"}, "batch_size 'auto' is not supported"),
    ("", {"batch_size": "auto:4", "max_batch_size": 64}, "max_batch_size goes with --batch_size auto"),
    ("method=fastv,keep=36,keep=10", {}, "model_args give 'keep' twice"),
    ("method=fastv:keep=36,keep=10", {}, "method parameter 'keep' is given twice"),
    ("conv_mode=vicunaa", {}, "unknown conversation mode 'vicunaa'"),
    ("dtype=fp16", {}, "dtype must be one of float32, float16, bfloat16, got 'fp16'"),
    ("method=fastv,oops", {}, "model_args item 'oops' must be written key=value"),
])
def test_bad_model_args_are_refused_when_the_model_is_made(model_args, command_line, message):
    arg_string = f"pretrained={SHIPPED_MODEL}" + (f",{model_args}" if model_args else "")
    with pytest.raises(InputError, match=message):
        plugin.LlavaFastV.create_from_arg_string(arg_string, dict(NO_COMMAND_LINE, **command_line))


def test_a_missing_checkpoint_is_named():
    with pytest.raises(InputError, match="llava_fastv needs pretrained=<checkpoint folder> in --model_args"):
        plugin.LlavaFastV.create_from_arg_string("method=fastv", NO_COMMAND_LINE)


@pytest.mark.parametrize("cuda, device", [(True, "cuda"), (False, "cpu")])
def test_the_device_defaults_to_cuda_when_there(monkeypatch, cuda, device):
    """Without --device or device=, as lmms-eval's own models: cuda when CUDA is there (the loader is replaced
    by one that records its device, so that no GPU is needed)."""
    loaded = {}

    def load(path, **options):
        loaded.update(options)
        raise RuntimeError("recorded")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(plugin.LlavaPipeline, "load", load)
    with pytest.raises(RuntimeError, match="recorded"):
        plugin.LlavaFastV.create_from_arg_string(f"pretrained={SHIPPED_MODEL}", NO_COMMAND_LINE)
    assert loaded["device"] == device


def test_loglikelihood_pairs_reach_lmms_evals_scorers_unchanged(model):
    """lmms-eval 0.7.3's evaluator turns a (loss, is_greedy) pair into the text "(1.5, False)" (its scorers then
    fail on every loglikelihood task); once the model is made, the pair goes through as it is."""
    from lmms_eval import evaluator

    assert evaluator.unwrap_generation_output((1.5, False)) == ((1.5, False), None)
    assert evaluator.unwrap_generation_output("an answer") == ("an answer", None)


def test_multi_round_beam_search_and_video_are_refused_by_name(model):
    with pytest.raises(NotImplementedError, match="generate_until_multi_round"):
        model.generate_until_multi_round([])
    with pytest.raises(InputError, match="num_beams > 1 is not supported"):
        model.generate_until([instance("generate_until", 0, {"num_beams": 4})])
    with pytest.raises(InputError, match=r"shapes_test doc 0 gives '/data/clip.mp4' \(video and audio are not supported\)"):
        model.generate_until([instance("generate_until", 0, {}, visual=lambda doc: ["/data/clip.mp4"])])


def test_the_entry_point_registers_llava_fastv():
    from importlib.metadata import entry_points

    points = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "llava_fastv"]
    assert len(points) == 1 and points[0].value == "llava.integrations.lmms_eval_plugin:manifest"
    from lmms_eval.models import AVAILABLE_SIMPLE_MODELS, get_model

    assert get_model("llava_fastv") is plugin.LlavaFastV
    assert "llava_fastv" in AVAILABLE_SIMPLE_MODELS  # the table `lmms-eval models` prints
