"""Training recipes: dataclasses loaded from YAML and validated on load, before any work starts.

A recipe names everything that decides the trained weights except the data paths (which may also be
in the recipe) and the output folder:

    name: paper-7b
    model: {preset: m3diff-7b, init_from: llava-hf/llava-onevision-qwen2-7b-ov-hf}
    lora: {rank: 128, alpha: 256}
    optim: {lr_vision: 2.0e-6, lr: 1.0e-5, warmup_ratio: 0.03}
    batch: {global_batch: 256, per_device_batch: 4}
    ...

``load_recipe(path, overrides=["optim.lr=1e-3", ...])`` returns a ``Recipe`` or raises ``RecipeError``
with the file, the key and what is wrong (unknown keys, wrong types, out-of-range values, impossible
batch arithmetic, missing data). The types and ranges are the dataclasses' annotations, checked by
pydantic (strict: ``use_mdp: maybe`` or ``max_steps: 2.5`` is refused, not coerced); what spans several
keys is checked in ``Recipe.validate``.
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pydantic
import torch
import yaml
from annotated_types import Ge, Gt, Interval, Len

from m3diff.config import PRESETS, M3DiffConfig, preset
from m3diff.data.mixture import parse_source
from m3diff.describing import SHIPPED_MODELS

# every section refuses keys it does not know
_STRICT_KEYS = pydantic.ConfigDict(extra="forbid")
Positive = Annotated[float, Gt(0)]
Count = Annotated[int, Ge(0)]
Fraction = Annotated[float, Interval(ge=0, lt=1)]
# the parts of M3DiffModel a recipe may freeze (model.frozen)
FrozenPart = Literal["vision_tower", "mdp", "multi_modal_projector", "image_newline"]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RecipeError(ValueError):
    """A recipe that cannot be used: the message names the file, the key and the fault."""


@dataclass
class ModelRecipe:
    __pydantic_config__ = _STRICT_KEYS

    preset: str = "tiny"
    # M3DiffConfig fields passed to the preset factory (e.g. use_mdp: false for the no-MDP twin)
    config: dict = field(default_factory=dict)
    # A LLaVA-OneVision or M3Diff checkpoint to start from (a folder, a hub id, or "embedded" /
    # "embedded-twin": the shipped models); None trains from scratch (small models)
    init_from: str | None = None
    # "train": a byte-level BPE trained on the training answers (small models); else a tokenizer
    # directory / hub id (the 7B uses Qwen2's from its checkpoint, i.e. init_from)
    tokenizer: str = "train"
    tokenizer_vocab_size: Annotated[int, Ge(260)] = 1024
    # attention of the vision tower, MDP and LLM while training: transformers' "sdpa" (fused) or
    # "eager" (matmuls and a softmax: faster for the embedded model's short sequences on a CPU)
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    # parts that keep the weights they start with: a stage that teaches the LLM alone (the embedded
    # copy stage) skips their backward pass and optimizer state, about half a CPU step
    frozen: list[FrozenPart] = field(default_factory=list)


@dataclass
class LoraRecipe:
    """LoRA on the LLM's attention and MLP projections (paper §4.3: rank 128, alpha 256)."""

    __pydantic_config__ = _STRICT_KEYS

    rank: Annotated[int, Ge(1)] = 128
    alpha: Positive = 256
    dropout: Fraction = 0.05
    target_modules: Annotated[list[str], Len(1)] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass
class OptimRecipe:
    __pydantic_config__ = _STRICT_KEYS

    lr: Positive = 1.0e-5  # everything trained except the vision encoder
    lr_vision: Positive = 2.0e-6
    weight_decay: Annotated[float, Ge(0)] = 0.0
    betas: Annotated[list[Fraction], Len(2, 2)] = field(default_factory=lambda: [0.9, 0.999])
    eps: Positive = 1.0e-8
    warmup_steps: Count | None = None  # linear warm-up; None: warmup_ratio of the steps
    warmup_ratio: Fraction = 0.03
    min_lr_ratio: Annotated[float, Interval(ge=0, le=1)] = 0.0  # the cosine ends at lr × min_lr_ratio
    max_grad_norm: Positive | None = 1.0


@dataclass
class BatchRecipe:
    """global_batch = per_device_batch × gradient accumulation × processes; accumulation is derived."""

    __pydantic_config__ = _STRICT_KEYS

    global_batch: Annotated[int, Ge(1)] = 256
    per_device_batch: Annotated[int, Ge(1)] = 4


@dataclass
class DataRecipe:
    __pydantic_config__ = _STRICT_KEYS

    sources: list[str] = field(default_factory=list)  # DIR[:FORMAT][:WEIGHT] or FILE.jsonl; --data replaces
    every_caption: bool = False  # one sample per reference caption (the paper does this for CLEVR only)
    val: str | None = None  # a dataset folder whose val split is evaluated; None: the first source folder
    val_pairs: Count = 256  # pairs of the val split scored at each evaluation
    instruction: str | None = None  # None: m3diff.processing.DEFAULT_PROMPT
    # the record's true changes follow the instruction as text (m3diff.facts.facts_prompt), as the
    # change reader's will at inference: the language model learns to copy them (generated data only)
    facts: bool = False


@dataclass
class GroundingRecipe:
    """Grounded training from the generator's ground truth (training/auxiliary.py; ours, not the paper's).

    Auxiliary losses on the features the projector reads, and scene-description samples that teach
    the LLM to read image tokens. Samples without ground truth (real datasets) train on captions only.
    """

    __pydantic_config__ = _STRICT_KEYS

    weight: Annotated[float, Ge(0)] = 1.0  # scale of the summed auxiliary losses beside the caption loss
    scene_share: Annotated[float, Interval(ge=0, le=4)] = 0.2  # scene-description samples added, as a share of the caption samples


@dataclass
class Recipe:
    __pydantic_config__ = _STRICT_KEYS

    name: str = "recipe"
    seed: int = 0
    model: ModelRecipe = field(default_factory=ModelRecipe)
    lora: LoraRecipe | None = field(default_factory=LoraRecipe)  # null: the LLM is fully trained
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    batch: BatchRecipe = field(default_factory=BatchRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    grounding: GroundingRecipe | None = None  # null: caption loss only (the paper's recipe)
    max_steps: Annotated[int, Ge(1)] | None = None  # optimizer steps; None: `epochs` over the training samples
    epochs: Positive = 1.0
    precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate's mixed_precision: no | bf16 | fp16
    gradient_checkpointing: bool = False
    checkpoint_every: Count = 500  # optimizer steps between checkpoints (0: only the last)
    keep_checkpoints: Count = 2
    eval_every: Count = 0  # optimizer steps between evaluations on the val split (0: only at the end)
    eval_max_new_tokens: Annotated[int, Ge(1)] = 128
    log_every: Count = 10
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # dtype of the final safetensors: float32 | float16 | bfloat16
    num_threads: Annotated[int, Ge(1)] | None = None  # torch CPU threads per process; None: torch's default

    # -- what spans several keys (each key's type and range are its annotation) -----------------
    def validate(self, where: str = "recipe") -> "Recipe":
        def fail(key, msg):
            raise RecipeError(f"{where}: {key}: {msg}")

        b = self.batch
        if b.global_batch % b.per_device_batch:
            fail("batch", f"global_batch {b.global_batch} is not a multiple of per_device_batch "
                          f"{b.per_device_batch} (global = per-device × accumulation × processes)")
        if self.model.tokenizer == "train" and self.model.init_from:
            fail("model.tokenizer", "a model started from a checkpoint keeps its tokenizer: set tokenizer to that "
                                    "checkpoint (or leave init_from empty to train from scratch)")

        if self.model.frozen and self.grounding is not None:
            fail("model.frozen", "grounding trains the vision features: set grounding: null in a stage that "
                                 f"freezes {', '.join(self.model.frozen)}")
        check_model_config(self.model.config, where)
        if self.model.preset not in PRESETS:
            fail("model.preset", f"unknown preset {self.model.preset!r}; known: {', '.join(sorted(PRESETS))}")
        if self.model.init_from is None:  # the config is built from the preset: check its fields now
            try:
                kwargs = {"vocab_size": self.model.tokenizer_vocab_size} if self.model.tokenizer == "train" else {}
                preset(self.model.preset, **{**kwargs, **self.model.config})
            except (TypeError, ValueError) as exc:
                fail("model.config", str(exc).splitlines()[0])
        return self

    def accumulation(self, num_processes: int) -> int:
        """Micro-batches per process per optimizer step; RecipeError when the arithmetic is impossible."""
        per_step = self.batch.per_device_batch * num_processes
        if self.batch.global_batch % per_step:
            raise RecipeError(
                f"batch: global_batch {self.batch.global_batch} is not a multiple of per_device_batch "
                f"{self.batch.per_device_batch} × {num_processes} processes = {per_step}"
            )
        return self.batch.global_batch // per_step

    def check_data(self, sources: list[str]) -> list[str]:
        """The data sources to use (``sources`` replaces the recipe's); each must exist."""
        sources = list(sources) or list(self.data.sources)
        if not sources:
            raise RecipeError("data: no training data: give --data DIR (or FILE.jsonl), or data.sources in the recipe")

        for key, spec in [("data", s) for s in sources] + ([("data.val", self.data.val)] if self.data.val else []):
            try:
                path = Path(spec) if spec.endswith(".jsonl") else parse_source(spec).path
            except ValueError as exc:
                raise RecipeError(f"{key}: {exc}") from None
            if not path.exists():
                raise RecipeError(f"{key}: {path} does not exist (from {spec!r}); make it with `m3diff synth` or "
                                  "`m3diff data mix`, or fix the path")
        return sources

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "recipe") -> "Recipe":
        """A recipe as ``to_dict`` wrote it (run.json), every key checked as on load."""
        try:  # through JSON: strict mode takes a mapping for a dataclass there, and YAML gives nothing JSON lacks
            return pydantic.TypeAdapter(cls).validate_json(json.dumps(raw, default=str), strict=True)
        except pydantic.ValidationError as exc:
            raise RecipeError(_first_error(exc, where)) from None


@dataclass
class RunRecord:
    """run.json: what a training run was (its recipe, data and schedule), written when it starts."""

    recipe: Recipe
    sources: list[str]
    samples: int
    total_steps: int
    world_size: int
    accumulation: int
    precision: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, path) -> "RunRecord":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or not fields <= set(data):
            raise RecipeError(f"{path}: not a run.json of `m3diff train` (it holds {', '.join(fields)})")
        return cls(**{**{k: data[k] for k in fields}, "recipe": Recipe.from_dict(data["recipe"], f"{path}: recipe")})


def check_model_config(config: dict, where: str = "recipe") -> None:
    """Type-check ``model.config`` against M3DiffConfig's fields (a dataclass in transformers 5): the config
    class stores what it is given, so ``use_mdp: maybe`` would be saved as the (true) string "maybe" and
    ``mdp_dept: 3`` ignored. Fields typed with another library's classes (the sub-configs) are not checked."""
    hints = typing.get_type_hints(M3DiffConfig, localns={"torch": torch})
    for key, value in config.items():
        if key not in hints or key.startswith("_"):
            raise RecipeError(f"{where}: model.config.{key}: not a field of M3DiffConfig "
                              f"(e.g. use_mdp, mdp_layers, mdp_depth, mdp_num_heads, mdp_mlp_ratio)")
        try:
            adapter = pydantic.TypeAdapter(hints[key])
        except pydantic.PydanticSchemaGenerationError:
            continue
        try:
            adapter.validate_json(json.dumps(value), strict=True)
        except pydantic.ValidationError as exc:
            raise RecipeError(_first_error(exc, where, f"model.config.{key}")) from None


# what a reader of the recipe is told, by pydantic's error type
_EXPECTED = {"int_type": "expected an integer", "int_parsing": "expected an integer", "int_from_float": "expected an integer",
             "float_type": "expected a number", "float_parsing": "expected a number", "bool_type": "expected true or false",
             "bool_parsing": "expected true or false", "string_type": "expected a string", "list_type": "expected a list",
             "dataclass_type": "expected a mapping", "dict_type": "expected a mapping", "none_required": "expected null"}


def _key(prefix: str, loc: tuple) -> str:
    """pydantic's location as the recipe writes it: model.config.mdp_layers[1]; a union member's tag is dropped."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[a-z_][a-z0-9_]*", part) and part not in ("int", "float", "str", "bool", "list", "dict"):
            out += f".{part}" if out else part
    return out or "recipe"


def _first_error(exc: pydantic.ValidationError, where: str, prefix: str = "") -> str:
    err = exc.errors()[0]
    key, kind = _key(prefix, err["loc"]), err["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{where}: unknown key {key}"
    what = _EXPECTED.get(kind) or err["msg"][0].lower() + err["msg"][1:]
    return f"{where}: {key}: {what}, got {json.dumps(err['input'])}"


# ------------------------------------------------------------------------------------------- loading
class _RecipeYAML(yaml.SafeLoader):
    """YAML 1.1 reads 1e-5 (no dot) as a string; a recipe means the number."""


_RecipeYAML.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                  list("-+0123456789."))


def load_recipe(path, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe, apply ``key.sub=value`` overrides (values are YAML), build and validate it."""
    path = Path(path)
    if not path.is_file():
        known = sorted(p.stem for p in (Path(__file__).parent / "recipes").glob("*.yaml"))
        bundled = Path(__file__).parent / "recipes" / f"{path.name}.yaml"
        if bundled.is_file():  # `--recipe tiny-cpu` names a bundled recipe
            path = bundled
        else:
            raise RecipeError(f"{path}: no such recipe file (bundled recipes: {', '.join(known)})")
    try:
        raw = yaml.load(path.read_text(), Loader=_RecipeYAML) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r}: write KEY=VALUE, e.g. optim.lr=1e-3")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.load(value, Loader=_RecipeYAML)
    if raw.get("precision") is False:  # YAML 1.1 reads a bare `no` (accelerate's name for float32) as false
        raw["precision"] = "no"
    recipe = Recipe.from_dict(raw, str(path))

    # the shipped models by name, so a recipe that continues them runs from any directory
    for key in ("init_from", "tokenizer"):
        if getattr(recipe.model, key) in SHIPPED_MODELS:
            setattr(recipe.model, key, str(SHIPPED_MODELS[getattr(recipe.model, key)]))
    return recipe.validate(str(path))
