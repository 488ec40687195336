"""Every results table in the README, docs/training.md and the model card is the shipped reports' Markdown."""
import shutil

import pytest

from scripts.results_tables import DOCUMENTS, ROOT, main, refresh, shipped_blocks
from training.card import marked, refresh_blocks


def test_the_documents_quote_the_shipped_reports():
    drift = refresh(write=False)
    assert drift == {}, f"run scripts/results_tables.py: {drift}"


def test_every_document_with_results_marks_a_known_block():
    blocks = shipped_blocks()
    found = [name for doc in DOCUMENTS for name in blocks if f"<!-- results:{name} -->" in (ROOT / doc).read_text()]
    assert "headline" in found and "cider-by-slice" in found and "scores-m3diff" in found


def test_an_edited_table_is_found_and_rewritten(tmp_path, capsys):
    for doc in DOCUMENTS:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / doc, tmp_path / doc)
    blocks = shipped_blocks()
    card = tmp_path / "m3diff/weights/README.md"
    text = card.read_text()
    assert marked("grounding", blocks) in text
    card.write_text(text.replace(marked("grounding", blocks), marked("grounding", {"grounding": "| stale | 1 |"})))

    assert refresh(tmp_path, blocks, write=False) == {"m3diff/weights/README.md": ["grounding"]}
    assert "| stale | 1 |" in card.read_text(), "a check must not write"
    assert refresh(tmp_path, blocks) == {"m3diff/weights/README.md": ["grounding"]}
    assert card.read_text() == text
    assert refresh(tmp_path, blocks, write=False) == {}


def test_the_check_exits_nonzero_only_on_drift(capsys):
    assert main(["--check"]) == 0
    assert "matches" in capsys.readouterr().out


def test_an_unknown_block_is_an_error_not_left_stale():
    text = "a\n<!-- results:nonesuch -->\nold\n<!-- /results:nonesuch -->\nb"
    with pytest.raises(KeyError, match="nonesuch"):
        refresh_blocks(text, {"headline": "x"})
    new, changed = refresh_blocks("<!-- results:headline -->\nold\n<!-- /results:headline -->", {"headline": "x"})
    assert (new, changed) == ("<!-- results:headline -->\nx\n<!-- /results:headline -->", ["headline"])


def test_an_empty_block_is_filled():
    new, changed = refresh_blocks("<!-- results:headline -->\n<!-- /results:headline -->", {"headline": "x"})
    assert (new, changed) == ("<!-- results:headline -->\nx\n<!-- /results:headline -->", ["headline"])
