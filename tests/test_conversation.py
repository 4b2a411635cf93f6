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


def test_mistral_instruct_prompt():
    """llava-v1.6-mistral-7b's template: LLaMA-2's [INST] turns, no system prompt (the BOS comes from the tokenizer)."""
    assert build_prompt("What is this?", "mistral_instruct") == "[INST] <image>\nWhat is this? [/INST]"
    assert build_prompt("Hi", "mistral_instruct", with_image=False) == "[INST] Hi [/INST]"


def test_llama_2_style_multi_turn_with_a_system_prompt():
    from llava.conversation import conversation_template

    conv = conversation_template("mistral_instruct")
    conv.system = "Be brief."
    for message in ("<image>\nWhat is this?", "A cat.", "Its colour?", None):
        conv.append_message(conv.roles[len(conv.messages) % 2], message)
    assert conv.get_prompt() == (
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nWhat is this? [/INST] A cat. </s>[INST] Its colour? [/INST]"
    )
