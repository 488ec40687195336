"""Checkpoints that resume exactly, in safetensors and JSON only (nothing is ever unpickled).

    OUT/checkpoints/step-000500/
        model.safetensors       every weight of the model being trained (LoRA adapters included)
        optimizer.safetensors   AdamW's moments and step counts, one tensor per (parameter, key)
        rng-rank{r}.safetensors each process's torch RNG state (dropout, LoRA dropout)
        state.json              step, optimizer param_groups, scheduler state, recipe, tokenizer path
    OUT/checkpoints/latest      the name of the newest complete checkpoint

A checkpoint is written into ``step-N.tmp`` and renamed when complete, and ``latest`` is replaced
atomically after that, so a run killed while saving resumes from the previous checkpoint.
The data position needs no state: step ``s`` always reads the same samples (training.data.StepSampler).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class NonFiniteWeights(ValueError):
    """Weights holding NaN or inf: never written, so the last good checkpoint stays the one to resume."""


class TrainingDiverged(ValueError):
    """A non-finite loss or gradient: training stops before the optimizer step that would spread it."""


class MemoryLimitReached(RuntimeError):
    """The process's resident memory passed the run's limit; the step it reached is checkpointed.

    ``fresh``: it happened at the first step this process ran, so a new process would not help."""

    def __init__(self, step: int, rss_gb: float, limit_gb: float, fresh: bool):
        self.step, self.rss_gb, self.limit_gb, self.fresh = step, rss_gb, limit_gb, fresh
        super().__init__(f"memory {rss_gb:.1f} GB passed the limit of {limit_gb:g} GB at step {step} "
                         f"(checkpointed: --resume continues the same schedule)")


def resident_gb() -> float | None:
    """This process's resident memory now (not its peak), or None where the system does not say."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):
        return None


def non_finite(tensors: dict) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite(tensors: dict, what: str) -> None:
    bad = non_finite(tensors)
    if bad:
        raise NonFiniteWeights(f"{what}: {len(bad)} of {len(tensors)} weight tensors hold NaN or inf (first: {bad[0]}); "
                               "not saved")


def last_good(root: Path) -> str:
    """For a message: where a stopped run can resume from."""
    ckpt = latest_checkpoint(root)
    return f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint had been written yet"


def drop_rows_after(path: Path, step: int) -> None:
    """Remove the rows of a CSV log whose step is past ``step``: a killed run logged steps that the
    run resuming from an earlier checkpoint logs again, and each step must appear once."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return
    at = rows[0].index("step") if "step" in rows[0] else 0
    keep = [rows[0]] + [r for r in rows[1:] if r and r[at].isdigit() and int(r[at]) <= step]
    if len(keep) == len(rows):
        return
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(keep)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_state(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, extra: dict, accelerator, keep: int) -> Path:
    root = Path(root)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    # every process checks (the weights are the same everywhere), so all stop together before any collective
    state = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    bad = non_finite(state)
    if bad:
        raise TrainingDiverged(
            f"training stopped at step {step}: {len(bad)} of {len(state)} weight tensors hold NaN or inf after the "
            f"update (first: {bad[0]}; is the learning rate too high?); not saved, {last_good(root)}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_file({"state": torch.random.get_rng_state()}, str(tmp / f"rng-rank{accelerator.process_index}.safetensors"))
    if accelerator.is_main_process:
        save_file(state, str(tmp / "model.safetensors"))
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        (tmp / "state.json").write_text(json.dumps(
            {"step": step, "optimizer": meta, "scheduler": sched, "world_size": accelerator.num_processes, **extra},
            indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest = root / "latest.tmp"
        latest.write_text(final.name)
        os.replace(latest, root / "latest")
        done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in done[: max(0, len(done) - max(keep, 1))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model, optimizer, scheduler, accelerator) -> dict:
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    weights = load_file(str(path / "model.safetensors"))
    check_finite(weights, f"checkpoint {path}")
    missing, unexpected = accelerator.unwrap_model(model).load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    optimizer.load_state_dict(_optimizer_state(load_file(str(path / "optimizer.safetensors")), state["optimizer"]))
    scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
    rng = path / f"rng-rank{accelerator.process_index}.safetensors"
    if rng.is_file():  # a different process count resumes with rank 0's state everywhere
        torch.random.set_rng_state(load_file(str(rng))["state"])
    else:
        torch.random.set_rng_state(load_file(str(path / "rng-rank0.safetensors"))["state"])
    return state
