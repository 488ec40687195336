"""M3DiffConfig: LLaVA-OneVision's configuration plus the fields of the MDP module, and named presets.

The MDP reads the vision tower's ``hidden_states[i]`` for each ``i`` in ``mdp_layers`` (index 0 is
the patch embeddings, index ``k`` the output of encoder layer ``k``), so the paper's "layers 17, 20,
23, 26" are ``mdp_layers=(17, 20, 23, 26)`` on the 26-layer SigLIP of the released LLaVA-OneVision-7B.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig


# Special tokens every M3Diff tokenizer carries; the prompt template in processing.py uses them.
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SPECIAL_TOKENS = ("<pad>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN, VIDEO_TOKEN)


@strict
class M3DiffConfig(LlavaOnevisionConfig):
    r"""
    use_mdp (`bool`, defaults to `True`):
        Route both images of a pair through the Multi-scale Differential Perception module. `False` is
        plain LLaVA-OneVision (the paper's baseline and ablation).
    mdp_layers (`list[int]`, defaults to `[17, 20, 23, 26]`):
        Indices into the vision tower's hidden states that feed the MDP, one scale each.
    mdp_depth (`int`, defaults to 2):
        Number of stacked MDP transformer layers (eqs. 1–6) per scale.
    mdp_num_heads (`int`, defaults to 16):
        Attention heads of the MDP's self- and cross-attention.
    mdp_mlp_ratio (`float`, defaults to 4.0):
        Hidden width of the MDP's MLPs relative to the vision hidden size.
    change_reader (`dict`, *optional*):
        Fields of an `m3diff.reader.ReaderConfig`: the model reads each change of a pair as facts and its
        language model is given them as text (ours; the paper's model has none).
    """

    model_type = "m3diff"

    use_mdp: bool = True
    mdp_layers: list[int] | tuple[int, ...] = (17, 20, 23, 26)
    mdp_depth: int = 2
    mdp_num_heads: int = 16
    mdp_mlp_ratio: float = 4.0
    change_reader: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.mdp_layers = [int(i) for i in self.mdp_layers]
        n_hidden = self.vision_config.num_hidden_layers
        bad = [i for i in self.mdp_layers if not 0 < i <= n_hidden]
        if bad:
            raise ValueError(
                f"mdp_layers {bad} are outside the vision tower's hidden states 1..{n_hidden}"
            )
        if self.use_mdp and not isinstance(self.vision_feature_layer, int):
            raise ValueError("with use_mdp=True the MDP output feeds the projector: vision_feature_layer must be an int")
        if self.vision_config.hidden_size % self.mdp_num_heads:
            raise ValueError(
                f"mdp_num_heads={self.mdp_num_heads} must divide the vision hidden size {self.vision_config.hidden_size}"
            )

    @property
    def patch_grid(self) -> int:
        """Side of the square patch grid of one image (27 for SigLIP-so400m at 384 px)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_image_tokens(self) -> int:
        """LLM tokens per image of a pair: the patch grid plus LLaVA-OneVision's image_newline."""
        return self.patch_grid**2 + 1

    @classmethod
    def from_llava_onevision(cls, config: LlavaOnevisionConfig, **mdp_fields) -> "M3DiffConfig":
        """An M3Diff config that keeps every field of a plain LLaVA-OneVision config."""
        fields = config.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "auto_map"):
            fields.pop(key, None)
        vision = config.vision_config
        fields.setdefault("mdp_layers", paper_mdp_layers(vision.num_hidden_layers))
        fields.setdefault("mdp_num_heads", vision.num_attention_heads)
        fields.update(mdp_fields)
        return cls(**fields)


def paper_mdp_layers(num_vision_layers: int) -> list[int]:
    """The paper's choice, for any depth: the last layer and every third one below it, four in all
    ([17, 20, 23, 26] for the 26-layer SigLIP of LLaVA-OneVision-7B)."""
    return sorted({max(1, num_vision_layers - 3 * k) for k in range(4)})


OUR_TOKENS = MappingProxyType({"image_token_index": 3, "video_token_index": 4})  # ids in our own tokenizers


@dataclass(frozen=True)
class Preset:
    """A named model size: the vision and language towers' shapes and the MDP's. ``build`` makes the
    M3DiffConfig; its keyword arguments override fields (``vocab_size`` goes to the language model)."""

    vision: dict  # SiglipVisionConfig fields
    text: dict  # Qwen2Config fields
    fields: dict  # M3DiffConfig fields: image tokens, MDP, pinpoints

    def build(self, **overrides) -> M3DiffConfig:
        text = dict(self.text)
        if "vocab_size" in overrides:
            text["vocab_size"] = overrides.pop("vocab_size")
        return M3DiffConfig(vision_config=SiglipVisionConfig(**self.vision, vision_use_head=False),
                            text_config=Qwen2Config(**text, tie_word_embeddings=False), **{**self.fields, **overrides})


def _siglip(*, width: int, mlp: int, layers: int, heads: int, image: int, patch: int) -> dict:
    return dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                image_size=image, patch_size=patch)


def _qwen2(*, width: int, mlp: int, layers: int, heads: int, kv_heads: int, vocab: int, positions: int, **more) -> dict:
    return dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, vocab_size=vocab, max_position_embeddings=positions, **more)


# Named presets: `m3diff info --preset NAME`, `M3DiffConfig` factories for tests and training recipes.
# Every language model unties its embeddings (``build`` adds it).
PRESETS: Mapping[str, Preset] = MappingProxyType({
    # LLaVA-OneVision-7B (SigLIP-so400m with the 26 layers the released model uses, Qwen2-7B) + MDP
    "m3diff-7b": Preset(
        vision=_siglip(width=1152, mlp=4304, layers=26, heads=16, image=384, patch=14),
        text=_qwen2(width=3584, mlp=18944, layers=28, heads=28, kv_heads=4, vocab=152064, positions=32768,
                    rope_theta=1000000.0),
        fields=dict(image_token_index=151646, video_token_index=151647, mdp_layers=[17, 20, 23, 26], mdp_depth=2,
                    mdp_num_heads=16)),
    # runs a forward in milliseconds on a CPU: for tests and as the untrained fallback
    "tiny": Preset(vision=_siglip(width=32, mlp=64, layers=4, heads=2, image=32, patch=8),
                   text=_qwen2(width=64, mlp=128, layers=2, heads=4, kv_heads=2, vocab=512, positions=1024),
                   fields=dict(mdp_layers=[2, 3, 4], mdp_depth=2, mdp_num_heads=2, mdp_mlp_ratio=2.0,
                               image_grid_pinpoints=[[32, 32]], **OUR_TOKENS)),
    # The embedded default: trained from scratch on generated pairs, small enough to ship in the wheel.
    # 128-px images in 16-px patches (64 tokens + image_newline each) keep sequences near 200 tokens,
    # so a shared 2-core CPU trains it in about an hour and describes a pair in well under a second.
    "embedded": Preset(vision=_siglip(width=128, mlp=512, layers=4, heads=4, image=128, patch=16),
                       text=_qwen2(width=192, mlp=512, layers=3, heads=4, kv_heads=2, vocab=1024, positions=512),
                       fields=dict(mdp_layers=[2, 4], mdp_depth=2, mdp_num_heads=4, mdp_mlp_ratio=2.0,
                                   image_grid_pinpoints=[[128, 128]], **OUR_TOKENS)),
})


def preset(name: str, **overrides) -> M3DiffConfig:
    try:
        spec = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
    return spec.build(**overrides)
