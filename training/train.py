"""The training loop: one stage, as the paper trains M3Diff (§4.3), on accelerate. Read top to bottom.

    recipe → data (samples, fixed order) → tokenizer → model (+ LoRA) → AdamW (two lr groups) → cosine
    → for each optimizer step: micro-batches → loss on answer tokens → backward → clip → step
      → log (tqdm, CSV, TensorBoard) → evaluate on val (analysis/) → checkpoint (exact resume)
    → merge LoRA → save_pretrained (model + processor) → model card

The loss of a step is the mean over every answer token of the global batch (not a mean of per-micro-batch
means), so 1 process × accumulation 2 and 2 processes × accumulation 1 compute the same gradient.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from safetensors.torch import save_file
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast

from analysis.metrics import CaptionScorer, ScorerConfig
from m3diff.config import preset
from m3diff.modeling import M3DiffForConditionalGeneration, register_auto_classes
from m3diff.pipeline import DiffCaptioner, GenerationSettings
from m3diff.processing import DEFAULT_PROMPT, IGNORE_INDEX, PairProcessor, answer_cross_entropy
from m3diff.tokenizer import train_tokenizer
from training.auxiliary import GroundedCaptioner, ModelGrid
from training.card import write_run_card
from training.data import Collator, StepSampler, load_samples, load_val_pairs, scene_samples
from training.checkpoint import (
    MemoryLimitReached,
    TrainingDiverged,
    check_finite,
    drop_rows_after,
    last_good,
    latest_checkpoint,
    load_checkpoint,
    resident_gb,
    save_checkpoint,
)
from training.recipe import Recipe, RunRecord
from training.schedule import lr_lambda


@dataclass
class TrainResult:
    out: Path
    model_dir: Path | None
    step: int
    last_loss: float
    seconds: float


# ------------------------------------------------------------------------------------------ pieces
def build_tokenizer(recipe: Recipe, samples, out: Path, accelerator):
    """The recipe's tokenizer; "train" fits a BPE on the answers once (main process) and reuses it on resume."""
    if recipe.model.tokenizer != "train":
        return AutoTokenizer.from_pretrained(recipe.model.tokenizer)
    path = out / "tokenizer"
    if accelerator.is_main_process and not (path / "tokenizer.json").is_file():
        answers = sorted({s.answer for s in samples})  # sorted: the same vocabulary whatever the order
        prompt = recipe.data.instruction or DEFAULT_PROMPT
        tok = train_tokenizer(answers + [prompt] * 100, vocab_size=recipe.model.tokenizer_vocab_size)
        tok.save_pretrained(str(path))
    accelerator.wait_for_everyone()
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def build_model(recipe: Recipe, tokenizer):
    model = _build_model(recipe, tokenizer)
    model.set_attn_implementation(recipe.model.attn_implementation)  # the MDP follows the model's choice
    return model


def _build_model(recipe: Recipe, tokenizer):
    if recipe.model.init_from:
        register_auto_classes()  # AutoConfig must know model_type "m3diff"
        cfg = AutoConfig.from_pretrained(recipe.model.init_from)
        if getattr(cfg, "model_type", "") == "m3diff":
            # float32 master weights, as from scratch: a checkpoint saved in float16 (save_dtype, as the
            # embedded model ships) would otherwise train in float16 and fail on a CPU
            return M3DiffForConditionalGeneration.from_pretrained(recipe.model.init_from, dtype=torch.float32,
                                                                  **recipe.model.config)
        model, _ = M3DiffForConditionalGeneration.from_llava_onevision(recipe.model.init_from, **recipe.model.config)
        return model
    config = preset(recipe.model.preset, vocab_size=len(tokenizer), **recipe.model.config)
    return M3DiffForConditionalGeneration(config)


def run_precision(precision: str, cuda: bool) -> str:
    """The mixed precision a run uses: the recipe's, except bf16 on a CPU without native bf16 (AVX512-BF16
    or AMX), which trains in float32. There bf16 matrix products fall back to a scalar kernel: a step of
    the embedded recipe took ~16-25 s instead of ~1.5 s on such a CPU (AMD EPYC, AVX2 only), where
    on one with AVX512-BF16 bf16 costs 0.75x the time of float32."""
    if precision != "bf16" or cuda:
        return precision
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if not native:
        warnings.warn("precision: bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) would be ~10x slower: "
                      "training in float32 (run.json records it)", stacklevel=2)
    return precision if native else "no"


def apply_lora(recipe: Recipe, model):
    """LoRA on the LLM's projections; vision encoder, projector, image_newline and MDP fully trained,
    except the parts the recipe freezes (model.frozen)."""
    return freeze(recipe, _apply_lora(recipe, model))


def freeze(recipe: Recipe, model):
    inner = base_model(model).model
    for name in recipe.model.frozen:
        part = getattr(inner, name, None)
        if part is not None:  # e.g. the no-MDP twin has no mdp to freeze
            part.requires_grad_(False)
    return model


def _apply_lora(recipe: Recipe, model):
    if recipe.lora is None:  # from-scratch small models: the whole LLM trains
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets = "|".join(recipe.lora.target_modules)
    config = LoraConfig(
        r=recipe.lora.rank, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
        target_modules=rf".*language_model.*\.({targets})",  # only the LLM: SigLIP has q/k/v_proj too
    )
    model = get_peft_model(model, config)
    inner = model.get_base_model().model
    for module in (inner.vision_tower, inner.multi_modal_projector, inner.mdp):
        if module is not None:
            module.requires_grad_(True)
    inner.image_newline.requires_grad_(True)
    return model


def base_model(model):
    """The M3DiffForConditionalGeneration inside (peft wraps it; LoRA layers stay active in it;
    grounded training wraps it with its auxiliary heads)."""
    if isinstance(model, GroundedCaptioner):
        model = model.model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def captioning_model(model):
    """What gets saved: the (peft-wrapped) captioning model without training-only heads."""
    return model.model if isinstance(model, GroundedCaptioner) else model


def param_groups(recipe: Recipe, model) -> list[dict]:
    """Vision encoder at lr_vision, the rest at lr; no weight decay on biases, norms, image_newline."""
    groups = {(v, d): [] for v in (True, False) for d in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[(".vision_tower." in f".{name}", p.ndim >= 2 and "image_newline" not in name)].append(p)
    o = recipe.optim
    return [
        {"params": ps, "lr": o.lr_vision if vision else o.lr, "weight_decay": o.weight_decay if decay else 0.0,
         "name": f"{'vision' if vision else 'rest'}{'' if decay else '-no-decay'}"}
        for (vision, decay), ps in groups.items() if ps
    ]


def answer_loss_sum(model, batch) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the answer tokens (labels != -100) and their count."""
    loss, n, _ = step_losses(model, batch)
    return loss, n


def step_losses(model, batch) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """The answer loss sum, its token count and the grounding losses (empty unless ``model`` is a
    GroundedCaptioner and the batch carries targets)."""
    # answers end every row (left padding): the LM head and its softmax run only from the position
    # before the first answer token on, not over the ~130 image and prompt tokens (~10% of a CPU step)
    labels = batch["labels"]
    answer_cols = torch.nonzero((labels != IGNORE_INDEX).any(0))
    keep = labels.shape[1] - int(answer_cols[0]) + 1 if len(answer_cols) else 0  # 0: every position
    inputs = dict(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
        image_sizes=batch["image_sizes"], batch_num_images=batch["batch_num_images"], use_cache=False,
        logits_to_keep=keep,
    )
    aux = {}
    if batch.get("targets") is not None:
        out, aux = model(targets=batch["targets"], **inputs)
    else:
        out = model(**inputs)
        if isinstance(out, tuple):  # a GroundedCaptioner given no targets
            out = out[0]
    sums, counts = answer_cross_entropy(out.logits, labels[:, labels.shape[1] - out.logits.shape[1]:])
    return sums.sum(), int(counts.sum()), aux


def generate_captions(model, processor, pairs, batch_size: int = 32, max_new_tokens: int = 128,
                      instruction: str | None = None, progress: bool = False) -> list[str]:
    captioner = DiffCaptioner(model, processor, source="training")
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    captions = []
    for i in tqdm(range(0, len(pairs), batch_size), desc="generate", disable=not progress, leave=False):
        chunk = pairs[i : i + batch_size]
        out = captioner.describe_batch([(p.before, p.after) for p in chunk], instruction=instruction,
                                       with_trace=False, settings=settings)
        captions += [d.caption for d in out]
    return captions


def quick_scores(pairs, captions) -> dict:
    """BLEU-4, ROUGE-L, CIDEr-D (x100) of captions against the pairs' references (no METEOR: no JVM)."""
    with CaptionScorer(ScorerConfig(meteor=False, spice=False)) as scorer:
        corpus = scorer.prepare([p.id for p in pairs], captions, [list(p.captions) for p in pairs])
        scores = scorer.score(corpus)
    return {k: v for k, v in scores.items() if k in ("BLEU-4", "ROUGE-L", "CIDEr-D") and v is not None}


# ------------------------------------------------------------------------------------------ the loop
def train(recipe: Recipe, sources: list[str], out, *, resume: bool = False, max_steps: int | None = None,
          stop_at_step: int | None = None, export_at_stop: bool = False, quiet: bool = False,
          memory_limit_gb: float | None = None) -> TrainResult:
    """Train as the recipe says.

    ``memory_limit_gb``: when a process's resident memory passes it, the step reached is checkpointed and
    ``MemoryLimitReached`` raised (``m3diff train --memory-limit`` then resumes in a fresh process). Long
    CPU runs have, a few times, started to grow by ~50 MB a step after thousands of steady ones and
    stalled the machine at its limit, while the same run resumed from a checkpoint held 2 GB.

    ``stop_at_step`` ends the run there, checkpointed, as a kill would; with ``export_at_stop`` the model
    as it is at that step is also saved (merged, with its card) so a long schedule can be evaluated
    part-way and later continued with ``resume`` — the schedule is the full run's, so nothing re-warms.
    """
    start_time, start_cpu = time.time(), time.process_time()
    out = Path(out)
    # SigLIP's post_layernorm never feeds LLaVA-OneVision's features (it reads hidden_states), so DDP
    # must allow parameters without gradients
    # cpu=True without CUDA: under `accelerate launch --multi_gpu` (torchrun) that makes it gloo on CPUs
    precision = run_precision(recipe.precision, torch.cuda.is_available())
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    rank, world = accelerator.process_index, accelerator.num_processes
    # everything that can be wrong with the recipe and the data fails here, before any work
    accumulation = recipe.accumulation(world)
    sources = recipe.check_data(sources)
    if recipe.num_threads and accelerator.device.type == "cpu":
        torch.set_num_threads(recipe.num_threads)
    ckpt_root = out / "checkpoints"
    if accelerator.is_main_process:
        if not resume and latest_checkpoint(ckpt_root) is not None:
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    samples = load_samples(sources, recipe.data.every_caption, recipe.seed)
    if recipe.grounding is not None:
        samples += scene_samples(samples, recipe.grounding.scene_share, recipe.seed)
    val_pairs = load_val_pairs(sources, recipe.data.val, recipe.data.val_pairs)
    sampler = StepSampler(len(samples), recipe.batch.global_batch, recipe.batch.per_device_batch, recipe.seed)
    total = max_steps or recipe.max_steps or max(1, int(recipe.epochs * sampler.steps_per_epoch))

    torch.manual_seed(recipe.seed)  # the same initial weights on every process
    tokenizer = build_tokenizer(recipe, samples, out, accelerator)
    model = build_model(recipe, tokenizer)
    processor = PairProcessor.for_config(model.config, tokenizer)
    model = apply_lora(recipe, model)
    geometry = None
    if recipe.grounding is not None:
        vision = base_model(model).config.vision_config
        geometry = ModelGrid(vision.image_size, vision.patch_size)
        model = GroundedCaptioner(model, vision.hidden_size)
    if recipe.gradient_checkpointing:
        base_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    collate = Collator(processor, recipe.data.instruction, geometry, facts=recipe.data.facts)

    o = recipe.optim
    optimizer = torch.optim.AdamW(param_groups(recipe, model), betas=tuple(o.betas), eps=o.eps)
    warmup = o.warmup_steps if o.warmup_steps is not None else int(o.warmup_ratio * total)
    # not passed to accelerator.prepare: its wrapper steps the schedule once per process
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, max(1, warmup), o.min_lr_ratio))
    model, optimizer = accelerator.prepare(model, optimizer)

    step = 0
    if resume and (ckpt := latest_checkpoint(ckpt_root)) is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler, accelerator)
        step = state["step"]
        accelerator.print(f"resumed from {ckpt} at step {step}")

    record = RunRecord(recipe=recipe, sources=sources, samples=len(samples), total_steps=total, world_size=world,
                       accumulation=accumulation, precision=precision)
    meta = record.to_json()
    log_csv = out / "log.csv"
    eval_csv = out / "eval.csv"
    writer = None
    if accelerator.is_main_process:
        for log in (log_csv, eval_csv):  # rows a killed run wrote past the step resumed from
            drop_rows_after(log, step)
        (out / "run.json").write_text(json.dumps(meta, indent=1))  # RunRecord.read reads it

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=step)

    def write_row(path, row):
        header = next(csv.reader(open(path, newline="")), None) if path.is_file() else None
        if header is not None and not set(row) <= set(header):
            # a column appears part-way (a loss that starts later): the file is rewritten with it, so
            # every row stays under its own names
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            header = header + [k for k in row if k not in header]
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=header)
                w.writeheader()
                w.writerows(rows)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header or list(row), restval="")
            if header is None:
                w.writeheader()
            w.writerow(row)

    def evaluate(at_step: int) -> dict:
        scores = {}
        if accelerator.is_main_process and val_pairs:
            inner = base_model(accelerator.unwrap_model(model))
            inner.eval()
            captions = generate_captions(inner, processor, val_pairs, max_new_tokens=recipe.eval_max_new_tokens,
                                         instruction=recipe.data.instruction)
            inner.train()
            scores = quick_scores(val_pairs, captions)
            write_row(eval_csv, {"step": at_step, "n": len(val_pairs), **scores, "example": captions[0]})
            for k, v in scores.items():
                writer.add_scalar(f"val/{k}", v, at_step)
            accelerator.print(f"step {at_step}: val " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()))
        accelerator.wait_for_everyone()
        return scores

    def export(at_step: int, scores: dict) -> Path:
        model_dir = out / "model"
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            final = captioning_model(unwrapped)
            if final is not unwrapped:  # the grounding heads: kept beside the model, never inside it

                model_dir.mkdir(parents=True, exist_ok=True)
                save_file({k: v.detach().cpu().contiguous() for k, v in unwrapped.heads.state_dict().items()},
                          str(model_dir / "grounding_heads.safetensors"))
            if recipe.lora is not None:
                final = final.merge_and_unload()
            final = final.to(getattr(torch, recipe.save_dtype))
            check_finite(final.state_dict(), f"the model at step {at_step}")
            DiffCaptioner(final, processor, source=str(model_dir)).save_pretrained(model_dir)
            write_run_card(model_dir, record, steps=at_step, val_scores=scores, seconds=time.time() - start_time)
        accelerator.wait_for_everyone()
        return model_dir

    def stopped() -> bool:  # resumed at or past the stop, the loop does not run: the checkpoint is the model
        return stop_at_step is not None and stop_at_step <= step < total

    model.train()
    bar = tqdm(total=total, initial=step, desc=recipe.name, disable=quiet or not accelerator.is_main_process,
               dynamic_ncols=True)
    last_loss, tick, tokens_seen = float("nan"), time.time(), 0
    first_step = step + 1
    if memory_limit_gb is not None and resident_gb() is None:
        raise ValueError("a memory limit needs the process's resident memory, which this system does not report "
                         "(/proc/self/statm)")
    while step < total and not stopped():
        micro = [collate([samples[i] for i in idx]) for idx in sampler.micro_batches(step, rank, world)]
        micro = [b.to(accelerator.device) for b in micro]
        for b in micro:
            if b.get("targets") is not None:
                b["targets"] = {k: v.to(accelerator.device) for k, v in b["targets"].items()}
        local_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
        n_tokens = accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum").item()
        loss_sum = 0.0
        aux_sums: dict[str, float] = {}
        for i, batch in enumerate(micro):
            # gradients sync across processes only on the last micro-batch
            sync = i == len(micro) - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                with accelerator.autocast():
                    loss, _, aux = step_losses(model, batch)
                # DDP averages gradients over processes; × world makes it a mean over the global tokens
                total_loss = loss * world / n_tokens
                if aux:  # grounding: the mean of each auxiliary loss over the micro-batches
                    total_loss = total_loss + recipe.grounding.weight * sum(aux.values()) / len(micro)
                accelerator.backward(total_loss)
            loss_sum += loss.item()
            for k, v in aux.items():
                aux_sums[k] = aux_sums.get(k, 0.0) + v.item() / len(micro)
        last_loss = accelerator.reduce(torch.tensor(loss_sum, device=accelerator.device), "sum").item() / n_tokens
        grad_norm = None
        if o.max_grad_norm:
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), o.max_grad_norm))
        # a non-finite loss or gradient would poison every weight at optimizer.step(): stop before it
        aux_total = sum(aux_sums.values())
        bad_norm = grad_norm if grad_norm is not None and not math.isfinite(grad_norm) else None
        if not math.isfinite(last_loss) or not math.isfinite(aux_total) or bad_norm is not None:
            bar.close()
            what = (f"loss {last_loss}" if not math.isfinite(last_loss) else
                    f"auxiliary loss {aux_total}" if not math.isfinite(aux_total) else f"gradient norm {bad_norm}")
            raise TrainingDiverged(
                f"training stopped at step {step + 1}: the {what} is not finite (is optim.lr "
                f"{o.lr:g} too high?); nothing of this step was saved, {last_good(ckpt_root)}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += n_tokens

        if accelerator.is_main_process:
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
            if step % max(1, recipe.log_every) == 0 or step == total:
                now = time.time()
                lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
                row = {"step": step, "epoch": round(step / sampler.steps_per_epoch, 4), "loss": round(last_loss, 5),
                       "grad_norm": None if grad_norm is None else round(grad_norm, 4),
                       "lr": lrs.get("rest", lrs.get("rest-no-decay")), "lr_vision": lrs.get("vision"),
                       "tokens_per_s": round(tokens_seen / (now - tick), 1), "elapsed_s": round(now - start_time, 1),
                       "cpu_s": round(time.process_time() - start_cpu, 1),
                       **{f"aux_{k}": round(v, 4) for k, v in sorted(aux_sums.items())}}
                write_row(log_csv, row)
                writer.add_scalar("train/loss", last_loss, step)
                writer.add_scalar("train/lr", row["lr"], step)
                if grad_norm is not None:
                    writer.add_scalar("train/grad_norm", grad_norm, step)
                writer.add_scalar("train/tokens_per_s", row["tokens_per_s"], step)
                tick, tokens_seen = now, 0
        if recipe.eval_every and step % recipe.eval_every == 0 and step < total:
            evaluate(step)
        over = None
        if memory_limit_gb is not None and step < total:
            # every process learns the largest one's memory, so all stop at the same step
            rss = accelerator.reduce(torch.tensor(resident_gb(), device=accelerator.device), "max").item()
            over = rss if rss > memory_limit_gb else None
        if (recipe.checkpoint_every and step % recipe.checkpoint_every == 0) or step == total or stopped() or over:
            save_checkpoint(ckpt_root, step, model, optimizer, scheduler, {"meta": meta}, accelerator,
                            recipe.keep_checkpoints)
        if over:
            bar.close()
            if writer is not None:
                writer.close()
            raise MemoryLimitReached(step, over, memory_limit_gb, fresh=step == first_step)
    bar.close()

    # -- the end (or a stop): evaluate, merge LoRA, save model + processor + card -------------------
    if stopped():
        model_dir = export(step, {}) if export_at_stop else None
    else:
        model_dir = export(step, evaluate(step))
    if writer is not None:
        writer.close()
    return TrainResult(out, model_dir if accelerator.is_main_process else None, step, last_loss,
                       time.time() - start_time)
