"""The model's own commands: `m3diff describe`, `m3diff info` (the app's is in app.py, the Space's in hosting.py)."""
from __future__ import annotations

import argparse
import json
import math
import os


def register(sub) -> None:
    p = sub.add_parser(
        "describe", help="describe what changed between two images",
        description="Caption the differences between BEFORE and AFTER, with the per-layer MDP Score weights.",
    )
    p.add_argument("before", help="the before image (any format PIL reads)")
    p.add_argument("after", help="the after image")
    p.add_argument("--model", default=os.environ.get("M3DIFF_MODEL"),
                   help="model directory or hub id (default: $M3DIFF_MODEL, else the embedded model)")
    p.add_argument("--json", action="store_true", help="print JSON: caption, layer_scores, seconds")
    p.add_argument("--maps", action="store_true", help="with --json, include the per-layer difference maps")
    p.add_argument("--max-new-tokens", type=int, default=96, help="caption length limit in tokens (default 96)")
    p.add_argument("--min-end-probability", type=float, default=None, metavar="P",
                   help="end the caption only where the model gives its end at least P (e.g. 0.5); default: "
                        "plain greedy, which may end before the last change is described")
    p.add_argument("--joint-facts", action="store_true",
                   help="with a change reader, give the language model every change read in one prompt (as it was "
                        "trained); default: one prompt per change, the answers joined, which mixes objects up less")
    p.add_argument("--instruction", default=None, help="replace the default instruction of the prompt")
    p.set_defaults(handler=_describe)

    p = sub.add_parser(
        "info", help="parameter counts of a preset or a model",
        description="Print parameter counts (total, vision, projector, language_model, mdp). "
        "Presets are built on the meta device, so even the 7B needs no memory.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a named config: m3diff-7b, tiny")
    src.add_argument("--model", help="model directory or hub id (default: the embedded model)")
    p.add_argument("--no-mdp", action="store_true", help="count the model with use_mdp=False (the baseline)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_info)


def _describe(args: argparse.Namespace) -> int:
    from m3diff.cli import CLIError
    from m3diff.images import ImageError, load_image
    from m3diff.pipeline import DiffCaptioner, GenerationSettings, ModelLoadError

    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    p = args.min_end_probability
    if p is not None and not 0.0 < p <= 1.0:
        raise CLIError(f"--min-end-probability must be in (0, 1], got {p}")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, min_end_probability=p,
                                  each_change=not args.joint_facts)
    try:
        # the images first: a missing or unreadable file is said at once, not after seconds of loading a model
        before = load_image(args.before, name="before image")
        after = load_image(args.after, name="after image")
        captioner = DiffCaptioner.from_pretrained(args.model)
        captioner.use_recommended_threads()  # this command owns its process
        d = captioner.describe(before, after, instruction=args.instruction, settings=settings)
    except (ImageError, ModelLoadError) as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        out = d.to_json(with_maps=args.maps)
        out["model"] = captioner.source
        print(json.dumps(_finite_json(out), indent=2, allow_nan=False))
        return 0
    print(d.caption)
    if d.layer_scores:
        print("MDP Score per vision layer: " + "  ".join(f"L{k} {v:.3f}" for k, v in d.layer_scores.items()))
    if d.changes is not None:
        print(f"Changes read ({len(d.changes.changes)}, confidence >= {d.changes.threshold:.0%}):")
        for c in d.changes.changes:
            print(f"  {c.line()}  [{c.confidence:.0%}]")
    return 0


def _finite_json(value):
    """NaN and infinities as null: JSON has no NaN, and a reader that meets one (json.loads in JavaScript,
    jq) rejects the whole document."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _info(args: argparse.Namespace) -> int:
    import torch

    from m3diff.cli import CLIError
    from m3diff.config import preset
    from m3diff.modeling import M3DiffForConditionalGeneration
    from m3diff.pipeline import DiffCaptioner, ModelLoadError

    if args.preset:
        try:
            config = preset(args.preset, **({"use_mdp": False} if args.no_mdp else {}))
        except KeyError as exc:
            raise CLIError(exc.args[0]) from None
        with torch.device("meta"):
            model = M3DiffForConditionalGeneration(config)
        name = args.preset
    else:
        try:
            captioner = DiffCaptioner.from_pretrained(args.model)
        except ModelLoadError as exc:
            raise CLIError(str(exc)) from None
        model, name = captioner.model, captioner.source
    counts = model.num_parameters_by_part()
    c = model.config
    info = dict(counts, name=name, use_mdp=c.use_mdp, mdp_layers=list(c.mdp_layers) if c.use_mdp else [],
                mdp_depth=c.mdp_depth, image_size=c.vision_config.image_size,
                tokens_per_image=c.num_image_tokens)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{name}: {counts['total']:,} parameters")
    for part in ("vision", "mdp", "projector", "language_model"):
        print(f"  {part:<15} {counts[part]:>15,}  {100 * counts[part] / counts['total']:5.1f}%")
    if c.use_mdp:
        print(f"  MDP on vision layers {list(c.mdp_layers)}, depth {c.mdp_depth}")
    print(f"  {c.vision_config.image_size}px images, {c.num_image_tokens} tokens each")
    return 0
