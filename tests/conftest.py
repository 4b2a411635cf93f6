import os

import pytest
import torch

from tests import helpers

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread per worker, so two workers share two cores
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A random tiny llava-hf checkpoint (CLIP 3 layers at 112 px = 64 patches; Llama 3 layers, GQA 4/2)."""
    folder = tmp_path_factory.mktemp("tiny-llava")
    helpers.make_tiny_llava(folder)
    return folder


@pytest.fixture(scope="session")
def hf_reference(tiny_llava_dir):
    """transformers' own LlavaForConditionalGeneration loaded from the same folder (fp32)."""
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def loaded(tiny_llava_dir):
    """(tokenizer, model, image_processor, context_len) through our real loader."""
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_llava_dir))


@pytest.fixture(scope="session")
def tiny_next_dir(tmp_path_factory):
    """A random tiny llava-hf LLaVA-NeXT checkpoint: the same CLIP and Llama, anyres over 112-px crops."""
    folder = tmp_path_factory.mktemp("tiny-llava-next")
    helpers.make_tiny_llava_next(folder)
    return folder


@pytest.fixture(scope="session")
def hf_next_reference(tiny_next_dir):
    """transformers' own LlavaNextForConditionalGeneration loaded from the same folder (fp32)."""
    from transformers import LlavaNextForConditionalGeneration

    return LlavaNextForConditionalGeneration.from_pretrained(tiny_next_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def loaded_next(tiny_next_dir):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_next_dir))


@pytest.fixture(scope="session")
def tiny_video_dir(tmp_path_factory):
    """A random tiny llava-hf Video-LLaVA checkpoint: two CLIP towers (3 layers, 112 px: 64 patches + CLS a frame,
    8 frames = 520 video tokens), the same Llama, a tokenizer with <image> and <video>."""
    folder = tmp_path_factory.mktemp("tiny-video-llava")
    helpers.make_tiny_video_llava(folder)
    return folder


@pytest.fixture(scope="session")
def hf_video_reference(tiny_video_dir):
    """transformers' own VideoLlavaForConditionalGeneration loaded from the same folder (fp32)."""
    from transformers import VideoLlavaForConditionalGeneration

    return VideoLlavaForConditionalGeneration.from_pretrained(tiny_video_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def loaded_video(tiny_video_dir):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_video_dir))
