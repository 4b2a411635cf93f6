"""Prompt templates of LLaVA's conversation modes (`vicuna_v1` is LLaVA-1.5's default).

    vicuna_v1:        "<system> USER: <image>\nWhat is this? ASSISTANT:"
    mistral_instruct: "[INST] <image>\nWhat is this? [/INST]"  (llava-v1.6-mistral-7b)
    plain:            "<image>\nWhat is this?\n"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from llava.errors import InputError

# LLaVA-1.5's evaluation uses `vicuna_v1` ("user"); `llava_v1` is the older wording ("human").
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass
class Conversation:
    system: str
    roles: tuple[str, str]
    # "two": "<role>: <message><sep>" turns; "plain": messages joined by sep;
    # "llama_2": "[INST] <user> [/INST] <assistant><sep2>" turns, the system (if any) in <<SYS>> inside the first
    style: str
    sep: str = " "
    sep2: str = "</s>"  # closes an assistant turn in "two" style
    messages: list[list[str | None]] = field(default_factory=list)

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        separators = (self.sep, self.sep2)
        if self.style == "two":
            prompt = self.system + self.sep
            for i, (role, message) in enumerate(self.messages):
                prompt += f"{role}: {message}{separators[i % 2]}" if message else f"{role}:"
            return prompt
        if self.style == "llama_2":
            return self._llama_2_prompt()
        if self.style == "plain":
            return self.system + "".join(message + self.sep for _, message in self.messages if message)
        raise ValueError(f"unknown conversation style '{self.style}'")

    def _llama_2_prompt(self) -> str:
        prompt = ""
        for i, (_, message) in enumerate(self.messages):
            if not message:
                continue
            if i % 2:
                prompt += f" {message} {self.sep2}"
                continue
            if i == 0 and self.system:
                message = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{message}"
            prompt += f"{self.sep}[INST] {message} [/INST]"
        return prompt.removeprefix(self.sep)

    def copy(self) -> "Conversation":
        return dataclasses.replace(self, messages=[list(m) for m in self.messages])


conv_templates = {
    "vicuna_v1": Conversation(system=VICUNA_SYSTEM, roles=("USER", "ASSISTANT"), style="two"),
    "llava_v1": Conversation(system=LLAVA_V1_SYSTEM, roles=("USER", "ASSISTANT"), style="two"),
    "mistral_instruct": Conversation(system="", roles=("USER", "ASSISTANT"), style="llama_2", sep=""),
    "plain": Conversation(system="", roles=("", ""), style="plain", sep="\n", sep2="\n"),
}
conv_templates["v1"] = conv_templates["vicuna_v1"]
default_conversation = conv_templates["vicuna_v1"]


def default_conv_mode(video_model: bool) -> str:
    """The template a checkpoint runs with when none is named: Video-LLaVA's evaluation template (llava_v1) on a
    model with a video tower, LLaVA-1.5's (vicuna_v1) otherwise."""
    return "llava_v1" if video_model else "vicuna_v1"


def conversation_template(conv_mode: str) -> Conversation:
    """A fresh copy of the template named `conv_mode`; InputError naming the mode when there is none."""
    if conv_mode not in conv_templates:
        raise InputError(f"unknown conversation mode '{conv_mode}' (available: {', '.join(sorted(conv_templates))})")
    return conv_templates[conv_mode].copy()


def build_prompt(question: str, conv_mode: str = "vicuna_v1", with_image: bool = True, with_video: bool = False) -> str:
    """One user turn (with `<image>\\n` in front when an image goes with it, `<video>\\n` when a video does: both
    for a prompt with both, image first), ready for the assistant."""
    conv = conversation_template(conv_mode)
    if with_video and "<video>" not in question:
        question = "<video>\n" + question
    if with_image and "<image>" not in question:
        question = "<image>\n" + question
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()
