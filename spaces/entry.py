"""The Space's app.py (copied there by `m3diff space build`): the m3diff app behind `spaces.GPU`.

ZeroGPU rules this file keeps: `spaces` is imported before anything touches CUDA; the model is created
at import and moved to CUDA here (ZeroGPU intercepts that and streams the weights to each GPU worker);
every model call runs inside `@spaces.GPU` with a duration that fits the request; handlers return CPU
data only (str, numpy, PIL); the services built here are never mutated, so concurrent requests cannot
interfere. Outside ZeroGPU, `spaces.GPU` returns the function unchanged and this runs anywhere.
"""
import spaces  # noqa: I001 — must come before torch initialises CUDA

import json
import os
from pathlib import Path

import m3diff_app as app

HERE = Path(__file__).resolve().parent
SETTINGS = json.loads((HERE / "space_config.json").read_text(encoding="utf-8"))
# Seconds of GPU a caption needs: prefill plus per-token decoding, with headroom for a cold worker.
PREFILL_S = float(SETTINGS.get("gpu_prefill_s", 10))
PER_TOKEN_S = float(SETTINGS.get("gpu_per_token_s", 0.08))


def gpu_seconds(*args, **kwargs) -> int:
    """ZeroGPU duration for a call: read max_new_tokens from the arguments when the call has it."""
    tokens = next((a for a in (*args, *kwargs.values()) if isinstance(a, (int, float)) and not isinstance(a, bool)),
                  app.DEFAULT_MAX_NEW_TOKENS)
    return int(min(120, PREFILL_S + PER_TOKEN_S * float(tokens)))


CONFIG = app.parse_args(["--model", os.environ.get("M3DIFF_MODEL") or SETTINGS.get("model") or "embedded",
                         "--host", os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                         "--port", os.environ.get("GRADIO_SERVER_PORT", "7860"),
                         # the model in this process: spaces.GPU can only move what this process holds
                         "--same-process"])
SERVICES = app.load_services(CONFIG)  # at import, on purpose: ZeroGPU moves the model to the GPU from here
demo = app.build_app(SERVICES, gpu=spaces.GPU(duration=gpu_seconds))

if __name__ == "__main__":
    app.launch(demo, CONFIG)
