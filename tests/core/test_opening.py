"""The count-first opening: what a count-first model is trained to say first, and how it is taken off."""
import pytest

from m3diff.config import preset
from m3diff.opening import count_sentence, could_open, described_changes, split_opening, with_opening


def region(kind):
    return {"type": kind, "before": None, "after": None}


@pytest.mark.parametrize("n", range(10))
def test_every_count_sentence_splits_back_to_its_number(n):
    said = f"{count_sentence(n)} The red cube moved to the left."
    assert split_opening(said) == (n, "The red cube moved to the left.")


def test_the_sentences_read_as_english():
    assert [count_sentence(n) for n in (0, 1, 2, 4)] == ["No change.", "One change.", "Two changes.", "Four changes."]
    assert count_sentence(12) == "Nine changes."  # the most it can say


def test_camera_and_light_count_only_when_nothing_else_changed():
    # the references describe only the object changes when the camera or the light changed beside them
    assert described_changes([region("viewpoint")]) == 1
    assert described_changes([region("illumination"), region("viewpoint")]) == 1
    assert described_changes([region("removal"), region("pose"), region("illumination")]) == 2
    assert described_changes([]) == 0
    assert with_opening("Nothing changed.", []) == "No change. Nothing changed."
    assert with_opening("A cube moved. A ball left.", [region("removal"), region("addition")]).startswith("Two changes. ")


@pytest.mark.parametrize("caption", [
    "The red cube moved.", "Two cubes moved to the left.", "There are two changes. A cube moved.",
    "Three changed colour.", "",
])
def test_captions_without_the_opening_are_kept_whole(caption):
    assert split_opening(caption) == (None, caption)


def test_a_caption_that_is_only_the_count_keeps_it():
    assert split_opening("One change.") == (1, "One change.")


def test_a_stream_holds_back_only_what_may_be_the_count():
    for partial in ("T", "Th", "Thr", "Three ch", "Three changes", "Three changes.", "Three changes. ", "N"):
        assert could_open(partial), partial
    for partial in ("The", "The red", "Three changes. The", "A cube", "Nothing"):
        assert not could_open(partial), partial


def test_the_config_knows_only_the_openings_the_pipeline_reads(tmp_path):
    assert preset("tiny").caption_opening is None
    with pytest.raises(ValueError, match="caption_opening"):
        preset("tiny", caption_opening="counts")
    config = preset("tiny", caption_opening="count")
    config.save_pretrained(tmp_path)
    assert type(config).from_pretrained(tmp_path).caption_opening == "count"
