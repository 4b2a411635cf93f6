"""The training losses: the answers' cross-entropy and the auxiliary signals that let a small
LLaVA learn the shapes task in an hour on a CPU (the model card says what each one did).

Auxiliary labels are per view of the vision tower (one per LLaVA-1.5 image; base
and crops for LLaVA-NeXT) and per patch of its grid (`llava.train.data`):

- **CLS head** on each view's final CLS (after `post_layernorm`, as CLIP reads
  it): multi-label BCE over the (colour, shape) pairs, colours and shapes in the
  view and whether text is, plus a 5-way object count. It gives the CLS token a
  job of its own, so its attention rows (what FasterVLM and HiRED rank patches
  by) point at the objects, as CLIP's do.
- **Patch head** on the select layer's patches: the colour of the object under
  the patch (or none) and, on object patches, its shape. A dense signal that
  makes the small ViT learn shapes in minutes on a CPU.
- **OCR head**: for each of two columns of a text-box patch, the glyph under its
  centre (A-Z, 0-9 or none): the ViT encodes the letters in reading order.
- **Text head**: every text-box patch names the whole text (one of the 70
  words, or a number and its digits), so the decoder copies a word as it copies
  a colour.
- **Position head**: every patch names its own row and column (the ViT's
  position embedding enters at its input only; without this head left/right was
  at chance).
- **Alignment loss**: the LM head reads each text-box image token, as it enters
  the decoder, as the printed word (or the digit under it).
- **Grounding loss** on one decoder head (default: head 0 of the last layer,
  which FastV never ranks by): from the position that predicts the first
  answer, its attention lands on the question's target tokens.
- **Copy losses** on that head: what it carries from one text-box token reads,
  through the LM head, as the word; from one object token, as its colour, shape
  and side words.

The video recipe's one auxiliary loss (its towers are frozen, so the heads above
have nothing to train):

- **Frame loss** (`frame_loss`): after one decoder layer, every video token
  names the frame it came from. In the llava-hf Video-LLaVA the frames go
  through the tower one by one and nothing but the token's place in the
  sequence says which frame it is; a temporal answer (what moved where, what
  appeared, what came first) needs that, and without this loss the decoder did
  not work it out in 80 minutes (llava-video-shapes-tiny's card).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llava.data import synthetic
from llava.model.language_model.llava_llama import rotate_half
from llava.model.llava_arch import LlavaForCausalLM
from llava.train.data import CLS_LABELS, DIGIT_SLOTS, NO_COLOR, NUM_COLORS, NUM_SHAPES, NUMBER_CLASS, OCR_CHARS
from llava.train.model import AuxHeads, TrainableLlava


def lm_loss(model: LlavaForCausalLM, seqs: list[list[int]], label_index: list[list[int]], images,
            videos=None) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens `seqs[b][i]` for i in `label_index[b]` (all after the image).

    The same computation as `model(..., all_logits=True)` (no pruning during
    training), but `lm_head` only runs on the positions that predict an answer
    token. The batch is left-padded, so token i of a sequence of L ids (the
    image placeholder counted once) sits at N - L + i and is predicted at N - L + i - 1.
    """
    inputs = model.prepare_inputs(seqs, images, videos)
    hidden = model.language_model(inputs.embeds, inputs.key_mask, inputs.positions, None, None, False).hidden
    N = hidden.shape[1]
    rows = torch.tensor([b for b, index in enumerate(label_index) for _ in index])
    cols = torch.tensor([N - len(ids) + i - 1 for ids, index in zip(seqs, label_index) for i in index])
    logits = model.lm_head(hidden[rows, cols]).float()  # (answer tokens, V)
    labels = torch.tensor([ids[i] for ids, index in zip(seqs, label_index) for i in index])
    return F.cross_entropy(logits, labels)


def aux_losses(heads: AuxHeads, model: TrainableLlava, batch: dict, weights: dict[str, float], ground_layer: int,
               ground_head: int, tokenizer) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the auxiliary losses of the last training forward, and each loss by name (for the log).

    `weights` maps cls, patch, where, ocr, text, align, ground, copy, object_copy to their weights. A
    loss whose weight is 0, or whose labels are all -1 in this batch (no printed text), adds nothing.
    """
    # (V, Dv) final CLS, (V, P, Dv) select-layer patches, (V, P, D) the projector's image tokens
    cls_out, features, projected = model.aux_outputs
    V, P, _ = features.shape
    cls_logits = heads.cls(cls_out).float()
    losses = {"cls": F.binary_cross_entropy_with_logits(cls_logits[:, :CLS_LABELS], batch["cls_labels"])
              + F.cross_entropy(cls_logits[:, CLS_LABELS:], batch["count"], ignore_index=-1)}

    def softmax_loss(head, labels, classes):  # labels (V, P, k): one softmax of `classes` per column
        logits = head(features).float().reshape(-1, classes)
        return F.cross_entropy(logits, labels.reshape(-1), ignore_index=-1)

    if weights["patch"] > 0:
        labels = batch["patch_labels"].reshape(-1, 2)
        colour, shape = heads.patch(features).float().reshape(labels.shape[0], -1).split(
            [NUM_COLORS + 1, NUM_SHAPES], dim=-1)
        losses["patch"] = (F.cross_entropy(colour, labels[:, 0], ignore_index=-1)
                           + F.cross_entropy(shape, labels[:, 1], ignore_index=-1))
    if weights["where"] > 0:
        grid = math.isqrt(P)
        index = torch.arange(P)
        losses["where"] = softmax_loss(heads.where, torch.stack([index // grid, index % grid], dim=-1).expand(V, P, 2), grid)
    if weights["ocr"] > 0 and (batch["ocr_labels"] >= 0).any():
        losses["ocr"] = softmax_loss(heads.ocr, batch["ocr_labels"], len(OCR_CHARS) + 1)
    if weights["text"] > 0 and (batch["text_labels"] >= 0).any():
        labels = batch["text_labels"].reshape(-1, 1 + DIGIT_SLOTS)
        word, digits = heads.text(features).float().reshape(labels.shape[0], -1).split(
            [NUMBER_CLASS + 1, DIGIT_SLOTS * 11], dim=-1)
        losses["text"] = (F.cross_entropy(word, labels[:, 0], ignore_index=-1)
                          + F.cross_entropy(digits.reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-1))
    if weights["align"] > 0 and (batch["align_labels"] >= 0).any():
        labels = batch["align_labels"].reshape(-1)
        tokens = projected.reshape(labels.shape[0], -1)[labels >= 0]
        logits = model.lm_head(model.language_model.norm(tokens)).float()
        losses["align"] = F.cross_entropy(logits, labels[labels >= 0])
    if weights["ground"] > 0:
        ground = ground_loss(model, batch, ground_layer, ground_head)
        if ground is not None:
            losses["ground"] = ground
    if weights["copy"] > 0 or weights["object_copy"] > 0:
        for name, loss in copy_losses(model, batch, ground_layer, ground_head, tokenizer).items():
            if weights[name] > 0:
                losses[name] = loss
    total = sum(weights[name] * loss for name, loss in losses.items())
    return total, {name: loss.item() for name, loss in losses.items()}


def image_positions(inputs, views: list[tuple[int, int]]) -> list[dict[tuple[int, int], int]]:
    """Per sample of the last forward: (view row in the batch's labels, patch) -> its position in the
    sequence, for the patches that entered the LLM (newline tokens have no view)."""
    out = []
    for (first, _), spans in zip(views, inputs.spans):
        span = spans[0]
        pairs = zip(span.token_partition.tolist(), span.patch_index.tolist())
        out.append({(first + part, patch): span.start + i for i, (part, patch) in enumerate(pairs) if part >= 0 and patch >= 0})
    return out


def ground_loss(model: TrainableLlava, batch: dict, layer: int, head: int) -> torch.Tensor | None:
    """-log of the attention that one decoder head, at the position predicting the first answer,
    puts on the question's target tokens (mean over samples that have any; None if none has).

    The targets are the patches touching the named object(s), the counted ones,
    or the text box, in every view. The row is recomputed from the layer's
    input (`capture_attention_input`) exactly as the layer computes it (rope,
    causal and padding masks), for one query per sample, so SDPA stays on.
    """
    x, cos, sin = model.attention_input  # (B, N, D), (B, N, hd) x2
    inputs, attn = model.last_inputs, model.language_model.layers[layer].self_attn
    B, N, _ = x.shape
    rows = torch.arange(B)
    query = torch.tensor([N - len(ids) + len(prompt) - 1 for ids, prompt in zip(batch["ids"], batch["prompt"])])
    hd, kv_head = attn.head_dim, head // (attn.num_heads // attn.num_kv_heads)
    q = attn.q_proj(x[rows, query]).view(B, attn.num_heads, hd)[:, head]  # (B, hd)
    k = attn.k_proj(x).view(B, N, attn.num_kv_heads, hd)[:, :, kv_head]  # (B, N, hd)
    q = q * cos[rows, query] + rotate_half(q) * sin[rows, query]
    k = k * cos + rotate_half(k) * sin
    logits = (k @ q[:, :, None])[..., 0].float() / math.sqrt(hd)  # (B, N)
    allowed = inputs.key_mask & (torch.arange(N)[None, :] <= query[:, None])
    log_attention = logits.masked_fill(~allowed, float("-inf")).log_softmax(dim=-1)
    losses = []
    for b, (targets, where) in enumerate(zip(batch["target_tokens"], image_positions(inputs, batch["views"]))):
        positions = [where[t] for t in targets if t in where]
        if positions:
            losses.append(-log_attention[b, positions].logsumexp(dim=0))
    return torch.stack(losses).mean() if losses else None


def copy_losses(model: TrainableLlava, batch: dict, layer: int, head: int, tokenizer) -> dict[str, torch.Tensor]:
    """What the grounded head carries from one image token, read by the LM head, must say that token's
    answers: {"copy": the text-box tokens' loss, "object_copy": the object tokens'} (a name is missing
    when the batch has no such token).

    `out(t)` is what the head adds to the residual stream when it attends to
    token t alone (its value and output projections). Through the final norm
    and the LM head: a text-box token must read as its `align_labels` id (full
    vocabulary); an object's token must read as its colour among the colour
    words, its shape among the shape words, and its side (`side_labels`)
    between "left"/"right" and between "top"/"bottom". With grounding the head
    attends to the question's target, so this is the carrying the colour,
    shape, position and ocr answers need, trained on every such token instead
    of on the answers only.
    """
    x = model.attention_input[0]  # (B, N, D), the layer's normed input
    inputs, attn = model.last_inputs, model.language_model.layers[layer].self_attn
    slots = [(b, col, view, patch) for b, where in enumerate(image_positions(inputs, batch["views"]))
             for (view, patch), col in where.items()]
    rows, cols, views, patches = (torch.tensor(v) for v in zip(*slots))
    text = batch["align_labels"][views, patches]  # (n,)
    colour, shape = batch["patch_labels"][views, patches].unbind(-1)
    sides = batch["side_labels"][views, patches]  # (n, 2)
    use = (text >= 0) | ((colour >= 0) & (colour < NO_COLOR) & (shape >= 0)) | (sides >= 0).any(-1)
    if not use.any():
        return {}
    rows, cols, text, colour, shape, sides = rows[use], cols[use], text[use], colour[use], shape[use], sides[use]
    hd, kv_head = attn.head_dim, head // (attn.num_heads // attn.num_kv_heads)
    values = attn.v_proj(x[rows, cols]).view(len(rows), attn.num_kv_heads, hd)[:, kv_head]  # (n, hd)
    out = values @ attn.o_proj.weight[:, head * hd:(head + 1) * hd].T  # (n, D)
    logits = model.lm_head(model.language_model.norm(out)).float()  # (n, V)
    losses, object_losses = {}, []
    if (text >= 0).any():
        losses["copy"] = F.cross_entropy(logits[text >= 0], text[text >= 0])
    obj = (colour >= 0) & (colour < NO_COLOR) & (shape >= 0)
    for words, labels, where in ((synthetic.COLORS, colour, obj), (synthetic.SHAPES, shape, obj),
                                 (("left", "right"), sides[:, 0], sides[:, 0] >= 0),
                                 (("top", "bottom"), sides[:, 1], sides[:, 1] >= 0)):
        if where.any():
            ids = [tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in words]
            object_losses.append(F.cross_entropy(logits[where][:, ids], labels[where]))
    if object_losses:
        losses["object_copy"] = sum(object_losses)
    return losses


def frame_loss(heads: AuxHeads, model: TrainableLlava) -> torch.Tensor | None:
    """Cross-entropy of the frame head on the captured decoder hidden states (`capture_decoder_hidden`) of every
    video token of the last training forward, against the token's frame; None when the batch has no video."""
    hidden, spans = model.decoder_hidden, model.last_inputs.spans
    rows, labels = [], []
    for b, sample in enumerate(spans):
        for span in sample:
            if span.frames:
                rows.append(hidden[b, span.start:span.end])
                labels.append(span.partition)
    if not rows:
        return None
    return F.cross_entropy(heads.frame(torch.cat(rows)).float(), torch.cat(labels).to(hidden.device))
