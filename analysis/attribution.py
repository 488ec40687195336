"""Which pixels of the two input images a chosen output depends on (captum), folded to pixels and patches.

The core works on any differentiable ``f(pixel_values[B, 2, 3, H, W]) -> [B]``, so it is tested on a
hand-made toy model. ``explain_word`` is the adapter for the real model: ``f`` = the log-probability of
one word of a caption given the images and the caption before it (teacher-forced).
Saliency (|gradient|) is the default: one backward pass. Integrated Gradients (zero baseline) is the
option for sharper maps when the time is there (n_steps backward passes).

Importing this module costs no torch (it is imported where it is used), so a process that only
shows results can name ``explain_maps`` for the model's process to run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from m3diff.describing import WORD_RE, caption_words  # noqa: F401 — caption_words: the words explain_word counts
from m3diff.geometry import grid_to_image

METHODS = ("saliency", "integrated_gradients")


@dataclass(frozen=True)
class AttributionConfig:
    method: str = "saliency"
    n_steps: int = 16  # Integrated Gradients only
    patch: int = 14  # SigLIP's patch size: the grid the MDP maps live on (explain_word uses the model's)
    internal_batch_size: int | None = None  # Integrated Gradients: steps per forward pass (None: all at once)


@dataclass
class Attribution:
    pixels: np.ndarray  # [B, 2, H, W] |attribution| summed over colour channels (before, after)
    patches: np.ndarray  # [B, 2, H // patch, W // patch] mean over each patch
    method: str
    convergence_delta: np.ndarray | None = None  # Integrated Gradients' completeness error per item


def attribute(f: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor,
              config: AttributionConfig | None = None) -> Attribution:
    """Attribute ``f``'s scalar output onto both images of every pair."""
    import torch
    import torch.nn.functional as F
    from captum.attr import IntegratedGradients, Saliency

    config = config or AttributionConfig()
    if config.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {config.method!r}")
    x = pixel_values.detach().float()
    if x.ndim != 5 or x.shape[1] != 2:
        raise ValueError(f"pixel_values must be [B, 2, 3, H, W] (before, after), got {tuple(x.shape)}")
    x = x.clone().requires_grad_(True)
    delta = None
    if config.method == "saliency":
        attr = Saliency(f).attribute(x, abs=True)
    else:
        attr, d = IntegratedGradients(f).attribute(x, baselines=torch.zeros_like(x), n_steps=config.n_steps,
                                                    internal_batch_size=config.internal_batch_size,
                                                    return_convergence_delta=True)
        delta = d.detach().cpu().numpy()
    pix = attr.detach().abs().sum(2)  # [B, 2, H, W]
    b, _, h, w = pix.shape
    p = config.patch
    patches = F.avg_pool2d(pix.reshape(b * 2, 1, h, w), kernel_size=p, stride=p).reshape(b, 2, h // p, w // p)
    return Attribution(pix.cpu().numpy(), patches.cpu().numpy(), config.method, delta)


# ---------------------------------------------------------------------------- the real model
TARGETS = ("logprob", "logit")


@dataclass
class WordAttribution:
    word: str
    word_index: int  # position in caption_words(caption)
    words: list[str]  # caption_words(caption)
    token_positions: list[int]  # the word's tokens, as indices into the answer's tokens
    tokens: list[str]  # their text (the first may carry the leading space)
    score: float  # the explained value: log p(word | images, prompt, caption before it), or the summed logits
    pixels: np.ndarray  # [2, S, S] (before, after) at the model's input resolution (padded to square, resized)
    patches: np.ndarray  # [2, g, g] on the vision tower's patch grid, the grid of the MDP maps
    image_maps: tuple[np.ndarray, np.ndarray]  # (before [h, w], after [h, w]) pixels mapped back onto each image
    method: str
    convergence_delta: float | None = None  # Integrated Gradients only


def explain_word(captioner, before, after, caption: str, word: int | str, config: AttributionConfig | None = None,
                 *, target: str = "logprob", instruction: str | None = None,
                 overlay_side: int | None = None) -> WordAttribution:
    """Which pixels of the before and after images make the model say one word of ``caption``.

    - ``captioner``: an ``m3diff.DiffCaptioner`` (MDP on or off; any device and dtype).
    - ``before``, ``after``: the images as given to ``describe`` (paths, bytes, arrays or PIL).
    - ``caption``: the caption to explain, usually ``describe(before, after).caption``.
    - ``word``: an index into ``caption_words(caption)`` (use it when a word occurs twice), or the word
      itself (its first occurrence, case-insensitive).
    - ``config``: ``AttributionConfig(method="saliency")`` (default, one backward pass) or
      ``method="integrated_gradients", n_steps=...`` (n_steps passes); ``patch`` is taken from the model.
    - ``target``: "logprob" (default) explains log p(word | images, prompt, caption before the word),
      summed over the word's tokens; "logit" the sum of their raw logits.
    - ``overlay_side``: longest side of ``image_maps`` (default: each image's own size); a few hundred
      pixels is plenty for a browser overlay of a large photo.

    The caption is teacher-forced after the prompt exactly as in training (``encode_pairs(answers=...)``)
    and the word's tokens are found with the tokenizer's offsets, so multi-token words and words that
    share a token with punctuation are handled. Returns a ``WordAttribution``: ``pixels`` [2, S, S] and
    ``patches`` [2, g, g] in the model's input frame, and ``image_maps`` = (before [h, w], after [h, w])
    on each original image (padding removed, ``m3diff.geometry.grid_to_image``), ready for
    ``m3diff.overlay.overlay(image, map)``.
    Raises ValueError for an empty caption, a word not in it, or an index out of range.
    """
    config = config or AttributionConfig()
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    caption = (caption or "").strip()
    words = [(m.group(), m.start(), m.end()) for m in WORD_RE.finditer(caption)]
    if not words:
        raise ValueError(f"caption {caption!r} has no words to explain; describe the pair first")
    index = _word_index([w for w, _, _ in words], word)
    import torch

    # Callers may hold inference mode (generation does); tensors made under it could not enter autograd.
    with torch.inference_mode(False), torch.enable_grad():
        return _explain(captioner, before, after, caption, words, index, config, target, instruction, overlay_side)


def explain_caption(captioner, before, after, caption: str, config: AttributionConfig | None = None,
                    *, instruction: str | None = None) -> WordAttribution:
    """Which pixels make the model say its whole caption: ``explain_word`` with the caption as one
    "word" (log p(caption | images, prompt), summed over all its tokens). Its ``patches`` [2, g, g] is
    the attribution map ``m3diff predict --maps --attribution`` scores against the true boxes."""
    config = config or AttributionConfig()
    caption = (caption or "").strip()
    if not WORD_RE.search(caption):
        raise ValueError(f"caption {caption!r} has no words to explain; describe the pair first")
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        return _explain(captioner, before, after, caption, [(caption, 0, len(caption))], 0, config, "logprob",
                        instruction, None)


def _explain(captioner, before, after, caption, words, index, config, target, instruction, overlay_side):
    import torch  # lazy, with the model's modules: the web process runs attributions in the model's process

    from m3diff.processing import IGNORE_INDEX  # lazy: it imports torch

    text, start, end = words[index]
    answer = caption
    model, processor = captioner.model, captioner.processor
    tokenizer = processor.tokenizer
    batch, _ = captioner.encode_pairs([(before, after)], answers=[answer], instruction=instruction)
    batch = batch.to("cpu")
    input_ids = batch["input_ids"][0]  # [T]
    answer_at = int((batch["labels"][0] != IGNORE_INDEX).nonzero()[0])  # the answer's first token
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    cap_ids = enc["input_ids"]
    if input_ids[answer_at:answer_at + len(cap_ids)].tolist() != cap_ids:
        raise ValueError(f"the caption {caption!r} tokenizes differently after the prompt; cannot locate its words")
    positions = [k for k, (s, e) in enumerate(enc["offset_mapping"]) if s < end and e > start]
    first, last = answer_at + positions[0], answer_at + positions[-1]

    # The model is causal: nothing after the word matters, and only the logits predicting it are needed.
    ids = input_ids[: last + 1][None].to(model.device)  # [1, T']
    wanted = ids[0, first:]  # [n] the word's token ids
    n = len(wanted)
    pv = batch["pixel_values"].to(model.device)  # [2, 1, 3, S, S]: before, after
    sizes = batch["image_sizes"].to(model.device)  # [2, 2] (h, w) of the originals

    def f(x):  # [N, 2, 3, S, S] -> [N]
        k = x.shape[0]
        out = model(input_ids=ids.expand(k, -1), attention_mask=torch.ones_like(ids).expand(k, -1),
                    pixel_values=x.reshape(2 * k, 1, *x.shape[2:]).to(model.dtype), image_sizes=sizes.repeat(k, 1),
                    batch_num_images=torch.full((k,), 2, device=ids.device), use_cache=False,
                    logits_to_keep=n + 1)
        logits = out.logits[:, :n].float()  # [N, n, V]: position p predicts token p + 1
        if target == "logprob":
            logits = logits.log_softmax(-1)
        return logits.gather(-1, wanted.expand(k, -1)[..., None]).squeeze(-1).sum(-1)

    x = pv[:, 0][None]  # [1, 2, 3, S, S]
    with torch.no_grad():
        score = float(f(x.float())[0])
    attr = attribute(f, x, replace(config, patch=model.config.vision_config.patch_size))
    sizes_hw = [tuple(int(v) for v in hw) for hw in batch["image_sizes"]]
    maps = tuple(grid_to_image(attr.pixels[0, i], (w, h), overlay_side) for i, (h, w) in enumerate(sizes_hw))
    delta = None if attr.convergence_delta is None else float(np.ravel(attr.convergence_delta)[0])
    return WordAttribution(
        word=text, word_index=index, words=[w for w, _, _ in words], token_positions=positions,
        tokens=[tokenizer.decode([cap_ids[k]]) for k in positions], score=score, pixels=attr.pixels[0],
        patches=attr.patches[0], image_maps=maps, method=attr.method, convergence_delta=delta,
    )


def _word_index(words: list[str], word: int | str) -> int:
    if isinstance(word, (int, np.integer)) and not isinstance(word, bool):
        if not -len(words) <= word < len(words):
            raise ValueError(f"word index {word} is out of range: the caption has {len(words)} words")
        return int(word) % len(words)
    if isinstance(word, str):
        hits = [i for i, w in enumerate(words) if w.lower() == word.strip().lower()]
        if not hits:
            shown = " ".join(words[:30]) + (" ..." if len(words) > 30 else "")
            raise ValueError(f"{word!r} is not a word of the caption; its words are: {shown}")
        return hits[0]
    raise TypeError(f"word must be an index or a string, got {type(word).__name__}")


def explain_maps(captioner, before, after, caption: str, index: int):
    """One word's attribution on both images, as plain data: (before [S, S], after [S, S]) on the model's
    square input, which ``m3diff.overlay.overlay`` maps back onto each image, and a line saying what was
    explained. The work the app asks of the model's process (``m3diff.remote.call_on``): it runs where
    the model lives and sends back numpy and text only, never torch."""
    res = explain_word(captioner, before, after, caption, index)
    mb, ma = (np.asarray(m, dtype=np.float32) for m in res.pixels)
    note = (f"**{res.word}** (word {res.word_index}, tokens {res.tokens}): log p = {res.score:.2f}; "
            f"{res.method}, brighter = pixels that raise it more")
    return mb, ma, note
