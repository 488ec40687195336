"""DiffCaptioner: loading, describe, batches, streaming; plain CPU data out."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from m3diff.describing import PairTrace
from m3diff.pipeline import DiffCaptioner, GenerationSettings, ModelLoadError

SHORT = GenerationSettings(max_new_tokens=8)


@pytest.fixture
def captioner(make_model, processor):
    return DiffCaptioner(make_model(seed=1), processor, source="test")


def test_describe_returns_caption_scores_and_maps_as_plain_data(captioner, pair, tiny_config):
    d = captioner.describe(*pair, settings=SHORT)
    assert isinstance(d.caption, str)
    assert list(d.layer_scores) == tiny_config.mdp_layers
    assert all(isinstance(v, float) and 0 < v < 1 for v in d.layer_scores.values())
    g = tiny_config.patch_grid
    assert isinstance(d.trace, PairTrace) and d.trace.layers == tuple(tiny_config.mdp_layers)
    for layer in tiny_config.mdp_layers:
        assert isinstance(d.trace.delta_norm[layer], np.ndarray) and d.trace.delta_norm[layer].shape == (g, g)
        assert d.trace.attn_eq5[layer].shape == (2, g, g)
        before, after = d.trace.maps(layer, "attn_eq5")
        assert before.shape == after.shape == (g, g)
    json.dumps(d.to_json(with_maps=True))  # serialisable as is


def test_batch_equals_one_by_one(captioner, pair):
    other = (pair[1], pair[0])
    batch = captioner.describe_batch([pair, other], settings=SHORT)
    singles = [captioner.describe(*p, settings=SHORT) for p in (pair, other)]
    assert [d.caption for d in batch] == [d.caption for d in singles]
    for a, b in zip(batch, singles):
        assert a.layer_scores == pytest.approx(b.layer_scores, abs=1e-5)


def test_stream_grows_and_ends_with_the_full_caption(captioner, pair):
    parts = list(captioner.describe_stream(*pair, settings=SHORT))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert parts[-1].caption == captioner.describe(*pair, settings=SHORT).caption
    assert parts[0].layer_scores == parts[-1].layer_scores  # the trace is there from the first token


def test_no_mdp_model_has_no_trace(make_model, processor, pair):
    d = DiffCaptioner(make_model(use_mdp=False), processor).describe(*pair, settings=SHORT)
    assert d.layer_scores == {} and d.trace is None


@pytest.mark.parametrize("use_mdp", [True, False])
def test_feature_difference_is_where_the_llm_tokens_of_the_two_images_differ(make_model, processor, pair,
                                                                             tiny_config, use_mdp):
    c = DiffCaptioner(make_model(seed=1, use_mdp=use_mdp), processor, source="test")
    g = tiny_config.patch_grid
    d, same = c.describe_batch([pair, (pair[0], pair[0])], settings=SHORT)
    assert d.feature_difference.shape == (g, g) and np.ptp(d.feature_difference) > 0
    assert np.abs(same.feature_difference).max() < 1e-4  # identical images: the LLM reads the same tokens
    streamed = list(c.describe_stream(*pair, settings=SHORT))[-1]
    np.testing.assert_allclose(streamed.feature_difference, d.feature_difference, atol=1e-5)
    assert c.describe(*pair, with_trace=False, settings=SHORT).feature_difference is None
    assert np.asarray(d.to_json(with_maps=True)["feature_difference"]).shape == (g, g)


def test_save_and_load_from_a_directory(captioner, pair, tmp_path):
    captioner.save_pretrained(tmp_path)
    loaded = DiffCaptioner.from_pretrained(tmp_path)
    assert loaded.describe(*pair, settings=SHORT).caption == captioner.describe(*pair, settings=SHORT).caption


def test_untrained_fallback_says_so_loudly():
    with pytest.warns(UserWarning, match="RANDOM"):
        c = DiffCaptioner.untrained()
    assert not c.trained and c.source == "untrained-tiny"


def test_untrained_fallback_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    with pytest.warns(UserWarning):
        DiffCaptioner.untrained()
    assert torch.equal(torch.rand(1), expected)


def test_load_errors_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        DiffCaptioner.from_pretrained(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="hub did not answer|not a local directory"):
        DiffCaptioner.from_pretrained("nobody/no-such-model-xyz")


def test_large_models_are_refused_on_cpu(tmp_path):
    from m3diff.config import preset

    preset("m3diff-7b").save_pretrained(tmp_path)  # config only: the check runs before any weight loads
    with pytest.raises(ModelLoadError, match="GPU"):
        DiffCaptioner.from_pretrained(tmp_path, device="cpu")


def test_cli_describe_json(captioner, pair, tmp_path):
    captioner.save_pretrained(tmp_path / "model")
    pair[0].save(tmp_path / "a.png")
    pair[1].save(tmp_path / "b.png")
    run = subprocess.run(
        [sys.executable, "-m", "m3diff.cli", "describe", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
         "--model", str(tmp_path / "model"), "--json", "--max-new-tokens", "8"],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert isinstance(out["caption"], str) and set(out["layer_scores"]) == {"2", "3", "4"}


def test_cli_describe_bad_image_is_one_line_exit_2(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    run = subprocess.run([sys.executable, "-m", "m3diff.cli", "describe", str(tmp_path / "a.png"),
                          str(tmp_path / "a.png"), "--model", "embedded"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "not an image" in run.stderr and "Traceback" not in run.stderr


def test_cli_describe_passes_the_end_threshold_and_refuses_a_bad_one(pair, tmp_path, monkeypatch, capsys):
    from m3diff.cli import main

    pair[0].save(tmp_path / "a.png")
    pair[1].save(tmp_path / "b.png")
    seen = []

    class Spy:
        source, uses_mdp = "spy", False

        def use_recommended_threads(self):
            pass

        def describe(self, before, after, *, instruction=None, settings):
            from m3diff.describing import Description

            seen.append(settings)
            return Description("a caption", {}, None, 0.1)

    monkeypatch.setattr(DiffCaptioner, "from_pretrained", classmethod(lambda cls, *a, **k: Spy()))
    args = ["describe", str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert main(args + ["--min-end-probability", "0.5"]) == 0
    assert seen[-1].min_end_probability == 0.5 and "a caption" in capsys.readouterr().out
    assert main(args) == 0 and seen[-1].min_end_probability is None
    assert main(args + ["--min-end-probability", "2"]) == 2
    err = capsys.readouterr().err
    assert "--min-end-probability must be in (0, 1]" in err and "Traceback" not in err and len(seen) == 2


def test_public_api_is_lazy():
    code = "import sys, m3diff; assert 'torch' not in sys.modules; print(m3diff.DiffCaptioner.__name__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "DiffCaptioner"


def test_plain_llava_onevision_directory_loads_with_fresh_mdp(make_model, processor, pair, tmp_path, caplog):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    base = make_model(use_mdp=False)
    fields = {k: v for k, v in base.config.to_dict().items() if not k.startswith("mdp_") and k not in ("use_mdp", "model_type")}
    plain = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(**fields))
    plain.load_state_dict(base.state_dict())
    plain.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        captioner = DiffCaptioner.from_pretrained(tmp_path)
    assert captioner.uses_mdp
    assert "initialised fresh" in caplog.text
    assert set(captioner.describe(*pair, settings=SHORT).layer_scores) == set(captioner.model.config.mdp_layers)


def _fixed_next_token(captioner, p_end: float, words: tuple[int, ...]):
    """Make the LM head always say: the end with p_end, else one of ``words``, the first a little likelier than
    the others (and none alone likelier than the end)."""
    eos = captioner.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    probs = torch.full((captioner.model.config.text_config.vocab_size,), 1e-9)
    probs[eos] = p_end
    rest = (1 - p_end) / len(words)
    probs[list(words)] = rest - 0.01
    probs[words[0]] = rest + 0.01 * (len(words) - 1)
    logits = probs.log()

    def hook(module, inputs, output):
        return logits.to(output.dtype).expand_as(output).clone()

    return captioner.model.get_output_embeddings().register_forward_hook(hook)


def test_greedy_ends_where_going_on_is_likelier_and_the_end_threshold_does_not(captioner, pair):
    tok = captioner.processor.tokenizer
    words = tuple(tok.convert_tokens_to_ids(w) for w in ("Ġthe", "red", "all"))
    assert tok.unk_token_id not in words
    handle = _fixed_next_token(captioner, 0.4, words)  # go on: 0.6, split three ways
    try:
        assert captioner.describe(*pair, settings=SHORT).caption == ""  # plain greedy: 0.4 beats each 0.2
        gone_on = captioner.describe(*pair, settings=GenerationSettings(max_new_tokens=8, min_end_probability=0.5))
        assert gone_on.caption == tok.decode([words[0]] * 8).strip()  # the likeliest word, to the length limit
        # below the threshold's bar the end is free to win, as in plain greedy
        assert captioner.describe(*pair, settings=GenerationSettings(max_new_tokens=8, min_end_probability=0.3)).caption == ""
        batch = captioner.describe_batch([pair, pair[::-1]], settings=GenerationSettings(8, min_end_probability=0.5))
        assert [d.caption for d in batch] == [gone_on.caption] * 2
    finally:
        handle.remove()


def test_the_end_threshold_is_a_probability():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="min_end_probability"):
            GenerationSettings(min_end_probability=bad)
    assert GenerationSettings(min_end_probability=1.0).min_end_probability == 1.0


