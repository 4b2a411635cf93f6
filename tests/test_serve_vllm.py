"""`fastv serve --backend vllm`, driven by the openai client as tests/test_serve.py drives the torch backend, with the
same tests: a plain request and a streamed one, pre-LLM methods per request in concurrent requests (each answer and
its visual tokens equal to LlavaPipeline's for its method: vLLM generates from our pruned features), every bad
request a 4xx with the CLI's one-line message and the next request served; and here, an in-LLM method asked of the
vLLM backend refused with `fastv run --backend vllm`'s message. Without vLLM these skip, except in CI (CI=true),
where .ci/run installs it and they must run.
"""

import pytest

from tests.test_serve import (  # noqa: F401  (the tests below run here against the vLLM server's fixtures)
    EXAMPLE_URL, cli_error, cli_messages, launch, needs_model, openai_client, pipeline_answers, user,
    test_a_bad_request_gets_its_4xx_and_message_and_the_next_request_is_served,
    test_a_malformed_body_gets_a_400_and_the_next_request_is_served, test_a_plain_request_answers_what_the_cli_answers,
    test_a_streamed_request_sends_the_cli_answer_and_the_pruning_in_its_last_chunk,
    test_a_text_only_request_and_a_spec_written_another_way, test_another_model_name_or_path_is_a_404,
    test_concurrent_requests_with_their_own_methods_each_answer_as_the_cli,
    test_the_model_list_names_the_served_model,
)
from tests.test_vllm_backend import need_vllm

PRE_LLM = ["none", "fastervlm:keep=36", "prumerge", "random:keep=50,seed=0"]  # prumerge keeps an adaptive count
IN_LLM = "fastv:k=2,ratio=0.5"


@pytest.fixture(scope="module")
def server():
    """`fastv serve --backend vllm` -> its base URL; stopped after the module."""
    need_vllm()
    yield from launch("--backend", "vllm")


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


@pytest.fixture(scope="module")
def cli_answers():
    return pipeline_answers(PRE_LLM)


@needs_model
def test_an_in_llm_method_is_refused_with_the_cli_message_and_the_next_request_is_served(client):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="llava-shapes-tiny", messages=user("What is it?", EXAMPLE_URL),
                                       extra_body={"pruning": IN_LLM})
    message = cli_error("--backend", "vllm", "--prompt", "What is it?", "--method", IN_LLM)
    assert "prunes inside the LLM" in message and caught.value.body["message"] == message
    served = client.chat.completions.create(model="llava-shapes-tiny", max_tokens=2,
                                            messages=user("What is it?", EXAMPLE_URL))
    assert served.model_extra["pruning"] == {"method": "none", "visual_tokens": [144]}
