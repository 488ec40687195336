"""PairProcessor: any two images → inputs with two image slots; labels on the answer only."""
import torch
from PIL import Image

from m3diff.processing import DEFAULT_PROMPT, IGNORE_INDEX, PairProcessor


def test_any_modes_and_sizes_become_one_pair(processor, tiny_config):
    before = Image.new("P", (90, 30))
    after = Image.new("LA", (20, 70))
    batch = processor.encode_pairs([(before, after)])
    side = tiny_config.vision_config.image_size
    assert batch["pixel_values"].shape == (2, 1, 3, side, side)
    assert batch["batch_num_images"].tolist() == [2]
    assert int((batch["input_ids"] == tiny_config.image_token_id).sum()) == 2 * tiny_config.num_image_tokens


def test_prompt_template_is_documented_shape(processor):
    prompt = processor.prompt()
    assert prompt.startswith("<|im_start|>user\n<image><image>\n") and prompt.endswith("<|im_start|>assistant\n")
    assert DEFAULT_PROMPT in prompt and "custom" in processor.prompt("custom words")


def test_labels_cover_exactly_the_answer(processor, pair):
    answers = ["a red square appeared in the top left", "gone"]
    batch = processor.encode_pairs([pair, pair], answers=answers)
    tok = processor.tokenizer
    for row, answer in enumerate(answers):
        kept = [t for t in batch["labels"][row].tolist() if t != IGNORE_INDEX]
        assert tok.decode(kept) == answer + "<|im_end|>"
    # left padding: the shorter row's padding is ignored too
    assert batch["attention_mask"][1, 0] == 0 and batch["labels"][1, 0] == IGNORE_INDEX


def test_save_and_load_round_trip(processor, pair, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = PairProcessor.from_pretrained(tmp_path)
    a, b = processor.encode_pairs([pair]), loaded.encode_pairs([pair])
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])
