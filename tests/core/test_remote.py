"""RemoteCaptioner: the describing API served by a child process gives what DiffCaptioner gives in-process,
carries errors back by type, survives a caller that stops a stream early, and never imports torch into
the parent."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m3diff.describing import GenerationSettings, ModelLoadError
from m3diff.images import ImageError

REPO = Path(__file__).resolve().parents[2]
SHORT = GenerationSettings(max_new_tokens=6)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_config, tiny_tokenizer):
    """A tiny MDP model and its no-MDP twin, saved as a user would have them."""
    import torch

    from m3diff.modeling import M3DiffForConditionalGeneration
    from m3diff.pipeline import DiffCaptioner
    from m3diff.processing import PairProcessor

    root = tmp_path_factory.mktemp("remote")
    processor = PairProcessor.for_config(tiny_config, tiny_tokenizer)
    for name, use_mdp, seed in (("model", True, 1), ("twin", False, 2)):
        torch.manual_seed(seed)
        config = tiny_config.__class__(**{**tiny_config.to_dict(), "use_mdp": use_mdp})
        DiffCaptioner(M3DiffForConditionalGeneration(config), processor).save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def remote(saved):
    from m3diff.remote import RemoteCaptioner

    captioner = RemoteCaptioner.start(saved / "model", twin=saved / "twin", device="cpu")
    yield captioner
    captioner.close()


def test_remote_describes_as_the_in_process_captioner_does(remote, saved, pair):
    from m3diff.pipeline import DiffCaptioner

    local = DiffCaptioner.from_pretrained(saved / "model", device="cpu")
    twin = DiffCaptioner.from_pretrained(saved / "twin", device="cpu")
    assert remote.info == local.info and remote.uses_mdp and remote.twin.info == twin.info
    pairs = [pair, pair[::-1]]
    got, want = remote.describe_batch(pairs, settings=SHORT), local.describe_batch(pairs, settings=SHORT)
    assert [d.caption for d in got] == [d.caption for d in want]
    for g, w in zip(got, want):
        assert g.layer_scores == pytest.approx(w.layer_scores, abs=1e-6)
        for key in ("delta_norm", "attn_eq5", "attn_eq6"):
            for layer in getattr(w.trace, key):
                np.testing.assert_allclose(getattr(g.trace, key)[layer], getattr(w.trace, key)[layer], atol=1e-6)
    parts = list(remote.describe_stream(*pair, settings=SHORT))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert parts[-1].caption == want[0].caption
    assert remote.twin.describe(*pair, with_trace=False, settings=SHORT).caption == twin.describe(
        *pair, with_trace=False, settings=SHORT).caption


def test_a_knockout_crosses_to_the_model_process_and_stays_with_its_call(remote, saved, pair):
    from m3diff.describing import MDPKnockout
    from m3diff.pipeline import DiffCaptioner

    local = DiffCaptioner.from_pretrained(saved / "model", device="cpu")
    layer = local.info.mdp_layers[0]
    knockout = MDPKnockout(scales=(layer,))
    got = remote.describe(*pair, settings=SHORT, knockout=knockout)
    assert got.layer_scores == pytest.approx(local.describe(*pair, settings=SHORT, knockout=knockout).layer_scores,
                                             abs=1e-6)
    assert got.layer_scores[layer] == 0
    assert remote.describe(*pair, settings=SHORT).layer_scores[layer] > 0  # the next call is the full model


def test_a_stream_left_early_does_not_disturb_the_next_request(remote, pair):
    first = remote.describe(*pair, settings=SHORT).caption
    stream = remote.describe_stream(*pair, settings=SHORT)
    next(stream)
    stream.close()
    assert remote.describe(*pair, settings=SHORT).caption == first


def test_errors_come_back_by_type_and_the_process_serves_on(remote, pair, tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        remote.describe(tmp_path / "missing.png", pair[1], settings=SHORT)
    with pytest.raises(ModuleNotFoundError):  # a function whose module the model process cannot import
        remote.call(_function_of_a_module_only_here())
    with pytest.raises(ValueError, match="module-level function"):
        remote.call(lambda captioner: None)
    with pytest.raises(RuntimeError, match="refused"):  # a function's own error, raised in the parent
        remote.call(refuse)
    assert remote.describe(*pair, settings=SHORT).caption  # still serving


def _function_of_a_module_only_here():
    import sys
    import types

    module = types.ModuleType("m3diff_test_only_here")
    exec("def f(captioner):\n    return 1\n", module.__dict__)
    sys.modules[module.__name__] = module  # pickle finds it here; the model process has no such module
    return module.f


def caption_and_source(captioner, before, after):
    """Run in the model process by `call`: gets the captioner itself as its first argument."""
    return captioner.describe(before, after, settings=SHORT).caption, captioner.source


def refuse(captioner):
    raise RuntimeError("refused")


class Odd(Exception):
    """An exception class the parent could import, but from a module that is not sent as it is."""


def raise_odd(captioner):
    raise Odd("odd one")


def an_unpicklable_result(captioner):
    return lambda: None


def test_other_errors_arrive_as_remote_errors_with_their_text(remote, pair):
    from m3diff.remote import RemoteError

    with pytest.raises(RemoteError, match="Odd: odd one"):
        remote.call(raise_odd)
    with pytest.raises(Exception, match="pickle|lambda"):  # failed in the child while sending: its own error
        remote.call(an_unpicklable_result)
    assert remote.describe(*pair, settings=SHORT).caption


def test_a_stream_dropped_unclosed_does_not_hold_the_model(remote, pair):
    import gc

    stream = remote.describe_stream(*pair, settings=GenerationSettings(max_new_tokens=40))
    next(stream)
    del stream  # what a closed browser tab amounts to
    gc.collect()
    assert remote.describe(*pair, settings=SHORT).caption  # the rest was read; the lock is free again


def test_call_runs_a_function_of_the_captioner_where_the_model_lives(remote, saved, pair):
    from m3diff.remote import call_on

    caption, source = call_on(remote, caption_and_source, *pair)
    assert source == str(saved / "model") and caption == remote.describe(*pair, settings=SHORT).caption


def test_a_model_that_cannot_load_is_a_model_load_error(tmp_path):
    from m3diff.remote import RemoteCaptioner

    (tmp_path / "empty").mkdir()
    captioner = RemoteCaptioner.start(tmp_path / "empty", device="cpu")
    with pytest.raises(ModelLoadError, match="no config.json"):
        captioner.info
    captioner.close()


def test_the_app_process_never_imports_torch_with_the_model_in_its_own_process(saved):
    script = f"""
import sys
import app
services = app.load_services(app.AppConfig(model={str(saved / 'model')!r}, twin={str(saved / 'twin')!r},
                                           separate_process=True, max_new_tokens=6))
app.build_app(services)
caption, scores, _ = app.describe_api(services, {str(REPO / 'examples/images/color_before.png')!r},
                                   {str(REPO / 'examples/images/color_after.png')!r}, 6)
assert caption and set(scores) == {{'2', '3', '4'}}, (caption, scores)
*_, (streamed, _, shown) = app.describe_events(services, {str(REPO / 'examples/images/color_before.png')!r},
                                               {str(REPO / 'examples/images/color_after.png')!r}, 6)
assert streamed == caption and shown.trace is not None
assert app.twin_caption(services, shown, 6)
shown.caption = "the red cube moved"  # a random model's caption may hold no word to pick
before_map, after_map, note = app.explain_word(services, shown, "1: red")
assert before_map.size == shown.before.size and "log p" in note, note
assert "M parameters" in app.model_card(services.captioner, services.twin)
heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)
assert not heavy, heavy
services.captioner.close()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
