"""The tokenizer of the project's own small LLaVA, trained offline on the synthetic task's text.

A Llama-style BPE with byte fallback, small enough for a tiny decoder (about
750 pieces), built with the ``tokenizers`` library from a corpus that this
module writes itself: the ``vicuna_v1`` conversation template, every question
template of ``llava.data.synthetic`` filled with every colour and shape, every
answer, the OCR words, and LLaVA's answer-format instructions. Nothing is
downloaded. Building takes well under a second and gives the same vocabulary
every time.

Layout, as in Llama's tokenizer:

- ids 0-3: ``<unk>``, ``<s>`` (bos), ``</s>`` (eos), ``<pad>``; id 4: ``<image>``,
  an added special token (LLaVA's code still splits prompts on the string
  ``<image>`` and puts -200 there; the id exists so that the string never
  falls apart into pieces);
- 256 byte pieces ``<0x00>`` .. ``<0xFF>``: any text encodes, nothing is unknown;
- every printable ASCII character as a piece: any OCR word or number encodes;
- merges learnt on the corpus: each word of the task is one piece, digits are
  always single pieces (as in Llama), punctuation and newlines are their own
  pieces, and a word after a space starts with ``▁``.

Encoding with ``add_special_tokens=True`` puts ``<s>`` in front (a
TemplateProcessing post-processor); it never appends ``</s>``. Decoding with
``skip_special_tokens=True`` gives back the text: ``decode(tok("red").input_ids,
skip_special_tokens=True) == "red"``.

Usage::

    from llava.data.tokenizer import build_tokenizer
    tok = build_tokenizer()              # transformers.PreTrainedTokenizerFast
    tok.save_pretrained("checkpoints/shapes-llava")

    python -m llava.data.tokenizer --out checkpoints/shapes-llava

``transformers.AutoTokenizer.from_pretrained(dir)`` loads the saved folder back.
"""

from __future__ import annotations

import argparse
import itertools
import json
import string
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from llava.data import synthetic

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", "<image>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE)  # ids 0 .. 4, in this order
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
ALPHABET = sorted(set(string.printable) - set(string.whitespace) | {"\n", "▁"})
MODEL_MAX_LENGTH = 2048

# LLaVA's vicuna_v1 template: system prompt, then "USER: ... ASSISTANT: ...</s>".
VICUNA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's questions.")
# Instructions that LLaVA's evaluation appends to questions (EVAL_FORMATS.md).
EVAL_INSTRUCTIONS = (
    synthetic.SHORT_ANSWER_PROMPT,
    "Answer with the option's letter from the given choices directly.",
)


def training_corpus() -> list[str]:
    """The text the BPE merges are learnt from: one vicuna_v1 conversation per line."""
    answers = (list(synthetic.COLORS) + list(synthetic.SHAPES) + ["yes", "no"]
               + ["left", "right", "top", "bottom"] + [str(d) for d in range(10)]
               + list(synthetic.OCR_WORDS))
    fills = [{"color": color, "shape": shape, "plural": synthetic.PLURALS[shape]}
             for color, shape in itertools.product(synthetic.COLORS, synthetic.SHAPES)]
    questions = sorted({template.format(**fill)
                        for template in synthetic.TEMPLATES.values() for fill in fills})
    lines = [_conversation(question, answer)
             for question, answer in zip(questions, itertools.cycle(answers))]
    lines += questions  # each also at the start of a text, where it has no "\n" before it
    lines += [f"ASSISTANT: {answer}" for answer in answers]
    lines += [f"USER: {instruction}" for instruction in EVAL_INSTRUCTIONS]
    return lines


def _conversation(question: str, answer: str) -> str:
    """One vicuna_v1 turn as LLaVA writes it, without the special tokens ``<image>`` and ``</s>``."""
    return (f"{VICUNA_V1_SYSTEM} USER: \n{question}\n{synthetic.SHORT_ANSWER_PROMPT} "
            f"ASSISTANT: {answer}")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the BPE on ``training_corpus()`` and wrap it for transformers."""
    backend = _with_byte_fallback(_train_bpe(training_corpus()))
    backend.pre_tokenizer = _pre_tokenizer()
    backend.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0),  # the space the pre-tokenizer put before the first word
    ])
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                for token in SPECIAL_TOKENS])
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Newlines, punctuation and each digit alone; "▁" marks a preceding space (Llama's convention)."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])


def _train_bpe(corpus: list[str]) -> Tokenizer:
    """A BPE trained until every word of the corpus is one piece (the vocab bound is never reached)."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS + BYTE_TOKENS),
        initial_alphabet=ALPHABET,
        limit_alphabet=len(ALPHABET),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def _with_byte_fallback(trained: Tokenizer) -> Tokenizer:
    """The trained BPE rebuilt with byte fallback; the byte pieces become ordinary vocabulary.

    The trainer only knows special tokens and characters, so the byte pieces
    go in as special tokens (which keeps their ids 5 .. 260) and come out here
    as plain pieces of the model's vocabulary.
    """
    model = json.loads(trained.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" "))
              for merge in model["merges"]]
    return Tokenizer(models.BPE(vocab=model["vocab"], merges=merges, unk_token=UNK,
                                byte_fallback=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m llava.data.tokenizer",
        description="Build the small LLaVA's tokenizer and save it with save_pretrained.")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    args = parser.parse_args(argv)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(args.out)
    print(f"wrote a tokenizer of {len(tokenizer)} tokens to {args.out}")


if __name__ == "__main__":
    main()
