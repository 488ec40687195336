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
with the file, the key and what is wrong (unknown keys, wrong types, impossible batch arithmetic,
missing data).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RecipeError(ValueError):
    """A recipe that cannot be used: the message names the file, the key and the fault."""


@dataclass
class ModelRecipe:
    preset: str = "tiny"
    # M3DiffConfig fields passed to the preset factory (e.g. use_mdp: false for the no-MDP twin)
    config: dict = field(default_factory=dict)
    # A LLaVA-OneVision or M3Diff checkpoint to start from (a folder, a hub id, or "embedded" /
    # "embedded-twin": the shipped models); None trains from scratch (small models)
    init_from: str | None = None
    # "train": a byte-level BPE trained on the training answers (small models); else a tokenizer
    # directory / hub id (the 7B uses Qwen2's from its checkpoint, i.e. init_from)
    tokenizer: str = "train"
    tokenizer_vocab_size: int = 1024
    # attention of the vision tower, MDP and LLM while training: transformers' "sdpa" (fused) or
    # "eager" (matmuls and a softmax: faster for the embedded model's short sequences on a CPU)
    attn_implementation: str = "sdpa"


@dataclass
class LoraRecipe:
    """LoRA on the LLM's attention and MLP projections (paper §4.3: rank 128, alpha 256)."""

    rank: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass
class OptimRecipe:
    lr: float = 1.0e-5  # everything trained except the vision encoder
    lr_vision: float = 2.0e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    warmup_steps: int | None = None  # linear warm-up; None: warmup_ratio of the steps
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0  # the cosine ends at lr × min_lr_ratio
    max_grad_norm: float | None = 1.0


@dataclass
class BatchRecipe:
    """global_batch = per_device_batch × gradient accumulation × processes; accumulation is derived."""

    global_batch: int = 256
    per_device_batch: int = 4


@dataclass
class DataRecipe:
    sources: list[str] = field(default_factory=list)  # DIR[:FORMAT][:WEIGHT] or FILE.jsonl; --data replaces
    every_caption: bool = False  # one sample per reference caption (the paper does this for CLEVR only)
    val: str | None = None  # a dataset folder whose val split is evaluated; None: the first source folder
    val_pairs: int = 256  # pairs of the val split scored at each evaluation
    instruction: str | None = None  # None: m3diff.processing.DEFAULT_PROMPT


@dataclass
class GroundingRecipe:
    """Grounded training from the generator's ground truth (training/auxiliary.py; ours, not the paper's).

    Auxiliary losses on the features the projector reads, and scene-description samples that teach
    the LLM to read image tokens. Samples without ground truth (real datasets) train on captions only.
    """

    weight: float = 1.0  # scale of the summed auxiliary losses beside the caption loss
    scene_share: float = 0.2  # scene-description samples added, as a share of the caption samples


@dataclass
class Recipe:
    name: str = "recipe"
    seed: int = 0
    model: ModelRecipe = field(default_factory=ModelRecipe)
    lora: LoraRecipe | None = field(default_factory=LoraRecipe)  # null: the LLM is fully trained
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    batch: BatchRecipe = field(default_factory=BatchRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    grounding: GroundingRecipe | None = None  # null: caption loss only (the paper's recipe)
    max_steps: int | None = None  # optimizer steps; None: `epochs` over the training samples
    epochs: float = 1.0
    precision: str = "no"  # accelerate's mixed_precision: no | bf16 | fp16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500  # optimizer steps between checkpoints (0: only the last)
    keep_checkpoints: int = 2
    eval_every: int = 0  # optimizer steps between evaluations on the val split (0: only at the end)
    eval_max_new_tokens: int = 128
    log_every: int = 10
    save_dtype: str = "float32"  # dtype of the final safetensors: float32 | float16 | bfloat16
    num_threads: int | None = None  # torch CPU threads per process; None: torch's default

    # -- checks that need no data and no model ----------------------------------------------------
    def validate(self, where: str = "recipe") -> "Recipe":
        def fail(key, msg):
            raise RecipeError(f"{where}: {key}: {msg}")

        b = self.batch
        if b.per_device_batch < 1:
            fail("batch.per_device_batch", f"must be >= 1, got {b.per_device_batch}")
        if b.global_batch < 1:
            fail("batch.global_batch", f"must be >= 1, got {b.global_batch}")
        if b.global_batch % b.per_device_batch:
            fail("batch", f"global_batch {b.global_batch} is not a multiple of per_device_batch "
                          f"{b.per_device_batch} (global = per-device × accumulation × processes)")
        if self.precision not in ("no", "bf16", "fp16"):
            fail("precision", f"must be one of no, bf16, fp16; got {self.precision!r}")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            fail("save_dtype", f"must be one of float32, float16, bfloat16; got {self.save_dtype!r}")
        if self.max_steps is not None and self.max_steps < 1:
            fail("max_steps", f"must be >= 1 or null, got {self.max_steps}")
        if self.max_steps is None and not self.epochs > 0:
            fail("epochs", f"must be > 0 when max_steps is null, got {self.epochs}")
        o = self.optim
        for key in ("lr", "lr_vision"):
            if not getattr(o, key) > 0:
                fail(f"optim.{key}", f"must be > 0, got {getattr(o, key)}")
        if len(o.betas) != 2 or not all(0 <= x < 1 for x in o.betas):
            fail("optim.betas", f"must be two numbers in [0, 1), got {o.betas}")
        if not 0 <= o.warmup_ratio < 1:
            fail("optim.warmup_ratio", f"must be in [0, 1), got {o.warmup_ratio}")
        if not 0 <= o.min_lr_ratio <= 1:
            fail("optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
        if self.lora is not None:
            if self.lora.rank < 1 or self.lora.alpha <= 0:
                fail("lora", f"rank must be >= 1 and alpha > 0, got rank {self.lora.rank}, alpha {self.lora.alpha}")
            if not self.lora.target_modules:
                fail("lora.target_modules", "must name at least one projection")
        for key in ("checkpoint_every", "eval_every", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 0:
                fail(key, f"must be >= 0, got {getattr(self, key)}")
        if self.grounding is not None:
            if self.grounding.weight < 0:
                fail("grounding.weight", f"must be >= 0, got {self.grounding.weight}")
            if not 0 <= self.grounding.scene_share <= 4:
                fail("grounding.scene_share", f"must be in [0, 4], got {self.grounding.scene_share}")
        if self.model.attn_implementation not in ("sdpa", "eager"):
            fail("model.attn_implementation", f"must be sdpa or eager, got {self.model.attn_implementation!r}")
        if self.data.val_pairs < 0:
            fail("data.val_pairs", f"must be >= 0, got {self.data.val_pairs}")
        if self.model.tokenizer == "train" and self.model.init_from:
            fail("model.tokenizer", "a model started from a checkpoint keeps its tokenizer: set tokenizer to that "
                                    "checkpoint (or leave init_from empty to train from scratch)")
        from m3diff.config import PRESETS, preset

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
        from m3diff.data.mixture import parse_source  # the one parser of DIR[:FORMAT][:WEIGHT], as training reads it

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


def check_model_config(config: dict, where: str = "recipe") -> None:
    """Type-check ``model.config`` against M3DiffConfig's annotated fields: the config class stores what it
    is given, so ``use_mdp: maybe`` would be saved as the (true) string "maybe" and ``mdp_dept: 3`` ignored."""
    from m3diff.config import M3DiffConfig

    annotations: dict = {}
    for cls in reversed(M3DiffConfig.__mro__):
        annotations.update(getattr(cls, "__annotations__", {}))
    known = {k for k in annotations if not k.startswith("_")} | {"vision_config", "text_config"}
    for key, value in config.items():
        if key not in known:
            raise RecipeError(f"{where}: model.config.{key}: not a field of M3DiffConfig "
                              f"(e.g. use_mdp, mdp_layers, mdp_depth, mdp_num_heads, mdp_mlp_ratio)")
        tp = annotations.get(key)
        if isinstance(tp, str):
            try:  # the fields' annotations are strings (postponed evaluation); those of plain types evaluate
                tp = eval(tp, {"list": list, "tuple": tuple, "dict": dict, "int": int, "float": float,
                               "bool": bool, "str": str, "None": None})
            except Exception:  # names another module's type (torch.dtype, a config class): not checked here
                continue
        if tp is None:
            continue
        try:
            _coerce(_plain(tp), value, where, f"model.config.{key}")
        except _Unchecked:
            continue


class _Unchecked(Exception):
    pass


def _plain(tp):
    """``tp`` with tuples read as lists (YAML has no tuple) and a bare ``list`` as a list of anything."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_plain(a) for a in typing.get_args(tp))]
    if origin is tuple or tp is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return list[_plain(args[0])] if len(args) == 1 or len(set(args)) == 1 else list[typing.Any]
    if origin is list:
        return list[_plain(typing.get_args(tp)[0])] if typing.get_args(tp) else list[typing.Any]
    if tp is list:
        return list[typing.Any]
    if tp in (bool, int, float, str, dict, typing.Any, type(None)) or origin is dict:
        return tp
    raise _Unchecked


# ------------------------------------------------------------------------------------------- loading
def load_recipe(path, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe, apply ``key.sub=value`` overrides (values are YAML), build and validate it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        known = sorted(p.stem for p in (Path(__file__).parent / "recipes").glob("*.yaml"))
        bundled = Path(__file__).parent / "recipes" / f"{path.name}.yaml"
        if bundled.is_file():  # `--recipe tiny-cpu` names a bundled recipe
            path = bundled
        else:
            raise RecipeError(f"{path}: no such recipe file (bundled recipes: {', '.join(known)})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
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
        node[parts[-1]] = yaml.safe_load(value)
    if raw.get("precision") is False:  # YAML 1.1 reads a bare `no` (accelerate's name for float32) as false
        raw["precision"] = "no"
    recipe = _build(Recipe, raw, str(path), "")
    from m3diff.describing import EMBEDDED_DIR, EMBEDDED_TWIN_DIR

    # the shipped models by name, so a recipe that continues them runs from any directory
    named = {"embedded": EMBEDDED_DIR, "embedded-twin": EMBEDDED_TWIN_DIR}
    for key in ("init_from", "tokenizer"):
        if getattr(recipe.model, key) in named:
            setattr(recipe.model, key, str(named[getattr(recipe.model, key)]))
    return recipe.validate(str(path))


def _build(cls, raw, where: str, prefix: str):
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: {prefix.rstrip('.') or 'recipe'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise RecipeError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(prefix + k for k in unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, where, prefix + k) for k, v in raw.items()}
    return cls(**kwargs)


def _coerce(tp, value, where: str, key: str):
    if tp is typing.Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise RecipeError(f"{where}: {key}: expected null, got {value!r}")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise RecipeError(f"{where}: {key}: must not be null")
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, where, key)
            except RecipeError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: {key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: {key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads 1e-5 (no dot) as a string; accept it as the number a person meant
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: {key}: expected a string, got {value!r}")
        return value
    raise RecipeError(f"{where}: {key}: unsupported type {tp}")
