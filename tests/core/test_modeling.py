"""M3DiffForConditionalGeneration: MDP inside LLaVA-OneVision, baseline equivalence, save/load."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from m3diff.config import M3DiffConfig, preset
from m3diff.modeling import M3DiffForConditionalGeneration, register_auto_classes


def batch_for(processor, pair, answers=None):
    return processor.encode_pairs([pair, pair[::-1]], answers=answers)


def test_forward_routes_both_images_through_mdp(make_model, processor, pair):
    model = make_model()
    batch = batch_for(processor, pair)
    out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    # the MDP changes the image features: zeroing its Score makes F' vanish
    with torch.no_grad():
        for scale in model.model.mdp.scales:
            scale.score.bias.fill_(-1e4)
    out_zero = model(**batch)
    assert not torch.allclose(out.logits, out_zero.logits)


def test_use_mdp_false_is_plain_llava_onevision(make_model, processor, pair):
    model = make_model(use_mdp=False)
    assert model.model.mdp is None
    plain_config = LlavaOnevisionConfig(**{k: v for k, v in model.config.to_dict().items()
                                          if not k.startswith("mdp_") and k not in ("use_mdp", "model_type")})
    plain = LlavaOnevisionForConditionalGeneration(plain_config).eval()
    plain.load_state_dict(model.state_dict(), strict=True)
    batch = batch_for(processor, pair)
    torch.testing.assert_close(model(**batch).logits, plain(**batch).logits, rtol=0, atol=0)


def test_mdp_needs_pairs(make_model, processor, pair):
    model = make_model()
    batch = processor(images=[[pair[0]]], text=[processor.prompt().replace("<image>", "", 1)], return_tensors="pt")
    with pytest.raises(ValueError, match="exactly two images"):
        model(**batch)


def test_save_load_gives_identical_logits_in_safetensors(make_model, processor, pair, tmp_path):
    model = make_model(seed=3)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "m3diff"
    loaded = M3DiffForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch = batch_for(processor, pair)
    torch.testing.assert_close(model(**batch).logits, loaded(**batch).logits, rtol=0, atol=0)
    # and through the Auto classes, once registered (explicitly: importing m3diff registers nothing)
    register_auto_classes()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), M3DiffConfig)
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert isinstance(auto, M3DiffForConditionalGeneration)


def test_loading_plain_llava_onevision_reports_fresh_mdp(make_model, processor, pair, tmp_path):
    base = make_model(use_mdp=False, seed=5)
    plain_config = LlavaOnevisionConfig(**{k: v for k, v in base.config.to_dict().items()
                                          if not k.startswith("mdp_") and k not in ("use_mdp", "model_type")})
    plain = LlavaOnevisionForConditionalGeneration(plain_config)
    plain.load_state_dict(base.state_dict())
    plain.save_pretrained(tmp_path)
    model, fresh = M3DiffForConditionalGeneration.from_llava_onevision(str(tmp_path), mdp_layers=[2, 4], mdp_num_heads=2)
    assert model.config.use_mdp and model.config.mdp_layers == [2, 4]
    assert fresh and all(".mdp." in f".{k}" for k in fresh)
    assert len(fresh) == len([n for n, _ in model.model.mdp.named_parameters()])
    # everything else came from the checkpoint
    torch.testing.assert_close(model.lm_head.weight, plain.lm_head.weight)


def test_two_image_generation(make_model, processor, pair):
    model = make_model()
    batch = batch_for(processor, pair)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (2, batch["input_ids"].shape[1] + 6)


def test_trace_maps_have_each_images_patch_grid(make_model, processor, tiny_config):
    from PIL import Image

    model = make_model()
    wide, tall = Image.new("RGB", (90, 30), "red"), Image.new("RGB", (20, 70), "blue")
    batch = processor.encode_pairs([(wide, tall)])
    feats = model.model.get_image_features(
        batch["pixel_values"], batch["image_sizes"], batch_num_images=batch["batch_num_images"], output_mdp_trace=True
    )
    g = tiny_config.patch_grid
    trace = feats.mdp_trace
    assert trace.layers == (2, 3, 4)
    assert trace.delta_norm.shape == (1, 3, g, g)
    assert trace.attn_eq5.shape == trace.attn_eq6.shape == (1, 3, 2, g, g)
    assert [f.shape[0] for f in feats.pooler_output] == [g * g + 1] * 2


def test_bf16_forward_and_loss(make_model, processor, pair):
    model = make_model().to(torch.bfloat16)
    batch = batch_for(processor, pair, answers=["the red square appeared", "it is gone"])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    out = model(**batch)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_info_7b_matches_llava_onevision_plus_mdp():
    run = lambda *a: json.loads(subprocess.run([sys.executable, "-m", "m3diff.cli", "info", *a, "--json"],
                                               capture_output=True, text=True, check=True).stdout)
    with_mdp, without = run("--preset", "m3diff-7b"), run("--preset", "m3diff-7b", "--no-mdp")
    assert without["total"] == 8_030_348_832  # the released LLaVA-OneVision-7B
    assert without["mdp"] == 0 and with_mdp["mdp"] > 0
    assert with_mdp["total"] == 8_030_348_832 + with_mdp["mdp"]
    assert with_mdp["vision"] + with_mdp["projector"] + with_mdp["language_model"] + with_mdp["mdp"] == with_mdp["total"]


def test_presets_registry_and_validation():
    assert preset("m3diff-7b").patch_grid == 27
    with pytest.raises(KeyError, match="known presets"):
        preset("huge")
    with pytest.raises(ValueError, match="outside the vision tower"):
        preset("tiny", mdp_layers=[0, 9])
