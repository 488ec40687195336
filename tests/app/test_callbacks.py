"""The app's callbacks as plain functions: describe, heatmaps, twin, model card, and every bad input."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import app


def test_describe_streams_a_growing_caption_with_scores_and_trace(services, pair_files, tiny_config):
    events = list(app.describe_events(services, *pair_files, max_new_tokens=8))
    assert len(events) >= 2
    captions = [c for c, _, _ in events]
    for shorter, longer in zip(captions, captions[1:]):
        assert longer.startswith(shorter)
    caption, scores, shown = events[-1]
    assert sorted(scores) == sorted(tiny_config.mdp_layers)
    assert shown.trace is not None and shown.caption == caption
    assert shown.before.size == (64, 48)


def test_describe_api_returns_caption_and_json_scores(services, pair_files, tiny_config):
    caption, scores, _ = app.describe_api(services, *pair_files, max_new_tokens=8)
    assert isinstance(caption, str)
    assert sorted(scores) == sorted(str(k) for k in tiny_config.mdp_layers)
    assert all(isinstance(v, float) and 0 < v < 1 for v in scores.values())


@pytest.mark.parametrize("which", ["not an image", "truncated", "1x1", "bomb", "empty"])
def test_every_bad_upload_is_one_clear_gr_error(services, pair_files, bad_files, which):
    bad = bad_files[which]
    expected = {"not an image": "not an image", "truncated": "truncated", "1x1": "1×1", "bomb": "refused",
                "empty": "empty"}[which]
    for args in ((str(bad), pair_files[1]), (pair_files[0], str(bad))):
        with pytest.raises(gr.Error) as err:
            list(app.describe_events(services, *args, max_new_tokens=4))
        message = err.value.message
        assert expected in message
        assert ("before" in message) == (args[0] == str(bad))
        assert "/tmp" not in message and "Traceback" not in message
    with pytest.raises(gr.Error):
        app.describe_api(services, str(bad), pair_files[1])


def test_a_missing_image_is_named(services, pair_files):
    with pytest.raises(gr.Error, match="after"):
        list(app.describe_events(services, pair_files[0], None))
    with pytest.raises(gr.Error, match="before and after"):
        app.describe_api(services, None, None)


@pytest.mark.parametrize("mode", ["16-bit", "CMYK", "palette", "RGBA", "grayscale"])
def test_odd_modes_are_converted_and_described(services, pair_files, odd_mode_files, mode):
    *_, (caption, scores, shown) = app.describe_events(services, str(odd_mode_files[mode]), pair_files[1], 4)
    assert shown.before.mode == "RGB" and shown.before.size == (56, 40)
    assert scores
    hb, _, _ = app.heatmaps(shown, next(iter(scores)), "attn_eq5")
    assert hb.size == (56, 40)


def test_exif_rotation_is_honoured(services, pair_files, exif_rotated):
    *_, (_, _, shown) = app.describe_events(services, str(exif_rotated), pair_files[1], 4)
    assert shown.before.size == (30, 60)


def test_pairs_of_different_sizes_are_handled(services, tmp_path, pair_files):
    big = tmp_path / "big.png"
    Image.open(pair_files[1]).resize((200, 90)).save(big)
    *_, (_, scores, shown) = app.describe_events(services, pair_files[0], str(big), 4)
    hb, ha, _ = app.heatmaps(shown, next(iter(scores)), "delta_norm")
    assert hb.size == (64, 48) and ha.size == (200, 90)  # each map over its own image
    from m3diff.overlay import common_size

    b, a = common_size(shown.before, shown.after)
    assert b.size == a.size == (64, 48)  # the slider's pair is aligned


def test_heatmaps_change_with_layer_and_kind(services, pair_files, tiny_config):
    *_, (_, _, shown) = app.describe_events(services, *pair_files, max_new_tokens=2)
    layers = tiny_config.mdp_layers
    pics = {(layer, kind): np.asarray(app.heatmaps(shown, f"L{layer}", kind)[1])
            for layer in layers for kind in ("attn_eq5", "attn_eq6", "delta_norm")}
    assert len({p.tobytes() for p in pics.values()}) > 1
    assert app.heatmaps(None, "L1", "attn_eq5") == (None, None, "")
    with pytest.raises(gr.Error, match="no MDP trace"):
        app.heatmaps(shown, "L999", "attn_eq5")


def test_twin_caption_runs_the_no_mdp_model_only_when_loaded(services, pair_files):
    *_, (_, _, shown) = app.describe_events(services, *pair_files, max_new_tokens=4)
    assert isinstance(app.twin_caption(services, shown, 4), str)
    alone = app.Services(services.captioner, None)
    assert "no no-MDP twin" in app.twin_caption(alone, shown, 4)


def test_caption_words_are_indexed_and_clean():
    assert app.caption_words("The red cube, moved.") == ["0: The", "1: red", "2: cube", "3: moved"]
    assert app.caption_words("") == []


def test_explain_word_needs_a_caption_and_a_word(services, pair_files):
    with pytest.raises(gr.Error, match="Describe a pair first"):
        app.explain_word(services, None, "0: the")
    *_, (_, _, shown) = app.describe_events(services, *pair_files, max_new_tokens=4)
    with pytest.raises(gr.Error, match="Pick a word"):
        app.explain_word(services, shown, None)


def test_model_card_says_what_the_model_is_and_does_not_know(services):
    card = app.model_card(services.captioner, services.twin)
    assert "test-tiny" in card and "MDP" in card and "test-twin" in card
    untrained = type(services.captioner)(services.captioner.model, services.captioner.processor,
                                         source="untrained-tiny", trained=False)
    card = app.model_card(untrained)
    assert "random" in card.lower() and "generated scenes" in card and "not loaded" in card


def test_score_figure_has_one_bar_per_layer(services, pair_files, tiny_config):
    *_, (_, scores, shown) = app.describe_events(services, *pair_files, max_new_tokens=2)
    fig = app.score_figure(shown.trace, scores)
    bars = [t for t in fig.data if t.type == "bar"]
    assert list(bars[0].x) == [f"L{k}" for k in sorted(tiny_config.mdp_layers)]
    assert list(bars[0].y) == pytest.approx([scores[k] for k in sorted(scores)])


def test_build_app_names_the_describe_endpoint(services):
    demo = app.build_app(services)
    fns = {d.api_name: d for d in demo.fns.values()}
    assert "describe" in fns
    # streamed captions run one at a time; /describe calls wait together and are batched; the
    # dashboard's events are unlimited
    assert fns["describe_stream"].concurrency_id == "model" and fns["describe_stream"].concurrency_limit == 1
    assert fns["describe"].concurrency_id == "model-api" and fns["describe"].concurrency_limit == 4
    cpu = [d for d in demo.fns.values() if d.concurrency_id not in ("model", "model-api")]
    # gr.Examples' own loader keeps "default", which launch() sets to unlimited (queue default None)
    assert cpu and all(d.concurrency_limit is None or (d.concurrency_limit == "default" and d.fn.__name__ == "load_example")
                       for d in cpu)


def test_the_app_module_holds_no_model_or_mutable_state():
    import types

    import torch

    for name, value in vars(app).items():
        if name.startswith("__") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        assert not isinstance(value, (list, dict, set, torch.nn.Module)), name
        assert not hasattr(value, "describe"), name


def test_main_reports_a_bad_model_in_one_line(tmp_path, capsys):
    (tmp_path / "weights").mkdir()
    assert app.main(["--model", str(tmp_path / "weights")]) == 2
    err = capsys.readouterr().err
    assert "no config.json" in err and "Traceback" not in err


def test_a_large_model_on_cpu_is_refused_with_a_gpu_hint(tmp_path, capsys):
    from m3diff.config import preset

    preset("m3diff-7b").save_pretrained(tmp_path)
    assert app.main(["--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "B parameters" in err and "GPU" in err


def test_parse_args_reads_the_environment(monkeypatch):
    monkeypatch.setenv("M3DIFF_MODEL", "org/some-model")
    assert app.parse_args([]).model == "org/some-model"
    assert app.parse_args(["--model", "embedded"]).model is None


def test_the_model_runs_in_its_own_process_unless_asked_otherwise():
    assert app.parse_args([]).separate_process  # python app.py / m3diff app
    assert not app.parse_args(["--same-process"]).separate_process
    assert not app.AppConfig().separate_process  # programmatic use (tests, the Space's entry) keeps it in-process
    entry = (app.HERE / "spaces" / "entry.py").read_text()
    assert '"--same-process"' in entry  # ZeroGPU's spaces.GPU can only reach a model in the server's process


def test_examples_cover_every_change_type_and_a_real_photo_pair():
    from m3diff.change_types import TYPE_IDS

    examples = app.load_examples()
    assert {e.id for e in examples} >= set(TYPE_IDS) | {"motorcycle"}
    assert all(e.before.is_file() and e.after.is_file() for e in examples)
    size = sum(f.stat().st_size for f in app.EXAMPLES_DIR.rglob("*") if f.is_file())
    assert size < 2 * 2**20


def test_explain_word_draws_the_attribution_of_the_picked_word(services, pair_files):
    *_, (_, _, shown) = app.describe_events(services, *pair_files, max_new_tokens=2)
    shown = app.Shown(shown.before, shown.after, shown.trace, "the red cube moved behind the blue sphere")
    words = app.caption_words(shown.caption)
    assert words[2] == "2: cube"
    hb, ha, note = app.explain_word(services, shown, words[2])
    assert hb.size == shown.before.size and ha.size == shown.after.size
    assert "cube" in note and "word 2" in note
    assert "Colour scale" in note and "one for both images" in note  # attribution: signed, one shared scale
    with pytest.raises(gr.Error, match="out of range"):
        app.explain_word(services, shown, "99: nothing")


def test_concurrent_api_calls_are_batched_and_errors_stay_with_their_caller(services, pair_files, bad_files):
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import pair_images

    calls = []
    real = services.captioner.describe_batch

    def spy(pairs, **kw):
        calls.append(len(pairs))
        return real(pairs, **kw)

    services.captioner.describe_batch = spy
    alone = app.describe_api(services, *pair_files, 6)
    args = [pair_files] * 5 + [(str(bad_files["truncated"]), pair_files[1])]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(app.describe_api, services, *a, 6) for a in args]
    results = [f.result() for f in futures[:5]]
    with pytest.raises(gr.Error, match="truncated"):
        futures[5].result()
    assert all(r[0] == alone[0] for r in results)  # the same caption as a call on its own
    assert sum(calls) == 6 and max(calls) <= 4 and len(calls) < 6  # 5 good pairs in fewer than 5 batches


def test_m3diff_app_command_reports_a_bad_model_in_one_line(tmp_path, capsys):
    from m3diff.cli import main as cli_main

    assert cli_main(["app", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_the_app_module_imports_from_any_directory(tmp_path):
    # `m3diff app` imports it wherever a person stands; an editable install must map it too (Makefile)
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import app; print(app.__file__)"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert app.Path(out.stdout.strip()).name == "app.py"


def test_without_reports_the_dashboard_shows_the_paper():
    fig = app.dashboard_figure({}, "CIDEr-D")
    assert "paper" in fig.layout.title.text
    assert {t.name for t in fig.data} >= {"M3Diff (paper)"}


REPORT_FIELDS = {"overall", "per_type", "per_domain", "per_source", "per_changes", "pairs", "per_pair", "meta", "comparison",
                 "runs", "refs", "types", "change_types", "domain", "caption", "prediction", "ci", "n", "_images"}


def test_app_py_is_layout_short_functions_that_read_no_report_field():
    import ast

    tree = ast.parse(app.HERE.joinpath("app.py").read_text(encoding="utf-8"))
    long = {f.name: f.end_lineno - f.lineno + 1 for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > 60}
    assert not long
    keys = set()
    for node in ast.walk(tree):  # report["per_type"], report.get("pairs"), "refs" in record
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            keys.add(node.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant):
            keys.add(node.args[0].value)
    assert not keys & REPORT_FIELDS, keys & REPORT_FIELDS


def test_the_twin_is_decoded_as_the_model_was(services, pair_files):
    """'Finish every change' holds for the no-MDP twin's caption below the model's too."""
    from tests.core.test_pipeline import _fixed_next_token

    *_, (_, _, shown) = app.describe_events(services, *pair_files, max_new_tokens=4)
    tok = services.twin.processor.tokenizer
    hook = _fixed_next_token(services.twin, 0.4, tuple(tok.convert_tokens_to_ids(w) for w in ("Ġthe", "red", "all")))
    try:
        assert app.twin_caption(services, shown, 4) == ""
        assert app.twin_caption(services, shown, 4, finish_every_change=True) == "the the the the"
    finally:
        hook.remove()




def test_python_app_py_starts_the_app():
    """`python app.py` (and `make app`) parsed nothing and exited at once: the module had lost its main."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(app.HERE / "app.py"), "--help"], capture_output=True, text=True,
                         timeout=120, cwd=app.HERE)
    assert out.returncode == 0 and "usage: app.py" in out.stdout, out.stderr[-1000:]
