"""PairProcessor: a (before, after) pair of images of any mode and size → M3Diff's model inputs.

The prompt template (one for training, evaluation and the app), Qwen2 chat format:

    <|im_start|>user
    <image><image>
    {instruction}<|im_end|>
    <|im_start|>assistant
    {caption}<|im_end|>

Each ``<image>`` expands to the image's tokens (patch grid + one image_newline), the before image
first. Training puts the loss on ``{caption}<|im_end|>`` only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import BatchFeature, LlavaOnevisionProcessor
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)
from transformers.processing_utils import ProcessorMixin

from m3diff.config import IMAGE_TOKEN, VIDEO_TOKEN, M3DiffConfig
from m3diff.facts import ChangeFact, facts_prompt
from m3diff.images import load_image

DEFAULT_PROMPT = (
    "The first image is before and the second is after. Describe every difference between them: "
    "which object, where it is, and how it changed."
)
IGNORE_INDEX = -100  # label value the loss skips


def facts_instruction(instruction: str | None, changes: Sequence[ChangeFact]) -> str:
    """The instruction followed by the changes a change reader read (or the generator recorded), as
    the text the language model copies them from (``m3diff.facts.facts_prompt``)."""
    return f"{instruction or DEFAULT_PROMPT}\n{facts_prompt(changes)}"


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the summed cross-entropy of the answer tokens ``encode_pairs`` labelled (label !=
    IGNORE_INDEX; position t predicts token t + 1) and how many there are: ([B], [B])."""
    import torch.nn.functional as F

    target = labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    return ce.sum(1), (target != IGNORE_INDEX).sum(1)


class PairProcessor(LlavaOnevisionProcessor):
    """LLaVA-OneVision's processor without the video slot (which needs torchvision), plus pair helpers."""

    attributes = ["image_processor", "tokenizer"]

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens=None,
        vision_feature_select_strategy="full",
        chat_template=None,
        image_token=IMAGE_TOKEN,
        video_token=VIDEO_TOKEN,
        vision_aspect_ratio="anyres_max_9",
        **kwargs,
    ):
        # Same fields as LlavaOnevisionProcessor.__init__, minus the video processor.
        self.num_image_tokens = num_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token = image_token
        self.video_token = video_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
        self.vision_aspect_ratio = vision_aspect_ratio
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def for_config(cls, config: M3DiffConfig, tokenizer) -> "PairProcessor":
        """A processor matching a model config: image size, patch grid, image token."""
        side = config.vision_config.image_size
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": side, "width": side},
            crop_size={"height": side, "width": side},
            image_grid_pinpoints=[[side, side]],
            image_mean=[0.5, 0.5, 0.5],  # SigLIP's normalisation, as LLaVA-OneVision's released processor
            image_std=[0.5, 0.5, 0.5],
        )
        if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != config.image_token_id:
            raise ValueError(
                f"the tokenizer's {IMAGE_TOKEN} id ({tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}) differs from "
                f"the config's image_token_id ({config.image_token_id})"
            )
        return cls(
            image_processor, tokenizer, num_image_tokens=config.patch_grid**2,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            chat_template=tokenizer.chat_template,
        )

    def prompt(self, instruction: str | None = None) -> str:
        """The user turn and the assistant header, with two image slots."""
        return (
            f"<|im_start|>user\n{self.image_token}{self.image_token}\n{instruction or DEFAULT_PROMPT}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    def encode_pairs(
        self,
        pairs: Sequence[tuple],
        answers: Sequence[str] | None = None,
        instruction: str | Sequence[str | None] | None = None,
    ) -> BatchFeature:
        """Model inputs for a batch of (before, after) pairs.

        Images may be paths, bytes, arrays or PIL images of any mode and size (see ``m3diff.images``).
        ``instruction`` is one for the whole batch or one per pair (None: the default prompt).
        With ``answers`` the captions are appended and ``labels`` mark them (the rest is IGNORE_INDEX):
        the training batch. Padding is on the left, so generation continues every row at its end.
        """
        if not pairs:
            raise ValueError("encode_pairs needs at least one (before, after) pair")
        images = [[load_image(b, name="before image"), load_image(a, name="after image")] for b, a in pairs]
        if instruction is None or isinstance(instruction, str):
            instruction = [instruction] * len(pairs)
        if len(instruction) != len(pairs):
            raise ValueError(f"{len(instruction)} instructions for {len(pairs)} pairs")
        prompts = [self.prompt(i) for i in instruction]
        texts = prompts
        if answers is not None:
            if len(answers) != len(pairs):
                raise ValueError(f"{len(answers)} answers for {len(pairs)} pairs")
            texts = [p + answer.strip() + "<|im_end|>" for p, answer in zip(prompts, answers)]
        batch = self(images=images, text=texts, return_tensors="pt", padding=True)
        if answers is not None:
            batch["labels"] = self._answer_labels(batch["input_ids"], batch["attention_mask"], prompts)
        return batch

    def _answer_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        labels = input_ids.clone()
        labels[attention_mask == 0] = IGNORE_INDEX
        start = input_ids.shape[1] - attention_mask.sum(1)  # first real token of each row (left padding)
        cache: dict[str, torch.Tensor] = {}
        for row, (s, prompt) in enumerate(zip(start.tolist(), prompts)):
            if prompt not in cache:
                expanded = prompt.replace(self.image_token, self.image_token * (self.num_image_tokens + 1))
                cache[prompt] = torch.tensor(self.tokenizer(expanded, add_special_tokens=False)["input_ids"])
            prompt_ids = cache[prompt]
            span = input_ids[row, s : s + len(prompt_ids)]
            if not torch.equal(span, prompt_ids):  # the answer merged into the prompt's last token
                raise ValueError("the prompt does not tokenize the same with and without the answer")
            labels[row, s : s + len(prompt_ids)] = IGNORE_INDEX
        return labels

    def decode_captions(self, generated: torch.Tensor) -> list[str]:
        """Caption text of generated token ids (prompt already stripped)."""
        return [t.strip() for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
