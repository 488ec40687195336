"""`m3diff space build OUT`: a ready-to-push Hugging Face Space folder, assembled from this repository.

    m3diff space build OUT                          # CPU Space with the embedded model
    m3diff space build OUT --model org/m3diff-7b    # GPU Space (ZeroGPU by default) running a 7B model

The Space holds: the `m3diff`, `analysis` and `webapp` packages (with the embedded weights and their shipped
evaluation reports), the app (`m3diff_app.py`) behind the GPU entry (`app.py`, from spaces/entry.py),
the examples, the metadata (README.md front-matter, requirements.txt, packages.txt) and
space_config.json (which model to load). ``spaces/`` in the repository is a plain folder, not a package:
a Python package named ``spaces`` would shadow Hugging Face's ``spaces`` library.

Deployment, not the model: this module sits beside ``app.py``, outside the ``m3diff`` package, and
offers its command through the ``m3diff.commands`` entry points.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

GPU_HARDWARE = "zero-a10g"  # ZeroGPU; any GPU flavour name works (a10g-large, l4x1, a100-large)


def register(sub) -> None:
    p = sub.add_parser("space", help="build the Hugging Face Space", description=__doc__.splitlines()[0])
    ssub = p.add_subparsers(dest="space_command", metavar="SUBCOMMAND")
    b = ssub.add_parser(
        "build", help="assemble a ready-to-push Space folder",
        description="Assemble a Hugging Face Space folder from this repository: packages, embedded weights, "
        "app, examples, reports and metadata. Push it with `huggingface-cli upload ORG/NAME OUT --repo-type space`.",
    )
    b.add_argument("out", help="the folder to write (created; must be empty unless --force)")
    b.add_argument("--model", default=None,
                   help="a hub id or a local model directory for the Space to run (default: the embedded model). "
                        "A hub id is preloaded at build time; a directory is copied into the Space.")
    b.add_argument("--hardware", default=None,
                   help=f"suggested_hardware (default: cpu-basic, or {GPU_HARDWARE} with --model)")
    b.add_argument("--title", default=None, help="the Space's title")
    b.add_argument("--force", action="store_true", help="write into OUT even if it is not empty")
    b.set_defaults(handler=_build)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _build(args: argparse.Namespace) -> int:
    from m3diff.cli import CLIError

    try:
        out = build_space(args.out, model=args.model, hardware=args.hardware, title=args.title, force=args.force)
    except SpaceBuildError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:  # a read-only folder, a full disk: one line, not a traceback
        raise CLIError(f"could not write the Space to {args.out}: {exc.strerror or exc}"
                       + (f" ({exc.filename})" if exc.filename else "")) from None
    print(f"wrote the Space to {out}; push it with: huggingface-cli upload ORG/NAME {out} --repo-type space")
    return 0


class SpaceBuildError(ValueError):
    """The Space cannot be built as asked; the message says why and what to do."""


def repo_root():
    return Path(__file__).resolve().parent


def build_space(out, *, model: str | None = None, hardware: str | None = None, title: str | None = None,
                force: bool = False, root=None):
    """Write the Space folder ``out``; returns its path. ``model``: hub id or local directory (7B on a GPU)."""
    root = Path(root) if root else repo_root()
    out = Path(out)
    template = root / "spaces"
    for need in (root / "app.py", root / "m3diff", root / "analysis", root / "webapp", template / "README.md",
                 template / "entry.py"):
        if not need.exists():
            raise SpaceBuildError(f"{need} is missing: run `m3diff space build` from a full m3diff checkout.")
    if (template / "__init__.py").exists():
        raise SpaceBuildError(f"{template}/__init__.py exists: a package named 'spaces' would shadow Hugging Face's "
                              "spaces library in the Space; delete it.")
    if out.exists() and not out.is_dir():
        raise SpaceBuildError(f"{out} is a file, not a folder; choose a folder for the Space.")
    if out.exists() and any(out.iterdir()) and not force:
        raise SpaceBuildError(f"{out} is not empty; choose an empty folder or pass --force.")
    protected = [root.resolve()] + [(root / d).resolve() for d in ("m3diff", "analysis", "webapp", "spaces",
                                                                   "examples")]
    if any(out.resolve() == p or p in out.resolve().parents for p in protected[1:]) or out.resolve() == protected[0]:
        raise SpaceBuildError(f"{out} is the repository or inside its own folders; choose another folder.")

    gpu = model is not None
    model_ref = None
    local_model = Path(model) if model and Path(model).exists() else None
    if local_model is not None:
        if not (local_model / "config.json").is_file():
            raise SpaceBuildError(f"{local_model} has no config.json: pass a directory made by save_pretrained.")
        model_ref = "model"
    elif model:
        if model.count("/") != 1 or model.startswith(("/", ".")):
            raise SpaceBuildError(f"--model {model!r} is neither an existing directory nor a hub id like org/name.")
        model_ref = model

    out.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
    for pkg in ("m3diff", "analysis", "webapp"):
        if (out / pkg).exists():
            shutil.rmtree(out / pkg)
        shutil.copytree(root / pkg, out / pkg, ignore=ignore)
    if (out / "examples").exists():
        shutil.rmtree(out / "examples")
    shutil.copytree(root / "examples", out / "examples", ignore=ignore)
    if local_model is not None:
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        shutil.copytree(local_model, out / "model", ignore=ignore)
    shutil.copy2(root / "app.py", out / "m3diff_app.py")
    shutil.copy2(template / "entry.py", out / "app.py")
    shutil.copy2(template / ("requirements-gpu.txt" if gpu else "requirements.txt"), out / "requirements.txt")
    shutil.copy2(template / "packages.txt", out / "packages.txt")

    settings = {"model": model_ref, "built_from": _git_commit(root)}
    if gpu:  # a 7B caption: a few seconds of prefill, ~50-80 ms per token on a shared GPU, cold-start headroom
        settings.update(gpu_prefill_s=15, gpu_per_token_s=0.1)
    (out / "space_config.json").write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        space_readme((template / "README.md").read_text(encoding="utf-8"), model=model_ref if model_ref != "model" else None,
                     hardware=hardware or (GPU_HARDWARE if gpu else "cpu-basic"), title=title, gpu=gpu),
        encoding="utf-8")
    return out


def space_readme(template: str, *, model: str | None, hardware: str, title: str | None, gpu: bool) -> str:
    """The template README with its front-matter set for this build (hardware, models, preload, python)."""
    import yaml

    if not template.startswith("---\n"):
        raise SpaceBuildError("spaces/README.md must start with its YAML front-matter (---).")
    end = template.index("\n---", 4)
    meta = yaml.safe_load(template[4:end])
    body = template[end + 4:]
    meta["suggested_hardware"] = hardware
    if title:
        meta["title"] = title
    if model:
        meta["models"] = [model]
        meta["preload_from_hub"] = [model]  # downloaded at build time, not at every cold start
    if gpu:
        meta["python_version"] = "3.12"  # ZeroGPU's supported Pythons (3.10/3.12); transformers 5 needs >= 3.11
        meta["startup_duration_timeout"] = "1h"  # a 7B load
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---" + body


def read_front_matter(readme_text: str) -> dict:
    import yaml

    end = readme_text.index("\n---", 4)
    return yaml.safe_load(readme_text[4:end])


def _git_commit(root) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
