"""M3DiffForConditionalGeneration: LLaVA-OneVision with the MDP between the vision tower and the projector.

Data flow for a batch of B pairs (2B images, ordered before₀, after₀, before₁, after₁, …):

    pixel_values [2B, 1, 3, H, W] → vision tower → hidden_states[l] for l in mdp_layers, [2B, N, d] each
    → MDP (both images of each pair, eqs. 1–8) → F'1, F'2 [B, N, d]
    → projector → image_newline appended → scattered into the LLM's input embeddings at the <image> slots

Only ``get_image_features`` differs from LLaVA-OneVision; ``generate`` calls it once at prefill, so
the MDP runs once per caption. With ``use_mdp=False`` the parent's method runs unchanged.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionMultiModalProjector,
    LlavaOnevisionPreTrainedModel,
)

from m3diff.config import M3DiffConfig
from m3diff.mdp import MDPKnockout, MDPTrace, MultiScaleDifferentialPerception, Score
from m3diff.reader import ChangeReader, ReaderConfig

logger = logging.getLogger(__name__)


@dataclass
class M3DiffImageFeatures(BaseModelOutputWithPooling):
    """``pooler_output``: per-image LLM-ready features (what LLaVA-OneVision returns); ``mdp_trace``: see
    MDPTrace."""

    mdp_trace: MDPTrace | None = None


def feature_difference(image_features, grid: int) -> torch.Tensor:
    """[B, g, g]: per patch, the L2 norm of the difference between the before and the after image
    tokens the LLM reads (``pooler_output`` of ``get_image_features``: one [g² + 1, D] tensor per
    image, pairs in order, the image_newline last). With the MDP these are P(F′1), P(F′2) after
    eq. (8); without it, the projected vision features — so the same map exists for a model and its
    no-MDP twin, and says where each tells the LLM that the two images differ."""
    n = grid * grid
    feats = torch.stack([f[:n] for f in image_features]).float()  # [2B, N, D]
    diff = (feats[0::2] - feats[1::2]).norm(dim=-1)  # [B, N]
    return diff.reshape(-1, grid, grid).detach().cpu()


class M3DiffPreTrainedModel(LlavaOnevisionPreTrainedModel):
    config_class = M3DiffConfig
    _no_split_modules = ["MDPScale"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Score):
            module.reset_bias()


class M3DiffModel(M3DiffPreTrainedModel, LlavaOnevisionModel):
    def __init__(self, config: M3DiffConfig):
        # LlavaOnevisionModel.__init__ calls post_init() before we could add the MDP, so build here.
        M3DiffPreTrainedModel.__init__(self, config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.mdp = (
            MultiScaleDifferentialPerception(
                dim=config.vision_config.hidden_size,
                layers=config.mdp_layers,
                num_heads=config.mdp_num_heads,
                mlp_ratio=config.mdp_mlp_ratio,
                depth=config.mdp_depth,
            )
            if config.use_mdp
            else None
        )
        self.multi_modal_projector = LlavaOnevisionMultiModalProjector(config)
        embed_std = 1 / math.sqrt(config.text_config.hidden_size)
        self.image_newline = nn.Parameter(torch.randn(config.text_config.hidden_size, dtype=self.dtype) * embed_std)
        self.vocab_size = config.text_config.vocab_size
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        output_mdp_trace: bool = False,
        mdp_knockout: MDPKnockout | list[MDPKnockout | None] | None = None,
        **kwargs,
    ) -> M3DiffImageFeatures:
        """``mdp_knockout``: an ablation of this call only (``m3diff.mdp.MDPKnockout``; one, or one per pair)."""
        kwargs.pop("return_dict", None)
        if self.mdp is None:
            if mdp_knockout is not None and any(k is not None and k.active for k in (
                    [mdp_knockout] if isinstance(mdp_knockout, MDPKnockout) else mdp_knockout)):
                raise ValueError("this model has no MDP (use_mdp=False): there is no scale or ΔF to knock out")
            out = M3DiffImageFeatures(**super().get_image_features(
                pixel_values, image_sizes, vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                vision_aspect_ratio=vision_aspect_ratio, batch_num_images=batch_num_images,
                return_dict=True, **kwargs,
            ))
        else:
            out = self._mdp_image_features(pixel_values, image_sizes, batch_num_images, output_mdp_trace,
                                           mdp_knockout, **kwargs)
        return out

    @staticmethod
    def _check_pairs(batch_num_images, what: str) -> None:
        if batch_num_images is None or any(int(n) != 2 for n in batch_num_images):
            raise ValueError(
                f"M3Diff {what} takes exactly two images (before, after) per sample; "
                f"got batch_num_images={None if batch_num_images is None else [int(n) for n in batch_num_images]}. "
                "Use m3diff.PairProcessor to build the inputs."
            )

    def _mdp_image_features(self, pixel_values, image_sizes, batch_num_images, output_mdp_trace, mdp_knockout=None,
                            **kwargs):
        self._check_pairs(batch_num_images, "with use_mdp=True")
        if pixel_values.dim() == 5:  # [2B, patches, 3, H, W]: multi-image inputs carry one crop each
            pixel_values = pixel_values[:, 0]
        vision = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        hidden = [vision.hidden_states[i] for i in self.config.mdp_layers]  # L × [2B, N, d]
        before = [h[0::2] for h in hidden]  # L × [B, N, d]
        after = [h[1::2] for h in hidden]
        fused_1, fused_2, mdp_trace = self.mdp(before, after, with_trace=output_mdp_trace,
                                                eager=self.config._attn_implementation == "eager",
                                                knockout=mdp_knockout)  # [B, N, d] each
        B, N, d = fused_1.shape
        fused = torch.stack([fused_1, fused_2], 1).reshape(2 * B, N, d)  # back to image order
        projected = self.multi_modal_projector(fused)  # [2B, N, D]
        features, _ = self.pack_image_features(
            [p[None] for p in projected], image_sizes, image_newline=self.image_newline,
            vision_aspect_ratio=self.config.vision_aspect_ratio,
        )
        return M3DiffImageFeatures(
            last_hidden_state=vision.last_hidden_state, pooler_output=features, mdp_trace=mdp_trace
        )


class M3DiffForConditionalGeneration(M3DiffPreTrainedModel, LlavaOnevisionForConditionalGeneration):
    """One class for every size: the tiny CPU model and the 7B model differ only in config and weights."""

    def __init__(self, config: M3DiffConfig):
        M3DiffPreTrainedModel.__init__(self, config)
        self.model = M3DiffModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.change_reader = ChangeReader(ReaderConfig.from_dict(config.change_reader)) if config.change_reader else None
        self.post_init()

    def get_image_features(self, pixel_values, image_sizes, output_mdp_trace: bool = False, **kwargs):
        return self.model.get_image_features(pixel_values, image_sizes, output_mdp_trace=output_mdp_trace, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        register_auto_classes()  # the checkpoint key renaming below is looked up by model_type
        return super().from_pretrained(*args, **kwargs)

    @classmethod
    def from_llava_onevision(cls, pretrained: str, **kwargs) -> tuple["M3DiffForConditionalGeneration", list[str]]:
        """Load a plain LLaVA-OneVision checkpoint and add a freshly initialised MDP.

        MDP fields (``mdp_layers``, ``mdp_depth``, …) may be given as keyword arguments; the rest goes
        to ``from_pretrained``. Returns the model and the names of the weights initialised fresh.
        """
        mdp_fields = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("mdp_") or k == "use_mdp"}
        base = LlavaOnevisionConfig.from_pretrained(pretrained)
        config = M3DiffConfig.from_llava_onevision(base, **mdp_fields)
        model, info = cls.from_pretrained(pretrained, config=config, output_loading_info=True, **kwargs)
        fresh = sorted(info["missing_keys"])
        outside = [k for k in fresh if ".mdp." not in f".{k}"]
        if outside:
            logger.warning("weights missing from %s outside the MDP (check the checkpoint): %s", pretrained, outside)
        logger.warning(
            "M3Diff from LLaVA-OneVision %s: %d MDP tensors initialised fresh (%s …); train before use.",
            pretrained, len(fresh), ", ".join(fresh[:3]),
        )
        return model, fresh

    def num_parameters_by_part(self) -> dict[str, int]:
        """Parameter counts as `m3diff info` reports them."""
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        inner = self.model
        parts = {
            "vision": count(inner.vision_tower),
            "projector": count(inner.multi_modal_projector) + inner.image_newline.numel(),
            "language_model": count(inner.language_model) + count(self.lm_head),
            "mdp": count(inner.mdp),
            "change_reader": count(self.change_reader),
        }
        parts["total"] = sum(parts.values())
        return parts


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` / ``AutoModelForImageTextToText`` know ``model_type="m3diff"``.

    Explicit, not at import: importing a module changes no registry. Idempotent: every loader calls it
    (``from_pretrained`` here, ``DiffCaptioner``'s loader, training's ``build_model``).

    Also give ``m3diff`` LLaVA-OneVision's checkpoint key renaming: released LLaVA-OneVision
    checkpoints (and transformers' own saves of them) use the legacy ``language_model.model.*`` layout.
    """
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    register_checkpoint_conversion_mapping(
        "m3diff", get_checkpoint_conversion_mapping("llava_onevision"), overwrite=True
    )
    AutoConfig.register("m3diff", M3DiffConfig, exist_ok=True)
    AutoModel.register(M3DiffConfig, M3DiffModel, exist_ok=True)
    AutoModelForImageTextToText.register(M3DiffConfig, M3DiffForConditionalGeneration, exist_ok=True)
