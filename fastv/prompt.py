"""The prompt the measuring commands (`fastv bench`, `fastv flops`) run on, and the check that it fits.

Their prompt has `text_tokens` non-image tokens around one image: LLaVA-1.5's system prompt and "USER:"
(`SYSTEM_TOKENS`) before it, the rest (a short question) after it. With the image's visual tokens, counted
unpruned (what every method is compared with), and the tokens to generate, it must fit the model's context;
both commands refuse a prompt that does not before any model is built. Part of the shared layer below the
commands (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

SYSTEM_TOKENS = 35  # LLaVA-1.5's vicuna_v1 system prompt and "USER:", before the image
TEXT_TOKENS = SYSTEM_TOKENS + 20  # and a short question after it


def check_prompt_fits(config, text_tokens: int, image_size: tuple[int, int] | None, new_tokens: int) -> None:
    """InputError unless `text_tokens` non-image tokens, the image's visual tokens unpruned (what every method
    is compared with) and `new_tokens` new ones fit the model's context, as generation requires (a prompt of
    L tokens gets at most context - L new ones). `fastv bench` and `fastv flops` check this before any work.
    `image_size` None: a Video-LLaVA video instead of the image."""
    from llava.errors import InputError

    visual = config.unpruned_image_tokens(image_size) if image_size is not None else config.unpruned_video_tokens
    context = config.text.max_position_embeddings
    if text_tokens + visual + new_tokens > context:
        what = "image" if image_size is not None else "video"
        raise InputError(f"--text-tokens {text_tokens}: {text_tokens} text tokens, the {what}'s {visual} visual tokens "
                         f"(unpruned) and {new_tokens} new token(s) do not fit the model's context of {context} tokens")
