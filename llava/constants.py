"""LLaVA's conventions shared by the model and the prompt code, and the limits every option shares."""

IMAGE_TOKEN_INDEX = -200  # placeholder id of one image in LLaVA's input ids
DEFAULT_IMAGE_TOKEN = "<image>"  # its place in a prompt string
VIDEO_TOKEN_INDEX = -201  # placeholder id of one video (Video-LLaVA: its frames' tokens, one contiguous block)
DEFAULT_VIDEO_TOKEN = "<video>"
MAX_SEED = 2**63 - 1  # seeds are signed 64-bit integers: torch.Generator.manual_seed and JSON readers hold no more
