"""LLaVA's conventions shared by the model and the prompt code."""

IMAGE_TOKEN_INDEX = -200  # placeholder id of one image in LLaVA's input ids
DEFAULT_IMAGE_TOKEN = "<image>"  # its place in a prompt string
