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


def tiny_model(train_tiny, *extra_args, capture_layer=None):
    """A freshly initialised TrainableLlava of the TINY config (seed 0), with `--token-drop` applied."""
    args = train_tiny.parse_args(TINY + list(extra_args))
    torch.manual_seed(0)
    model = train_tiny.TrainableLlava(train_tiny.model_config(args, len(train_tiny.build_tokenizer())))
    model.token_drop = args.token_drop
    train_tiny.initialize(model)
    if capture_layer is not None:
        train_tiny.capture_attention_input(model, capture_layer)
    return model


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
    second = train_tiny.main(TINY + ["--steps", "2", "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "old.pt"),
                                     "--align-aux-weight", "0.5", "--text-rate", "0.9", "--turn-weights", "ocr=3",
                                     "--ground-aux-weight", "0.5", "--copy-aux-weight", "0.5",
                                     "--object-copy-aux-weight", "0.5"])
    assert first["samples"] == 12 and second["step"] == 2 and second["samples"] == 12
    log = (tmp_path / "b" / "train.log").read_text()
    assert "data from train sample 12" in log and "new heads: ['text']" in log
    for name in ("align", "ground", "copy", "object_copy"):  # each loss ran (text on most images at --text-rate 0.9)
        assert f" {name} " in log
    assert torch.load(tmp_path / "b" / "last.pt", map_location="cpu", weights_only=False)["first_sample"] == 12


def test_fresh_image_and_text_tokens_enter_at_the_same_scale(train_tiny):
    """initialize(): image tokens from the projector and text embeddings both have an RMS near 1."""
    from llava.data import synthetic

    model = tiny_model(train_tiny)
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

    model = tiny_model(train_tiny, "--token-drop", "1.0")
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


def test_align_labels_name_the_word_token_or_the_digit_under_each_text_patch(train_tiny):
    from llava.data import synthetic

    encoder = train_tiny.Encoder(patch_size=28)
    samples = [s for s in synthetic.generate_split("train", 200) if s.text]
    word = next(s for s in samples if not s.text.isdigit())
    labels = encoder.align_labels(word)
    box = {row * 12 + col for row, col in encoder.text_cells(word)}
    assert {p for p in range(144) if labels[p] >= 0} == box
    assert {encoder.tokenizer.decode([int(labels[p])]) for p in box} == {word.text.lower()}

    number = next(s for s in samples if s.text.isdigit() and len(set(s.text)) == len(s.text))
    labels = encoder.align_labels(number)
    named = [p for p in range(144) if labels[p] >= 0]
    assert named and set(named) <= {row * 12 + col for row, col in encoder.text_cells(number)}
    digits = [encoder.tokenizer.convert_ids_to_tokens(int(labels[p])) for p in named]
    assert set(digits) == set(number.text)  # every digit is under some patch, and nothing else is named
    for p in named:  # the named digit is the glyph under one of the patch's columns
        glyphs = {train_tiny.OCR_CHARS[c] for c in encoder.ocr_labels(number)[p].tolist()
                  if 0 <= c < len(train_tiny.OCR_CHARS)}
        assert encoder.tokenizer.convert_ids_to_tokens(int(labels[p])) in glyphs
    no_text = next(s for s in synthetic.generate_split("train", 20) if not s.text)
    assert (encoder.align_labels(no_text) == -1).all()


def test_turn_weights_change_the_mix_of_extra_questions(train_tiny):
    from llava.data import synthetic

    assert train_tiny.parse_turn_weights("ocr=3, position=2") == {"ocr": 3.0, "position": 2.0}
    for bad in ("ocr", "colour=2", "ocr=-1"):
        with pytest.raises((ValueError, train_tiny.argparse.ArgumentTypeError)):
            train_tiny.parse_turn_weights(bad)

    def share(encoder, kind_words):
        questions = [q for i in range(120) for q, _ in encoder.extra_questions(synthetic.make_sample("train", i))]
        return sum(any(w in q for w in kind_words) for q in questions) / len(questions)

    uniform = train_tiny.Encoder(patch_size=28, extra_turns=3)
    weighted = train_tiny.Encoder(patch_size=28, extra_turns=3, turn_weights={"position": 6})
    sides = ("left or the right", "top or the bottom")
    assert share(weighted, sides) > 2 * share(uniform, sides)
    # no weights: the same questions as before the option existed (the earlier model's stages 1-2 used them)
    assert train_tiny.Encoder(patch_size=28, extra_turns=3, turn_weights={}).turn_weights is None


def test_text_rate_prints_text_more_often_but_the_benchmark_keeps_the_default():
    from llava.data import synthetic

    def with_text(**kw):
        return sum(synthetic.make_sample("train", i, **kw).text is not None for i in range(120) if i % 6 != 5)

    assert with_text(text_probability=0.9) > 2 * with_text()
    assert with_text(text_probability=0.0) == 0
    default = synthetic.make_sample("test", 3)
    assert default.question == synthetic.make_sample("test", 3, synthetic.TEXT_PROBABILITY).question


def test_ground_loss_reads_the_heads_own_attention_row(train_tiny):
    """ground_loss recomputes one head's row from the layer's input: it must be the row the layer computes
    (checked against the decoder's own last-row scores, the ones FastV uses), also with token drop."""
    from llava.data import synthetic

    model = tiny_model(train_tiny, "--token-drop", "1.0", capture_layer=-1)
    encoder = train_tiny.Encoder(patch_size=56)
    batch = train_tiny.collate([encoder(synthetic.make_sample("train", i)) for i in range(6)])
    batch["ids"] = batch["prompt"]  # then the grounded query is each sequence's last token
    assert sum(bool(t) for t in batch["target_tokens"]) >= 4
    model.foreground = torch.zeros(6, 36, dtype=torch.bool)
    for b, targets in enumerate(batch["target_tokens"]):
        model.foreground[b, targets] = True
    model.train()
    train_tiny.lm_loss(model, batch["ids"], [[len(ids) - 1] for ids in batch["ids"]], batch["pixels"])
    head = 1
    loss = train_tiny.ground_loss(model, batch, -1, head)

    class Probe:
        layer, mode, needs_scores, row = model.config.text.num_layers, "mask", True, None

        def keep_mask(self, attention, key_mask):
            self.row = attention
            return key_mask

    inputs, probe = model.last_inputs, Probe()
    assert any(len(span.patch_index) < 36 for spans in inputs.spans for span in spans)  # tokens were dropped
    with torch.no_grad():
        model.language_model(inputs.embeds, inputs.key_mask, inputs.positions, None, probe, False)
    expected = []
    for b, targets in enumerate(batch["target_tokens"]):
        span = inputs.spans[b][0]
        kept = [i for i, p in enumerate(span.patch_index.tolist()) if p in targets]
        if kept:
            expected.append(-probe.row[b, head, [span.start + i for i in kept]].sum().log())
    torch.testing.assert_close(loss.detach(), torch.stack(expected).mean(), rtol=1e-5, atol=1e-5)
    loss.backward()  # it trains the head's query and key projections
    attn = model.language_model.layers[-1].self_attn
    assert attn.q_proj.weight.grad.abs().sum() > 0 and attn.k_proj.weight.grad.abs().sum() > 0


def test_copy_loss_is_what_the_head_adds_when_it_attends_to_one_text_token(train_tiny):
    import copy

    import torch.nn.functional as F

    from llava.data import synthetic

    model = tiny_model(train_tiny, capture_layer=-1)
    encoder = train_tiny.Encoder(patch_size=56)
    samples = [s for s in synthetic.generate_split("train", 30) if s.text][:3]
    batch = train_tiny.collate([encoder(s) for s in samples])
    model.train()
    train_tiny.lm_loss(model, batch["ids"], batch["label_index"], batch["pixels"])
    head = 1
    loss = train_tiny.copy_losses(model, batch, -1, head, encoder.tokenizer)["copy"]

    # reference: the layer's own attention, its query let see one text token, other heads' outputs zeroed
    attn = copy.deepcopy(model.language_model.layers[-1].self_attn)
    hd = attn.head_dim
    with torch.no_grad():
        keep = torch.zeros_like(attn.o_proj.weight)
        keep[:, head * hd:(head + 1) * hd] = 1
        attn.o_proj.weight.mul_(keep)
    x, cos, sin = model.attention_input
    inputs, N = model.last_inputs, x.shape[1]
    logits, labels = [], []
    for b, spans in enumerate(inputs.spans):
        for i, p in enumerate(spans[0].patch_index.tolist()):
            if batch["align_labels"][b, p] >= 0:
                mask = torch.eye(N, dtype=torch.bool)[None, None]  # (1, 1, N, N): rows see themselves,
                mask[..., -1, :] = False  # the last row sees that one text token only
                mask[..., -1, spans[0].start + i] = True
                out, _, _ = attn(x[b:b + 1], cos[b:b + 1], sin[b:b + 1], inputs.key_mask[b:b + 1], mask, None, False)
                logits.append(model.lm_head(model.language_model.norm(out[0, -1])))
                labels.append(int(batch["align_labels"][b, p]))
    assert len(labels) >= 3
    expected = F.cross_entropy(torch.stack(logits).float(), torch.tensor(labels))
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-5)


def test_side_labels_give_each_object_token_its_position_answers(train_tiny):
    from llava.data import synthetic

    encoder = train_tiny.Encoder(patch_size=28)
    seen = set()
    for sample in synthetic.generate_split("train", 60):
        labels = encoder.side_labels(sample)
        cells = [synthetic.tokens_on_grid(obj["patches"], 28) for obj in sample.objects]
        for k, obj in enumerate(sample.objects):
            alone = cells[k].difference(*(c for j, c in enumerate(cells) if j != k))
            expected = [{"left": 0, "right": 1, "top": 0, "bottom": 1, None: -1}[synthetic._side(obj["bbox"], axis)]
                        for axis in ("x", "y")]
            for cell in alone:
                assert labels[cell].tolist() == expected
                seen.update(expected)
        assert (labels[[p for p in range(144) if not any(p in c for c in cells)]] == -1).all()
    assert seen == {-1, 0, 1}
