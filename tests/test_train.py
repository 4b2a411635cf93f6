"""llava.train: the trainer of the shipped models. A few steps of a tiny config train, save, resume and
export a loadable llava-hf folder (LLaVA-1.5 and LLaVA-NeXT); the auxiliary labels are worked out by hand."""

import json
import math

import numpy as np
import pytest
import torch

from llava.data import synthetic
from llava.mm_utils import ImageProcessor
from llava.train import data, loop, losses
from llava.train.data import Encoder, collate
from llava.train.model import TrainableLlava, capture_attention_input, initialize

TINY = ["--patch-size", "56", "--vision-width", "32", "--vision-layers", "3", "--vision-heads", "2",
        "--text-width", "32", "--text-intermediate", "64", "--text-layers", "2", "--text-heads", "2",
        "--batch-size", "6", "--warmup", "1", "--lr", "3e-3", "--workers", "0", "--threads", "1",
        "--extra-turns", "1", "--bare-rate", "0.5", "--log-every", "2", "--eval-every", "1000", "--eval-samples", "6", "--save-every", "3"]
PROCESSOR = ImageProcessor()


def make_encoder(patch_size: int, **kw) -> Encoder:
    return Encoder(PROCESSOR, patch_size, **kw)


def first_view(sample, patch_size: int = 28) -> dict:
    """The labels of a LLaVA-1.5 image's one view."""
    return {k: (v[0] if isinstance(v, torch.Tensor) else v) for k, v in make_encoder(patch_size).labels(sample).items()}


def text_cells(sample, patch_size: int = 28) -> set[int]:
    x0, y0, x1, y1 = sample.text_bbox
    grid = 336 // patch_size
    return {row * grid + col for row in range(y0 // patch_size, (y1 - 1) // patch_size + 1)
            for col in range(x0 // patch_size, (x1 - 1) // patch_size + 1)}


def tiny_model(*extra_args, capture_layer=None):
    """A freshly initialised TrainableLlava of the TINY config (seed 0), with `--token-drop` applied."""
    args = loop.parse_args(TINY + list(extra_args))
    torch.manual_seed(0)
    model = TrainableLlava(loop.model_config(args, len(data.build_tokenizer())))
    model.token_drop = args.token_drop
    initialize(model)
    if capture_layer is not None:
        capture_attention_input(model, capture_layer)
    return model


def test_train_save_resume_export(tmp_path):
    torch.set_num_threads(1)
    out, export = tmp_path / "run", tmp_path / "model"
    summary = loop.main(TINY + ["--steps", "8", "--out", str(out), "--seed", "0"])
    losses = summary["lm_loss"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) < sum(losses[:2])  # from ~log(754) towards the answers' distribution
    assert set(summary["validation"]["lattice"]) >= {"color", "ocr", "overall"}
    assert (out / "last.pt").is_file() and "eval step 8" in (out / "train.log").read_text()

    # resume runs only the remaining steps, then exports
    summary = loop.main(TINY + ["--steps", "10", "--out", str(out), "--resume", "--export", str(export)])
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


def test_ocr_labels_name_the_glyph_under_each_column():
    """Columns of the text box's patches are labelled with the glyph at their centre, in reading order."""
    sample = next(s for s in synthetic.generate_split("train", 40) if s.text)
    labels = first_view(sample)["ocr_labels"]  # (144, 2)
    spans = synthetic.char_spans(sample.text, sample.text_bbox)
    x0, y0, x1, y1 = sample.text_bbox
    none = len(data.OCR_CHARS)
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
            assert label == (data.OCR_CHARS.index(spans[glyphs[0]][0]) if glyphs else none)
            hit.update(glyphs)
    assert hit == set(range(len(spans)))  # glyphs are wider than a column: each one is read


def test_text_labels_name_the_whole_text_on_every_patch_of_its_box():
    encoder = make_encoder(28)
    samples = [s for s in synthetic.generate_split("train", 200) if s.text]
    word = next(s for s in samples if not s.text.isdigit())
    number = next(s for s in samples if s.text.isdigit() and len(s.text) == 2)
    for sample, expected in ((word, [synthetic.OCR_WORDS.index(word.text.lower()), 10, 10, 10]),
                             (number, [data.NUMBER_CLASS, int(number.text[0]), int(number.text[1]), 10])):
        labels = first_view(sample)["text_labels"]  # (144, 4)
        box = text_cells(sample)
        assert box and box == {p for p in range(144) if labels[p, 0] >= 0}
        assert all(labels[p].tolist() == expected for p in box)
        assert (labels[[p for p in range(144) if p not in box]] == -1).all()
    no_text = next(s for s in synthetic.generate_split("train", 20) if not s.text)
    assert (first_view(no_text)["text_labels"] == -1).all()


def test_init_from_starts_fresh_on_later_samples_and_adds_missing_heads(tmp_path):
    torch.set_num_threads(1)
    first = loop.main(TINY + ["--steps", "2", "--out", str(tmp_path / "a"), "--text-aux-weight", "0"])
    ckpt = torch.load(tmp_path / "a" / "last.pt", map_location="cpu", weights_only=False)
    del ckpt["heads"]["text.1.weight"], ckpt["heads"]["text.1.bias"]  # a checkpoint from before the text head
    torch.save(ckpt, tmp_path / "old.pt")
    second = loop.main(TINY + ["--steps", "2", "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "old.pt"),
                                     "--align-aux-weight", "0.5", "--text-rate", "0.9", "--turn-weights", "ocr=3",
                                     "--ground-aux-weight", "0.5", "--copy-aux-weight", "0.5",
                                     "--object-copy-aux-weight", "0.5"])
    assert first["samples"] == 12 and second["step"] == 2 and second["samples"] == 12
    log = (tmp_path / "b" / "train.log").read_text()
    assert "data from train sample 12" in log and "new heads: ['text']" in log
    for name in ("align", "ground", "copy", "object_copy"):  # each loss ran (text on most images at --text-rate 0.9)
        assert f" {name} " in log
    assert torch.load(tmp_path / "b" / "last.pt", map_location="cpu", weights_only=False)["first_sample"] == 12


def test_fresh_image_and_text_tokens_enter_at_the_same_scale():
    """initialize(): image tokens from the projector and text embeddings both have an RMS near 1."""
    model = tiny_model()
    encoder = make_encoder(56)
    item = encoder(synthetic.make_sample("train", 0))
    with torch.no_grad():
        inputs = model.prepare_inputs([item["ids"]], item["image"][None])
    span = inputs.spans[0][0]
    image = inputs.embeds[0, span.start:span.start + span.length]
    text = inputs.embeds[0, span.start + span.length:]
    for tokens in (image, text):
        assert 0.5 < tokens.pow(2).mean().sqrt().item() < 2.0


def test_token_drop_keeps_the_foreground_and_a_random_share_of_the_rest():
    model = tiny_model("--token-drop", "1.0")
    encoder = make_encoder(56)
    items = [encoder(synthetic.make_sample("train", i)) for i in range(6)]
    batch = collate(items)
    P = model.config.vision.num_patches
    foreground = torch.zeros(len(items), P, dtype=torch.bool)
    foreground[:, [0, 5]] = True
    model.foreground = foreground
    model.train()
    images, indices = model.encode_images(batch["images"])
    for tokens, index in zip(images, indices):
        assert tokens.shape[0] == len(index) and {0, 5} <= set(index.tolist())
        assert torch.equal(index, index.unique())  # in order, no repeats
    assert len({len(index) for index in indices}) > 1  # images of many lengths
    model.foreground = None  # without a mask any token may go, but one always stays
    assert all(len(index) >= 1 for index in model.encode_images(batch["images"])[1])
    loss = losses.lm_loss(model, batch["ids"], batch["label_index"], batch["images"])
    assert torch.isfinite(loss)
    model.eval()  # evaluation always sees every token
    assert all(len(index) == P for index in model.encode_images(batch["images"])[1])


def test_align_labels_name_the_word_token_or_the_digit_under_each_text_patch():
    encoder = make_encoder(28)
    samples = [s for s in synthetic.generate_split("train", 200) if s.text]
    word = next(s for s in samples if not s.text.isdigit())
    labels = first_view(word)["align_labels"]
    box = text_cells(word)
    assert {p for p in range(144) if labels[p] >= 0} == box
    assert {encoder.tokenizer.decode([int(labels[p])]) for p in box} == {word.text.lower()}

    number = next(s for s in samples if s.text.isdigit() and len(set(s.text)) == len(s.text))
    labels = first_view(number)["align_labels"]
    named = [p for p in range(144) if labels[p] >= 0]
    assert named and set(named) <= text_cells(number)
    digits = [encoder.tokenizer.convert_ids_to_tokens(int(labels[p])) for p in named]
    assert set(digits) == set(number.text)  # every digit is under some patch, and nothing else is named
    for p in named:  # the named digit is the glyph under one of the patch's columns
        glyphs = {data.OCR_CHARS[c] for c in first_view(number)["ocr_labels"][p].tolist()
                  if 0 <= c < len(data.OCR_CHARS)}
        assert encoder.tokenizer.convert_ids_to_tokens(int(labels[p])) in glyphs
    no_text = next(s for s in synthetic.generate_split("train", 20) if not s.text)
    assert (first_view(no_text)["align_labels"] == -1).all()


def test_turn_weights_change_the_mix_of_extra_questions():
    types = synthetic.QUESTION_TYPES
    assert data.parse_weights("ocr=3, position=2", types, "question types") == {"ocr": 3.0, "position": 2.0}
    for bad in ("ocr", "colour=2", "ocr=-1"):
        with pytest.raises(ValueError):
            data.parse_weights(bad, types, "question types")

    def share(encoder, kind_words):
        questions = [q for i in range(120) for q, _ in encoder.extra_questions(synthetic.make_sample("train", i))]
        return sum(any(w in q for w in kind_words) for q in questions) / len(questions)

    uniform = make_encoder(28, extra_turns=3)
    weighted = make_encoder(28, extra_turns=3, turn_weights={"position": 6})
    sides = ("left or the right", "top or the bottom")
    assert share(weighted, sides) > 2 * share(uniform, sides)
    # no weights: the same questions as before the option existed (the earlier model's stages 1-2 used them)
    assert make_encoder(28, extra_turns=3, turn_weights={}).turn_weights is None


def test_text_rate_prints_text_more_often_but_the_benchmark_keeps_the_default():
    def with_text(**kw):
        return sum(synthetic.make_sample("train", i, **kw).text is not None for i in range(120) if i % 6 != 5)

    assert with_text(text_probability=0.9) > 2 * with_text()
    assert with_text(text_probability=0.0) == 0
    default = synthetic.make_sample("test", 3)
    assert default.question == synthetic.make_sample("test", 3, synthetic.TEXT_PROBABILITY).question


def test_ground_loss_reads_the_heads_own_attention_row():
    """ground_loss recomputes one head's row from the layer's input: it must be the row the layer computes
    (checked against the decoder's own last-row scores, the ones FastV uses), also with token drop."""
    model = tiny_model("--token-drop", "1.0", capture_layer=-1)
    encoder = make_encoder(56)
    batch = collate([encoder(synthetic.make_sample("train", i)) for i in range(6)])
    batch["ids"] = batch["prompt"]  # then the grounded query is each sequence's last token
    assert sum(bool(t) for t in batch["target_tokens"]) >= 4
    model.foreground = torch.zeros(6, 36, dtype=torch.bool)
    for b, targets in enumerate(batch["target_tokens"]):  # (view, patch) pairs; view b is sample b's image
        model.foreground[b, [p for _, p in targets]] = True
    model.train()
    losses.lm_loss(model, batch["ids"], [[len(ids) - 1] for ids in batch["ids"]], batch["images"])
    head = 1
    loss = losses.ground_loss(model, batch, -1, head)

    inputs, last = model.last_inputs, model.config.text.num_layers - 1
    assert any(len(span.patch_index) < 36 for spans in inputs.spans for span in spans)  # tokens were dropped
    with torch.no_grad():
        row = model.language_model(inputs.embeds, inputs.key_mask, inputs.positions, None, None, False,
                                   (last,), "last").attention[last]  # (B, H, N)
    expected = []
    for b, targets in enumerate(batch["target_tokens"]):
        span = inputs.spans[b][0]
        kept = [i for i, p in enumerate(span.patch_index.tolist()) if (b, p) in targets]
        if kept:
            expected.append(-row[b, head, [span.start + i for i in kept]].sum().log())
    torch.testing.assert_close(loss.detach(), torch.stack(expected).mean(), rtol=1e-5, atol=1e-5)
    loss.backward()  # it trains the head's query and key projections
    attn = model.language_model.layers[-1].self_attn
    assert attn.q_proj.weight.grad.abs().sum() > 0 and attn.k_proj.weight.grad.abs().sum() > 0


def test_copy_loss_is_what_the_head_adds_when_it_attends_to_one_text_token():
    import copy

    import torch.nn.functional as F

    model = tiny_model(capture_layer=-1)
    encoder = make_encoder(56)
    samples = [s for s in synthetic.generate_split("train", 30) if s.text][:3]
    batch = collate([encoder(s) for s in samples])
    model.train()
    losses.lm_loss(model, batch["ids"], batch["label_index"], batch["images"])
    head = 1
    loss = losses.copy_losses(model, batch, -1, head, encoder.tokenizer)["copy"]

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
                out, *_ = attn(x[b:b + 1], cos[b:b + 1], sin[b:b + 1], inputs.key_mask[b:b + 1], mask, None, False)
                logits.append(model.lm_head(model.language_model.norm(out[0, -1])))
                labels.append(int(batch["align_labels"][b, p]))
    assert len(labels) >= 3
    expected = F.cross_entropy(torch.stack(logits).float(), torch.tensor(labels))
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-5)


def test_side_labels_give_each_object_token_its_position_answers():
    encoder = make_encoder(28)
    seen = set()
    for sample in synthetic.generate_split("train", 60):
        labels = first_view(sample)["side_labels"]
        cells = [synthetic.tokens_on_grid(obj["patches"], 28) for obj in sample.objects]
        for k, obj in enumerate(sample.objects):
            alone = cells[k].difference(*(c for j, c in enumerate(cells) if j != k))
            expected = [{"left": 0, "right": 1, "top": 0, "bottom": 1, None: -1}[synthetic.side_of(obj["bbox"], axis)]
                        for axis in ("x", "y")]
            for cell in alone:
                assert labels[cell].tolist() == expected
                seen.update(expected)
        assert (labels[[p for p in range(144) if not any(p in c for c in cells)]] == -1).all()
    assert seen == {-1, 0, 1}


# ---- LLaVA-NeXT views ------------------------------------------------------------------------------


NEXT_PROCESSOR = ImageProcessor(image_grid_pinpoints=loop.HR_PINPOINTS)


def test_views_show_what_the_anyres_processor_cuts():
    """Each view's label map is the label map cut and scaled as ImageProcessor.anyres cuts the image: the
    crops exactly (the hr canvases are pinpoints, nothing is resized), the base view squashed (as PIL's
    nearest resize, up to rounding), and a 336-px image on a padded 1x2 canvas half padding in each crop."""
    from PIL import Image

    for index in range(10):
        sample = synthetic.make_sample("validation", index, look="hr")
        anyres = NEXT_PROCESSOR.anyres(sample.image, NEXT_PROCESSOR.image_grid_pinpoints)
        views = data.views_of(sample.size, NEXT_PROCESSOR)
        rows, cols = anyres.grid
        assert len(views) == 1 + rows * cols == anyres.pixel_values.shape[0]
        squashed = np.asarray(Image.fromarray(sample.label_map).resize((336, 336), Image.NEAREST))
        # the base view: PIL's nearest rule rounds a few boundary rows the other way (the pixels themselves are bicubic)
        assert (data.view_label_map(sample.label_map, views[0]) == squashed).mean() > 0.995
        for r in range(rows):
            for c in range(cols):
                crop = sample.label_map[r * 336:(r + 1) * 336, c * 336:(c + 1) * 336]
                assert np.array_equal(data.view_label_map(sample.label_map, views[1 + r * cols + c]), crop)
    small = synthetic.make_sample("validation", 0, look="varied")  # 336x336 -> a 1x2 canvas, 168 px of padding a side
    left, right = (data.view_label_map(small.label_map, v) for v in data.views_of(small.size, NEXT_PROCESSOR)[1:])
    assert np.array_equal(left[:, 168:], small.label_map[:, :168]) and not left[:, :168].any()
    assert np.array_equal(right[:, :168], small.label_map[:, 168:]) and not right[:, 168:].any()


def test_next_labels_follow_the_objects_into_every_view():
    """Per view: an object's patches carry its colour and shape where it is alone, the CLS labels name
    what the view shows, the targets lie in the views that show the target, and text is only read
    (ocr, text, align labels) in views at full resolution."""
    encoder = Encoder(NEXT_PROCESSOR, 28)
    checked_text = 0
    for index in range(24):
        sample = synthetic.make_sample("train", index, look="hr")
        labels = encoder.labels(sample)
        views = data.views_of(sample.size, NEXT_PROCESSOR)
        for v, view in enumerate(views):
            cells = data.view_label_map(sample.label_map, view).reshape(12, 28, 12, 28).transpose(0, 2, 1, 3).reshape(144, -1)
            shown = [k for k in range(len(sample.objects)) if (cells == k + 1).any()]
            assert labels["count"][v] == (len(shown) - 1 if shown else -1)
            for k in shown:
                obj = sample.objects[k]
                alone = [p for p in range(144) if (cells[p] == k + 1).any()
                         and not any((cells[p] == j + 1).any() for j in range(len(sample.objects)) if j != k)]
                for p in alone:
                    assert labels["patch_labels"][v, p].tolist() == [data.COLOR_ID[obj["color"]], data.SHAPE_ID[obj["shape"]]]
                pair = data.COLOR_ID[obj["color"]] * data.NUM_SHAPES + data.SHAPE_ID[obj["shape"]]
                assert labels["cls_labels"][v, pair] == 1
            readable = v > 0  # hr canvases are never resized: every crop is at full resolution, the base view is not
            has_text = bool((cells == synthetic.TEXT_BOX_ID).any())
            assert bool((labels["text_labels"][v] >= 0).any()) == (has_text and readable)
            checked_text += has_text and readable
        targets = {(v, p) for v, p in labels["target_tokens"]}
        if sample.answer != "no":
            assert targets and {v for v, _ in targets} >= {0}  # the base view shows every object
    assert checked_text >= 5
