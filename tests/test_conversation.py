"""Prompt templates, pinned to the strings LLaVA-1.5's evaluation sends."""

from llava.conversation import build_prompt


def test_vicuna_v1_prompt():
    assert build_prompt("What is this?") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is this? ASSISTANT:"
    )


def test_llava_v1_and_plain_prompts():
    assert build_prompt("Hi", "llava_v1", with_image=False) == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: Hi ASSISTANT:"
    )
    assert build_prompt("What is this?", "plain") == "<image>\nWhat is this?\n"
