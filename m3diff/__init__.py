"""m3diff: fine-grained image difference captioning (M3Diff, OmniDiff ICCV 2025), with the evidence.

The public names load lazily, so `import m3diff` (and the `m3diff --help` command) stays fast.
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "DiffCaptioner": "m3diff.pipeline",
    "Description": "m3diff.describing",
    "GenerationSettings": "m3diff.describing",
    "PairTrace": "m3diff.describing",
    "M3DiffConfig": "m3diff.config",
    "M3DiffForConditionalGeneration": "m3diff.modeling",
    "MultiScaleDifferentialPerception": "m3diff.mdp",
    "PairProcessor": "m3diff.processing",
    "load_image": "m3diff.images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'm3diff' has no attribute {name!r}")
