"""Byte-level BPE tokenizers for small M3Diff models, trained on their own captions.

The 7B model uses Qwen2's tokenizer from its checkpoint; small models (the embedded default, test
models) get a tokenizer trained here, with the special tokens at fixed ids so a config can name them.
"""
from __future__ import annotations

from collections.abc import Iterable

from m3diff.config import IMAGE_TOKEN, SPECIAL_TOKENS, VIDEO_TOKEN

# Qwen2-style chat template: the prompt in processing.py renders to exactly this.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A ``PreTrainedTokenizerFast`` with ids 0..4 = <pad>, <|im_start|>, <|im_end|>, <image>, <video>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token=None,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
        chat_template=CHAT_TEMPLATE,
        padding_side="left",  # generation pads on the left
    )
    return fast
