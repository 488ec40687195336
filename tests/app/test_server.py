"""The app served on 127.0.0.1: /describe through gradio_client, and only the app's own folders served."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest

import app

pytestmark = pytest.mark.slow


def _status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_describe_endpoint_through_gradio_client(server, pair_files, bad_files, tiny_config):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    caption, scores, changes = client.predict(handle_file(pair_files[0]), handle_file(pair_files[1]), 8,
                                              api_name="/describe")
    assert isinstance(caption, str)
    assert sorted(scores) == sorted(str(k) for k in tiny_config.mdp_layers)
    assert changes is None  # this model has no change reader: not an empty reading
    # a bad upload comes back as the app's message, not a traceback
    with pytest.raises(Exception, match="1×1"):
        client.predict(handle_file(str(bad_files["1x1"])), handle_file(pair_files[1]), 8, api_name="/describe")


def test_only_the_apps_folders_are_served(server):
    assert _status(server + "gradio_api/file=" + str(app.EXAMPLES_DIR / "images" / "color_before.png")) == 200
    for secret in (app.HERE / "pyproject.toml", app.HERE / "app.py", "/etc/passwd"):
        assert _status(server + f"gradio_api/file={secret}") in (403, 404)


def test_uploads_over_the_size_limit_are_refused(server, tmp_path):
    import httpx

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (21 * 2**20))  # over MAX_FILE_SIZE (20 MB)
    with big.open("rb") as f:
        r = httpx.post(server + "gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert r.status_code == 413


@pytest.mark.parametrize("kind", ["not an image", "empty", "bomb", "truncated"])
def test_bad_uploads_get_the_apps_message_through_the_served_app(server, pair_files, bad_files, kind):
    """Gradio's own preprocessing used to fail first, with its raw message and the server's temp paths."""
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    with pytest.raises(Exception) as err:
        client.predict(handle_file(str(bad_files[kind])), handle_file(pair_files[1]), 8, api_name="/describe")
    message = str(err.value)
    assert "before image" in message, message
    assert "preprocess" not in message and "/tmp" not in message and "gradio" not in message.lower(), message


def test_a_16_bit_png_reaches_the_model_as_the_library_reads_it(server, services, pair_files, tmp_path):
    """Gradio's preprocessing clipped 16-bit grayscale to black and white; the app now reads it as the
    library does, so the layer scores through the served app equal the library's."""
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    ramp = (np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16)
    deep = tmp_path / "deep.png"
    Image.fromarray(ramp, mode="I;16").save(deep)
    client = Client(server, verbose=False)
    _, scores, _ = client.predict(handle_file(str(deep)), handle_file(pair_files[1]), 8, api_name="/describe")
    expected = services.captioner.describe(deep, pair_files[1], with_trace=True).layer_scores
    assert scores == {str(k): round(float(v), 6) for k, v in expected.items()}


def test_the_api_page_names_the_describe_outputs(server):
    import json

    info = json.loads(urllib.request.urlopen(server + "gradio_api/info", timeout=10).read())
    returns = info["named_endpoints"]["/describe"]["returns"]
    assert [r["label"] for r in returns] == ["caption", "layer_scores", "changes"]


def test_plain_http_describe_without_the_optional_max_new_tokens(server, pair_files):
    """The API page calls max_new_tokens optional; over plain HTTP it was required ("needed: 3, got: 2")."""
    import json

    import httpx

    api = server + "gradio_api"
    with httpx.Client(timeout=60) as http:
        files = [("files", (p.rsplit("/", 1)[-1], open(p, "rb").read(), "image/png")) for p in pair_files]
        paths = http.post(f"{api}/upload", files=files).raise_for_status().json()
        data = [{"path": p, "meta": {"_type": "gradio.FileData"}} for p in paths]  # two of three inputs
        event = http.post(f"{api}/call/describe", json={"data": data}).raise_for_status().json()
        text = http.get(f"{api}/call/describe/{event['event_id']}").text
    assert "event: complete" in text, text[-500:]
    caption, scores, changes = json.loads(text.split("event: complete", 1)[1].split("data:", 1)[1].splitlines()[0])
    assert isinstance(caption, str) and scores and changes is None


def test_finish_every_change_reaches_the_model_through_the_served_app(server, services, pair_files):
    """The Describe button's own endpoint, as the page calls it: with the box ticked, a model that gives the
    end 0.4 and three words 0.2 each goes on (plain greedy stops at once)."""
    from gradio_client import Client, handle_file

    from tests.core.test_pipeline import _fixed_next_token

    tok = services.captioner.processor.tokenizer
    words = tuple(tok.convert_tokens_to_ids(w) for w in ("Ġthe", "red", "all"))
    hooks = [_fixed_next_token(services.captioner, 0.4, words)]
    try:
        client = Client(server, verbose=False)
        pair = [handle_file(p) for p in pair_files]
        captions = {}
        for finish in (False, True):
            job = client.submit(*pair, "L4", "attn_eq5", 8, finish, api_name="/describe_stream")
            job.result()
            # the stream's last update carries the word picker only: the caption is the last one sent
            captions[finish] = [o[0] for o in job.outputs() if isinstance(o[0], str)][-1]
    finally:
        for h in hooks:
            h.remove()
    assert captions == {False: "", True: " ".join(["the"] * 8)}


def test_describe_endpoint_carries_what_the_change_reader_read(reader_server, reader_captioner, pair_files):
    """/describe's third output: the reading as JSON (ChangeReading.to_json), which rebuilds the facts."""
    from gradio_client import Client, handle_file

    from m3diff.describing import GenerationSettings
    from m3diff.facts import ChangeFact

    client = Client(reader_server, verbose=False)
    caption, _, changes = client.predict(handle_file(pair_files[0]), handle_file(pair_files[1]), 8,
                                         api_name="/describe")
    want = reader_captioner.describe(*pair_files, settings=GenerationSettings(max_new_tokens=8))
    assert caption == want.caption
    assert set(changes) == {"changes", "size", "threshold"} and changes["size"] == [64, 48]
    assert [ChangeFact.from_json(c).type for c in changes["changes"]] == [c.type for c in want.changes.changes]
    assert all(c["box_after"] == [round(x, 1) for x in f.box_after]
               for c, f in zip(changes["changes"], want.changes.changes) if f.box_after is not None)
