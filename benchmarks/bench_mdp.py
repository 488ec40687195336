"""MDP overhead: forward and 60-token generate, with and without MDP, same config, side by side.

    python benchmarks/bench_mdp.py                      # tiny, on this machine's CPU
    python benchmarks/bench_mdp.py --preset m3diff-7b --device cuda --dtype bfloat16   # on a GPU

Weights are random (timing does not depend on them). The two models share every weight they have
in common; the ratio is (with MDP) / (without MDP), measured interleaved so drift hits both alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from m3diff.config import preset
from m3diff.modeling import M3DiffForConditionalGeneration


def build(name: str, use_mdp: bool, device: str, dtype: torch.dtype, vocab: int | None):
    overrides = {"use_mdp": use_mdp}
    if vocab:
        overrides["vocab_size"] = vocab
    torch.manual_seed(0)
    config = preset(name, **overrides)
    with torch.device(device):
        model = M3DiffForConditionalGeneration(config)
    return model.to(dtype).eval(), config


def inputs_for(config, batch: int, device: str, dtype: torch.dtype):
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


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    vocab = 512 if args.preset == "tiny" else None
    models = {flag: build(args.preset, flag, args.device, dtype, vocab) for flag in (True, False)}
    batch = inputs_for(models[True][1], args.batch, args.device, dtype)
    times = {(flag, kind): [] for flag in (True, False) for kind in ("forward", "generate")}
    with torch.inference_mode():
        for rep in range(args.repeats + 1):  # the first round warms up and is dropped
            for flag, (model, _) in models.items():
                t_fwd = timed(lambda: model(**batch), args.device)
                t_gen = timed(lambda: model.generate(**batch, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                                     do_sample=False, pad_token_id=0), args.device)
                if rep:
                    times[(flag, "forward")].append(t_fwd)
                    times[(flag, "generate")].append(t_gen)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"MDP overhead — preset {args.preset}, {device_name}, {args.dtype}, batch {args.batch} pair(s), "
          f"{args.tokens}-token generate, median of {args.repeats}")
    print(f"{'':10}{'with MDP':>12}{'without':>12}{'ratio':>8}")
    for kind in ("forward", "generate"):
        a, b = statistics.median(times[(True, kind)]), statistics.median(times[(False, kind)])
        print(f"{kind:10}{a * 1000:10.1f}ms{b * 1000:10.1f}ms{a / b:8.2f}x")
    n_mdp = models[True][0].num_parameters_by_part()["mdp"]
    print(f"MDP parameters: {n_mdp:,} ({100 * n_mdp / models[True][0].num_parameters_by_part()['total']:.1f}% of the model)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
