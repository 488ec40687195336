"""Shared fixtures: tiny models in the transformers test style (seconds on a CPU, no network)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

CORPUS = [
    "the red cube on the left moved behind the blue sphere",
    "a small green cylinder appeared near the back of the table",
    "the man in the white shirt turned to face the window",
    "the text on the sign changed from open to closed",
    "there are now three yellow balls instead of two",
]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The test process owns its torch thread count, as any process does (DiffCaptioner never sets it
    per call): the tiny models here run fastest on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from m3diff.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS * 20, vocab_size=320)


@pytest.fixture(scope="session")
def tiny_config(tiny_tokenizer):
    from m3diff.config import preset

    return preset("tiny", vocab_size=len(tiny_tokenizer))


@pytest.fixture
def make_model(tiny_config):
    """A tiny M3Diff with fixed random weights; keyword arguments override config fields."""
    from m3diff.config import preset
    from m3diff.modeling import M3DiffForConditionalGeneration

    def make(seed: int = 0, **overrides):
        torch.manual_seed(seed)
        config = preset("tiny", vocab_size=tiny_config.text_config.vocab_size, **overrides)
        return M3DiffForConditionalGeneration(config).eval()

    return make


@pytest.fixture
def processor(tiny_tokenizer, tiny_config):
    from m3diff.processing import PairProcessor

    return PairProcessor.for_config(tiny_config, tiny_tokenizer)


def pair_images(seed: int = 0, size=(48, 48)):
    """A before/after pair: random texture, and the same with a red square painted in."""
    rng = np.random.default_rng(seed)
    before = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    after = before.copy()
    after[8:24, 8:24] = (255, 0, 0)
    return Image.fromarray(before), Image.fromarray(after)


@pytest.fixture
def pair():
    return pair_images()
