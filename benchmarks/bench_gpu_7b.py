"""The full-size M3Diff (LLaVA-OneVision-7B + MDP) on one GPU: load, memory, latency, throughput, training steps.

    python benchmarks/bench_gpu_7b.py                        # everything, bf16, SDPA, on cuda:0
    python benchmarks/bench_gpu_7b.py --skip-train --json out.json

Random bf16 weights are built directly on the GPU (nothing is downloaded; timings do not depend on the
weights). Measured, with CUDA synchronised around every timed region:
- build time of the model on the device, and its weight memory;
- prefill latency for one pair (vision tower + MDP + projector + LLM prefill);
- per-token decoding latency (a 60-word caption is ~80 Qwen2 tokens: --tokens);
- batched throughput in pairs/s for fixed-length captions at several batch sizes;
- MDP overhead: the same measurements with use_mdp=False in the same run (ratio with / without);
- peak memory of each phase;
- a few optimizer steps of the paper-7b recipe (LoRA r128 on the LLM, vision/projector/MDP trained,
  AdamW, bf16, gradient checkpointing) with training/'s own loss and parameter groups.
Without CUDA it refuses with a message and exit status 2. Its functions take a preset and a device, so
benchmarks/gpu_check.py runs the same measurements on the tiny preset on a CPU (its test).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _on_cuda(device) -> bool:
    return str(device).startswith("cuda")


def synced(fn, device="cuda"):
    import torch

    if _on_cuda(device):
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if _on_cuda(device):
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def gib(n: float) -> float:
    return round(n / 2**30, 2)


def reset_peak(device="cuda") -> None:
    import torch

    if _on_cuda(device):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device="cuda") -> float | None:
    """Peak memory allocated since ``reset_peak``; None on a CPU, where torch does not count it."""
    import torch

    return gib(torch.cuda.max_memory_allocated()) if _on_cuda(device) else None


def allocated_gib(device="cuda") -> float | None:
    import torch

    return gib(torch.cuda.memory_allocated()) if _on_cuda(device) else None


def build(use_mdp: bool, dtype, preset_name: str = "m3diff-7b", device="cuda"):
    import torch

    from m3diff.config import preset
    from m3diff.modeling import M3DiffForConditionalGeneration

    torch.manual_seed(0)
    config = preset(preset_name, use_mdp=use_mdp)
    config._attn_implementation = "sdpa"
    reset_peak(device)
    start = time.perf_counter()
    with torch.device(device):
        model = M3DiffForConditionalGeneration(config).to(dtype)
    if _on_cuda(device):
        torch.cuda.synchronize()
    return model.eval(), config, time.perf_counter() - start


def inputs_for(config, batch: int, dtype, device="cuda"):
    import torch

    side = config.vision_config.image_size
    n_img = config.num_image_tokens
    prompt = [1] + [config.image_token_id] * (2 * n_img) + list(range(10, 40))
    return dict(
        input_ids=torch.tensor([prompt] * batch, device=device),
        attention_mask=torch.ones(batch, len(prompt), dtype=torch.long, device=device),
        pixel_values=torch.randn(2 * batch, 1, 3, side, side, device=device, dtype=dtype),
        image_sizes=torch.tensor([[side, side]] * (2 * batch), device=device),
        batch_num_images=torch.tensor([2] * batch, device=device),
    )


def inference(model, config, dtype, tokens: int, batches: list[int], repeats: int, device="cuda") -> dict:
    import torch

    out: dict = {}
    one = inputs_for(config, 1, dtype, device)
    gen = dict(do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model(**one)  # warm-up (kernels, allocator)
        reset_peak(device)
        prefill = [synced(lambda: model(**one), device)[0] for _ in range(repeats)]
        out["prefill_s"] = round(statistics.median(prefill), 4)
        t1 = [synced(lambda: model.generate(**one, max_new_tokens=1, min_new_tokens=1, **gen), device)[0]
              for _ in range(repeats)]
        tn = [synced(lambda: model.generate(**one, max_new_tokens=tokens, min_new_tokens=tokens, **gen), device)[0]
              for _ in range(repeats)]
        out["per_token_s"] = round((statistics.median(tn) - statistics.median(t1)) / (tokens - 1), 5)
        out["caption_s"] = round(statistics.median(tn), 3)
        out["peak_gib_one_pair"] = peak_gib(device)
        out["throughput"] = {}
        for b in batches:
            x = inputs_for(config, b, dtype, device)
            try:
                reset_peak(device)
                s, _ = synced(lambda: model.generate(**x, max_new_tokens=tokens, min_new_tokens=tokens, **gen), device)
                out["throughput"][b] = {"pairs_per_s": round(b / s, 2), "seconds": round(s, 3),
                                        "peak_gib": peak_gib(device)}
            except torch.cuda.OutOfMemoryError:
                out["throughput"][b] = "out of memory"
                torch.cuda.empty_cache()
    return out


def measure_model(use_mdp: bool, dtype, tokens: int, batches: list[int], repeats: int,
                  preset_name: str = "m3diff-7b", device="cuda") -> dict:
    """Build one model (with or without MDP) on the device, measure it, and free it again."""
    import torch

    model, config, build_s = build(use_mdp, dtype, preset_name, device)
    counts = model.num_parameters_by_part()
    res = {"build_s": round(build_s, 2), "params": counts["total"], "mdp_params": counts["mdp"],
           "weights_gib": gib(sum(p.numel() * p.element_size() for p in model.parameters())),
           "allocated_gib": allocated_gib(device),
           **inference(model, config, dtype, tokens, batches, repeats, device)}
    del model
    if _on_cuda(device):
        torch.cuda.empty_cache()
    return res


def mdp_overhead(with_mdp: dict, without: dict) -> dict:
    """(with MDP) / (without MDP) of the same measurements in the same run."""
    a, b = with_mdp, without
    return {"prefill_ratio": round(a["prefill_s"] / b["prefill_s"], 3),
            "caption_ratio": round(a["caption_s"] / b["caption_s"], 3),
            "per_token_ratio": round(a["per_token_s"] / b["per_token_s"], 3)}


def train_steps(dtype, steps: int, per_device_batch: int, preset_name: str = "m3diff-7b", device="cuda") -> dict:
    """A few optimizer steps of the paper-7b recipe, with training/'s LoRA, parameter groups and loss.
    On another preset than the recipe's, the recipe's model fields (its MDP layers) are left out:
    they name layers of the 7B vision tower."""
    import torch

    from training.recipe import load_recipe
    from training.train import answer_loss_sum, apply_lora, param_groups

    from m3diff.config import preset
    from m3diff.modeling import M3DiffForConditionalGeneration

    from pathlib import Path

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "training" / "recipes" / "paper-7b.yaml")
    torch.manual_seed(0)
    config = preset(preset_name, **(recipe.model.config if preset_name == recipe.model.preset else {}))
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = M3DiffForConditionalGeneration(config).to(dtype)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model = apply_lora(recipe, model)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(param_groups(recipe, model), fused=_on_cuda(device))
    x = inputs_for(config, per_device_batch, dtype, device)
    labels = x["input_ids"].clone()
    labels[:, : labels.shape[1] - 30] = -100  # the last 30 tokens are the "answer"
    batch = dict(x, labels=labels)
    reset_peak(device)
    times = []
    for _ in range(steps + 1):  # the first step warms up and is dropped
        def step():
            loss, n = answer_loss_sum(model, batch)
            (loss / max(n, 1)).backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach()) / max(n, 1)
        times.append(synced(step, device))
    return {"per_device_batch": per_device_batch, "trainable_params": trainable,
            "step_s": round(statistics.median(t for t, _ in times[1:]), 3),
            "losses": [round(v, 4) for _, v in times], "peak_gib": peak_gib(device)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=80, help="caption length in tokens (~60 words)")
    p.add_argument("--batches", default="1,4,8,16", help="batch sizes for the throughput run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--train-batch", type=int, default=1)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu_7b: error: no CUDA GPU here. The 7B model needs one (~16 GiB of weights in bf16); "
              "run this on a GPU machine. On a CPU use benchmarks/bench_mdp.py (tiny preset) instead.",
              file=sys.stderr)
        return 2
    dtype = torch.bfloat16
    batches = [int(b) for b in args.batches.split(",") if b]
    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": "bfloat16",
                 "attention": "sdpa", "tokens": args.tokens}
    for use_mdp in (True, False):
        key = "m3diff" if use_mdp else "no_mdp"
        res[key] = measure_model(use_mdp, dtype, args.tokens, batches, args.repeats)
        print(json.dumps({key: res[key]}), flush=True)
    res["mdp_overhead"] = mdp_overhead(res["m3diff"], res["no_mdp"])
    if not args.skip_train:
        try:
            res["train_paper_7b"] = train_steps(dtype, args.train_steps, args.train_batch)
        except torch.cuda.OutOfMemoryError:
            res["train_paper_7b"] = "out of memory (the paper trains on 8x A100-40G with ZeRO-2)"
        except ImportError as exc:
            res["train_paper_7b"] = f"skipped: {exc}"
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
