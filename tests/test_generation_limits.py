"""Where generation stops (end of sequence, max_new_tokens, the end of the context window), and the
shared check of the generation options."""

import dataclasses
import logging
import math

import pytest

from llava.errors import InputError
from llava.generate import check_generation_options, generate
from llava.mm_utils import tokenizer_image_token
from llava.model.llava_arch import LlavaForCausalLM
from llava.pipeline import LlavaPipeline, Request
from tests import helpers

CONTEXT = 24  # positions of the short-context model


@pytest.fixture(scope="module")
def short_context(loaded):
    """The tiny model with its weights, but a context window of 24 positions."""
    tokenizer, model, processor, _ = loaded
    text = dataclasses.replace(model.config.text, max_position_embeddings=CONTEXT)
    short = LlavaForCausalLM(dataclasses.replace(model.config, text=text)).eval()
    short.load_state_dict(model.state_dict())
    return tokenizer, short, processor


def text_prompt(length: int) -> list[int]:
    return [1] + [20 + i % 40 for i in range(length - 1)]


def test_decoding_stops_at_the_end_of_the_context_per_sample(short_context):
    _, model, _ = short_context
    prompts = [text_prompt(CONTEXT - 3), text_prompt(CONTEXT), text_prompt(10)]
    out = generate(model, prompts, max_new_tokens=8)
    # Generated tokens fill positions len(prompt).. up to the last position, CONTEXT - 1.
    assert [len(t) for t in out.tokens] == [3, 0, 8]
    assert out.stop_reasons == ["context", "context", "max_new_tokens"]
    free = generate(model, prompts[2:], max_new_tokens=8)
    assert out.tokens[2] == free.tokens[0]  # the other samples are unaffected
    uncached = generate(model, prompts, max_new_tokens=8, use_cache=False)
    assert uncached.tokens == out.tokens and uncached.stop_reasons == out.stop_reasons


def test_stop_reason_is_eos_or_max_new_tokens(short_context):
    _, model, _ = short_context
    prompts = [text_prompt(6), text_prompt(9)]
    free = generate(model, prompts, max_new_tokens=6)
    assert free.stop_reasons == ["max_new_tokens", "max_new_tokens"]
    stop = free.tokens[0][2]
    stopped = generate(model, prompts, max_new_tokens=6, eos_token_id=stop)
    assert stopped.stop_reasons[0] == "eos" and stopped.tokens[0] == free.tokens[0][:2]
    # The window fits max_new_tokens exactly: the budget, not the window, ended it.
    assert generate(model, [text_prompt(CONTEXT - 4)], max_new_tokens=4).stop_reasons == ["max_new_tokens"]


def test_zero_new_tokens_generates_nothing(short_context):
    _, model, _ = short_context
    out = generate(model, [text_prompt(6)], max_new_tokens=0)
    assert out.tokens == [[]] and out.stop_reasons == ["max_new_tokens"]


def test_pipeline_answers_carry_their_stop_reason(short_context):
    tokenizer, model, processor = short_context
    pipe = LlavaPipeline(tokenizer, model, processor, CONTEXT, "short", "plain")
    long_question = " ".join(["red"] * (CONTEXT - 4))
    answers = pipe.answer([Request(None, long_question), Request(None, "red")], max_new_tokens=4)
    assert [a.stop_reason for a in answers] == ["context", "max_new_tokens"]


def test_too_long_prompt_is_one_error_naming_the_model_context_and_no_tokenizer_warning(short_context):
    _, model, processor = short_context
    tokenizer = helpers.make_tokenizer(model.config.text.vocab_size)  # fresh: transformers warns once per tokenizer
    tokenizer.model_max_length = 16  # another number than the model's context, as a checkpoint's tokenizer may say
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        ids = tokenizer_image_token("red " * 30, tokenizer)
        pipe = LlavaPipeline(tokenizer, model, processor, CONTEXT, "short", "plain")
        with pytest.raises(InputError, match=f"longer than the context of {CONTEXT}$"):
            pipe.answer([Request(None, "red " * 30)])
    finally:
        logger.removeHandler(handler)
    assert len(ids) == 31
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("options, problem", [
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an integer >= 0"),
    (dict(max_new_tokens=True), "max_new_tokens must be an integer >= 0"),
    (dict(temperature=math.nan), "temperature must be a finite number >= 0"),
    (dict(temperature=math.inf), "temperature must be a finite number >= 0"),
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_p=math.nan), r"top_p must be in \(0, 1\]"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*63 - 1\]"),
    (dict(seed=2**63), r"seed must be an integer in \[0, 2\*\*63 - 1\]"),
    (dict(seed=1.0), r"seed must be an integer in \[0, 2\*\*63 - 1\]"),
])
def test_bad_generation_options_are_input_errors(short_context, options, problem):
    options = dict(dict(max_new_tokens=4, temperature=0.0), **options)
    with pytest.raises(InputError, match=problem):
        check_generation_options(**options)
    _, model, _ = short_context
    with pytest.raises(InputError, match=problem):  # generate() refuses them too, before any work
        generate(model, [text_prompt(6)], **options)


def test_good_generation_options_pass(short_context):
    for options in (dict(max_new_tokens=0, temperature=0.0), dict(max_new_tokens=3, temperature=1, top_p=1.0, seed=0),
                    dict(max_new_tokens=3, temperature=0.7, top_p=0.01, seed=2**63 - 1)):
        check_generation_options(**options)
    _, model, _ = short_context
    assert len(generate(model, [text_prompt(6)], max_new_tokens=3, temperature=1.0, seed=2**63 - 1).tokens[0]) == 3
