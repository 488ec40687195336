"""Fixtures for the app tests: app Services over tiny random models (seconds on a CPU), image files of
every kind a person might upload, and report.json files in `m3diff eval`'s shape (one over generated pairs,
and the same with a change reader's detection section)."""
from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import pair_images


@pytest.fixture
def services(make_model, processor):
    import app
    from m3diff.pipeline import DiffCaptioner

    captioner = DiffCaptioner(make_model(seed=1), processor, source="test-tiny", trained=True)
    twin = DiffCaptioner(make_model(seed=2, use_mdp=False), processor, source="test-twin", trained=True)
    return app.Services(captioner, twin, {}, "", app.AppConfig(max_new_tokens=8))


@pytest.fixture(scope="session")
def reader_captioner():
    """DiffCaptioner.untrained(change_reader=True): a tiny random model with a change reader. Session-wide
    (it takes seconds to build and describing leaves it unchanged)."""
    import warnings

    from m3diff.pipeline import DiffCaptioner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no trained weights": meant
        return DiffCaptioner.untrained(change_reader=True)


@pytest.fixture
def reader_services(reader_captioner):
    import app

    return app.Services(reader_captioner, None, {}, "", app.AppConfig(max_new_tokens=4))


@pytest.fixture(scope="module")
def generated_file(tmp_path_factory):
    """A report.json over generated pairs whose images do not ship (regenerated from its settings)."""
    from tests.analysis.generated_reports import make_generated_report

    return make_generated_report(tmp_path_factory.mktemp("gen"))


def _away_from(box, size: int = 64):
    """A 4-px box in a corner of a ``size``-px image whose centre lies outside ``box``."""
    for x, y in ((0, 0), (size - 4, 0), (0, size - 4), (size - 4, size - 4)):
        if not (box[0] <= x + 2 <= box[2] and box[1] <= y + 2 <= box[3]):
            return (float(x), float(y), x + 4.0, y + 4.0)
    raise AssertionError(f"no corner outside {box}")


@pytest.fixture(scope="module")
def read_report_file(generated_file):
    """The generated report with a detection section for one pair, made through analysis.detection's own
    scoring: one true change read exactly, one read on the wrong object and boxed in a corner, the others
    missed, and one type read that did not happen. Returns (path, pair id, {"right" / "wrong": the true fact,
    "invented": its type, "missed": their types})."""
    from dataclasses import replace

    from analysis.detection import new_value, score_pair, summarize_detection
    from analysis.evidence import generator_settings
    from analysis.report import DetectionRun, read_report
    from m3diff.data.synth.generator import regenerate
    from m3diff.facts import ChangeFact, ObjectFact, facts_of_record

    loaded = read_report(generated_file)
    cfg = generator_settings(loaded)
    for record in loaded.report.pairs:
        truth = facts_of_record(regenerate(cfg, record.id)[0])
        boxed = [f for f in truth if f.box_before and f.box_after and f.before and new_value(f) is not None]
        if len(truth) >= 3 and len(boxed) >= 2:
            break
    else:
        raise AssertionError("no generated test pair with three changes, two of them boxed in both images")
    right, wrong = boxed[:2]
    other_kind = "cube" if wrong.before.kind != "cube" else "cone"
    misread = replace(wrong, before=replace(wrong.before, kind=other_kind), box_before=_away_from(wrong.box_before),
                      box_after=_away_from(wrong.box_after))
    invented = next(t for t in ("size", "color", "orientation", "pose") if t not in {f.type for f in truth})
    made_up = ChangeFact(invented, ObjectFact("ball", "red"), ObjectFact("ball", "blue"), box_before=(2.0, 2.0, 22.0, 22.0),
                         box_after=(2.0, 2.0, 22.0, 22.0), confidence=0.6)
    hits = {record.id: score_pair(truth, [right, misread, made_up])}
    report = loaded.report
    report.run.detection = DetectionRun(summarize_detection(hits), hits)
    missed = [f.type for f in truth if f not in (right, wrong)]  # a camera or light change among them too
    path = report.save(generated_file.with_name("with_reader.json"))
    return path, record.id, {"right": right, "wrong": wrong, "invented": invented, "missed": missed}


@pytest.fixture
def pair_files(tmp_path):
    before, after = pair_images(size=(64, 48))
    b, a = tmp_path / "before.png", tmp_path / "after.png"
    before.save(b)
    after.save(a)
    return str(b), str(a)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.fixture
def bad_files(tmp_path):
    """name -> path of an upload that must be refused."""
    out = {}
    p = tmp_path / "notes.png"
    p.write_text("these are my holiday notes, not a picture")
    out["not an image"] = p
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    p = tmp_path / "truncated.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["truncated"] = p
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), "red").save(p)
    out["1x1"] = p
    # A PNG whose header declares 100000 x 100000 pixels: refused from the header, nothing is decoded.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    p = tmp_path / "bomb.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                  + _png_chunk(b"IEND", b""))
    out["bomb"] = p
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    out["empty"] = p
    return out


@pytest.fixture
def odd_mode_files(tmp_path):
    """name -> path of an image in a mode the app converts (and the PIL mode it was written in)."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    images = {
        "16-bit": ("sixteen.png", Image.fromarray(rng.integers(0, 65535, (40, 56)).astype(np.uint16))),
        "CMYK": ("cmyk.jpg", rgb.convert("CMYK")),
        "palette": ("palette.png", rgb.convert("P")),
        "RGBA": ("rgba.png", rgb.convert("RGBA")),
        "grayscale": ("gray.png", rgb.convert("L")),
    }
    out = {}
    for name, (filename, image) in images.items():
        out[name] = tmp_path / filename
        image.save(out[name])
    return out


@pytest.fixture
def exif_rotated(tmp_path):
    """A 60x30 JPEG whose EXIF says "rotate 90°": shown upright it is 30 wide and 60 tall."""
    im = Image.fromarray(np.random.default_rng(2).integers(0, 255, (30, 60, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rotated.jpg"
    im.save(p, exif=exif.tobytes())
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(captioner, twin=None):
    """The app served on 127.0.0.1 over ``captioner``, as `python app.py` serves it; yields its root URL."""
    import app

    config = app.AppConfig(port=free_port(), max_new_tokens=8)
    demo = app.build_app(app.Services(captioner, twin, {}, "", config))
    app.launch(demo, config, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{config.port}/"
    finally:
        demo.close()


@pytest.fixture
def server(services):
    """The app over the tiny models (no change reader); its root URL."""
    with serve(services.captioner, services.twin) as url:
        yield url


@pytest.fixture
def reader_server(reader_captioner):
    """The app over a tiny model with a change reader; its root URL."""
    with serve(reader_captioner) as url:
        yield url


