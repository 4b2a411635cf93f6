"""scripts/train_tiny.py: a few steps of a tiny config train, save, resume and export a loadable llava-hf folder."""

import json
import math

import pytest
import torch

from tests.helpers import load_script

TINY = ["--patch-size", "56", "--vision-width", "32", "--vision-layers", "3", "--vision-heads", "2",
        "--text-width", "32", "--text-intermediate", "64", "--text-layers", "2", "--text-heads", "2",
        "--batch-size", "6", "--warmup", "1", "--lr", "3e-3", "--workers", "0", "--threads", "1",
        "--extra-turns", "1", "--bare-rate", "0.5", "--log-every", "2", "--eval-every", "1000", "--eval-samples", "6", "--save-every", "3"]


@pytest.fixture(scope="module")
def train_tiny():
    return load_script("train_tiny")


def test_train_save_resume_export(train_tiny, tmp_path):
    torch.set_num_threads(1)
    out, export = tmp_path / "run", tmp_path / "model"
    summary = train_tiny.main(TINY + ["--steps", "8", "--out", str(out), "--seed", "0"])
    losses = summary["lm_loss"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) < sum(losses[:2])  # from ~log(754) towards the answers' distribution
    assert set(summary["validation"]) >= {"color", "ocr", "overall"}
    assert (out / "last.pt").is_file() and "eval step 8" in (out / "train.log").read_text()

    # resume runs only the remaining steps, then exports
    summary = train_tiny.main(TINY + ["--steps", "10", "--out", str(out), "--resume", "--export", str(export)])
    assert summary["step"] == 10 and summary["samples"] == 60 and len(summary["lm_loss"]) == 2

    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(export))  # checks every key and shape
    assert model.config.tokens_per_image == 36 and processor.image_size == 336
    config = json.loads((export / "config.json").read_text())
    assert config["vision_feature_layer"] == -2 and config["image_token_index"] == tokenizer.convert_tokens_to_ids("<image>")
    assert tokenizer.decode(tokenizer("red").input_ids, skip_special_tokens=True) == "red"
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    saved = {k: v for k, v in model.state_dict().items()}
    for name, value in ckpt["model"].items():  # the export holds the trained weights (fp16-rounded)
        torch.testing.assert_close(saved[name], value.half().float(), rtol=0, atol=0)


def test_ocr_labels_name_the_glyph_under_each_column(train_tiny):
    """Columns of the text box's patches are labelled with the glyph at their centre, in reading order."""
    from llava.data import synthetic

    encoder = train_tiny.Encoder(patch_size=28)
    sample = next(s for s in synthetic.generate_split("train", 40) if s.text)
    labels = encoder.ocr_labels(sample)  # (144, 2)
    spans = synthetic.char_spans(sample.text, sample.text_bbox)
    x0, y0, x1, y1 = sample.text_bbox
    none = len(train_tiny.OCR_CHARS)
    hit = set()
    for patch in range(144):
        row, col = divmod(patch, 12)
        inside_rows = y0 // 28 <= row <= (y1 - 1) // 28
        for k in range(2):
            centre = col * 28 + 7 + 14 * k
            label = labels[patch, k].item()
            if not (inside_rows and x0 <= centre < x1):
                assert label == -1
                continue
            glyphs = [i for i, (_, a, b) in enumerate(spans) if a <= centre < b]
            assert label == (train_tiny.OCR_CHARS.index(spans[glyphs[0]][0]) if glyphs else none)
            hit.update(glyphs)
    assert hit == set(range(len(spans)))  # glyphs are wider than a column: each one is read


def test_text_labels_name_the_whole_text_on_every_patch_of_its_box(train_tiny):
    from llava.data import synthetic

    encoder = train_tiny.Encoder(patch_size=28)
    samples = [s for s in synthetic.generate_split("train", 200) if s.text]
    word = next(s for s in samples if not s.text.isdigit())
    number = next(s for s in samples if s.text.isdigit() and len(s.text) == 2)
    for sample, expected in ((word, [synthetic.OCR_WORDS.index(word.text.lower()), 10, 10, 10]),
                             (number, [train_tiny.NUMBER_CLASS, int(number.text[0]), int(number.text[1]), 10])):
        labels = encoder.text_labels(sample)  # (144, 4)
        box = {row * 12 + col for row, col in encoder.text_cells(sample)}
        assert box and box == {p for p in range(144) if labels[p, 0] >= 0}
        assert all(labels[p].tolist() == expected for p in box)
        assert (labels[[p for p in range(144) if p not in box]] == -1).all()
    no_text = next(s for s in synthetic.generate_split("train", 20) if not s.text)
    assert (encoder.text_labels(no_text) == -1).all()


def test_init_from_starts_fresh_on_later_samples_and_adds_missing_heads(train_tiny, tmp_path):
    torch.set_num_threads(1)
    first = train_tiny.main(TINY + ["--steps", "2", "--out", str(tmp_path / "a"), "--text-aux-weight", "0"])
    ckpt = torch.load(tmp_path / "a" / "last.pt", map_location="cpu", weights_only=False)
    del ckpt["heads"]["text.1.weight"], ckpt["heads"]["text.1.bias"]  # a checkpoint from before the text head
    torch.save(ckpt, tmp_path / "old.pt")
    second = train_tiny.main(TINY + ["--steps", "2", "--out", str(tmp_path / "b"),
                                     "--init-from", str(tmp_path / "old.pt")])
    assert first["samples"] == 12 and second["step"] == 2 and second["samples"] == 12
    log = (tmp_path / "b" / "train.log").read_text()
    assert "data from train sample 12" in log and "new heads: ['text']" in log
    assert torch.load(tmp_path / "b" / "last.pt", map_location="cpu", weights_only=False)["first_sample"] == 12


def test_fresh_image_and_text_tokens_enter_at_the_same_scale(train_tiny):
    """initialize(): image tokens from the projector and text embeddings both have an RMS near 1."""
    from llava.data import synthetic

    args = train_tiny.parse_args(TINY)
    torch.manual_seed(0)
    model = train_tiny.TrainableLlava(train_tiny.model_config(args, len(train_tiny.build_tokenizer())))
    train_tiny.initialize(model)
    encoder = train_tiny.Encoder(patch_size=56)
    item = encoder(synthetic.make_sample("train", 0))
    with torch.no_grad():
        inputs = model.prepare_inputs([item["ids"]], item["pixels"][None])
    span = inputs.spans[0][0]
    image = inputs.embeds[0, span.start:span.start + span.length]
    text = inputs.embeds[0, span.start + span.length:]
    for tokens in (image, text):
        assert 0.5 < tokens.pow(2).mean().sqrt().item() < 2.0


def test_token_drop_keeps_the_foreground_and_a_random_share_of_the_rest(train_tiny):
    from llava.data import synthetic

    args = train_tiny.parse_args(TINY + ["--token-drop", "1.0"])
    torch.manual_seed(0)
    model = train_tiny.TrainableLlava(train_tiny.model_config(args, len(train_tiny.build_tokenizer())))
    model.token_drop = args.token_drop
    encoder = train_tiny.Encoder(patch_size=56)
    items = [encoder(synthetic.make_sample("train", i)) for i in range(6)]
    batch = train_tiny.collate(items)
    P = model.config.vision.num_patches
    foreground = torch.zeros(len(items), P, dtype=torch.bool)
    foreground[:, [0, 5]] = True
    model.foreground = foreground
    model.train()
    images, indices = model.encode_images(batch["pixels"])
    for tokens, index in zip(images, indices):
        assert tokens.shape[0] == len(index) and {0, 5} <= set(index.tolist())
        assert torch.equal(index, index.unique())  # in order, no repeats
    assert len({len(index) for index in indices}) > 1  # images of many lengths
    model.foreground = None  # without a mask any token may go, but one always stays
    assert all(len(index) >= 1 for index in model.encode_images(batch["pixels"])[1])
    loss = train_tiny.lm_loss(model, batch["ids"], batch["label_index"], batch["pixels"])
    assert torch.isfinite(loss)
    model.eval()  # evaluation always sees every token
    assert all(len(index) == P for index in model.encode_images(batch["pixels"])[1])
