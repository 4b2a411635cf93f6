"""The in-LLM seam's model side: runs the stages of a batch's LayerPruners and keeps the books.

`StagedPruning` is the `InLLMPruning` the decoder calls before each stage layer (llava_llama.LlamaDecoder).
For every sample it builds a `StageView` (the sample's images as they are at that layer, read through the
decoder's `LayerState`), asks the method for a `SpanCut` per image, and answers the decoder one `Regather` for
the batch: per sample its text rows, the kept rows of each image followed by the tokens merged from it,
re-packed with left padding, positions kept or renumbered as the method says (`renumbers`).

What the model adds to every method, whatever it chose:
- text and system tokens always stay;
- each sample's last real token (the query row, whose logits are read) stays, outside the budget: a prompt
  ending in `<image>` keeps one more image token when the method dropped that one (a merging method may also
  have merged it into one of its new tokens: that token keeps it, as the method chose);
- a later stage sees what the earlier ones left: its spans are the images' current rows (merged tokens have
  patch index -1), and a chain's later method counts its budget on them.

It keeps, for every current row, which input row, image, partition and patch it is, so `fill_stats` can say
which patches each stage kept (`PruneStats.kept_stages`) and how many tokens each layer ran on (`seq_lens`).

Replay: the decisions of a prefill (`Replay`) can be applied again to the same prompt grown by generated tokens
(the cache-free decoding path): each decision is extended by the new columns, which stay, and the merged tokens
are mixed again from the recomputed rows (the image rows do not see later tokens, so they are the same).

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.model.language_model.llava_llama import LayerState, Regather
from llava.model.pruning.base import LayerPruner, PruneStats, SpanCut, StageView, VisualSpan


@dataclass
class Decision:
    """One stage's Regather as decided at prefill, over `input_width` columns, with the image each merged token is
    of."""

    cut: Regather
    input_width: int
    merged_image: torch.Tensor  # (B, M) the image (index in the sample) each merged token belongs to

    def extended(self, width: int) -> Regather:
        """The same cut over `width` >= self.input_width columns: the extra columns (tokens appended to every sample)
        stay."""
        extra = width - self.input_width
        cut = self.cut
        if extra == 0:
            return cut
        if extra < 0:
            raise ValueError(f"a replayed pruning decision covers {self.input_width} columns, more than the {width} given")
        B = cut.key_mask.shape[0]
        device = cut.key_mask.device
        new_columns = torch.arange(self.input_width, width, device=device).expand(B, -1)
        ones = torch.ones(B, extra, dtype=torch.bool, device=device)
        if cut.sources is None:
            return Regather(None, torch.cat([cut.key_mask, ones], dim=1))
        sources = torch.where(cut.sources >= self.input_width, cut.sources + extra, cut.sources)
        mix = None if cut.mix is None else torch.nn.functional.pad(cut.mix, (0, extra))
        return Regather(torch.cat([sources, new_columns], dim=1), torch.cat([cut.key_mask, ones], dim=1), mix, cut.renumber)


@dataclass
class Replay:
    """A prefill's in-LLM decisions, stage by stage (LlavaOutput.replay)."""

    decisions: list[Decision]


class StagedPruning:
    """The stages of one or more LayerPruners (a chain's in-LLM parts, in order) for one forward over a batch."""

    def __init__(self, pruners: list[LayerPruner], spans: list[list[VisualSpan]], key_mask: torch.Tensor,
                 replay: Replay | None = None):
        self.schedule: dict[int, tuple[LayerPruner, int]] = {}
        for pruner in pruners:
            for stage, layer in enumerate(pruner.layers):
                if layer in self.schedule or (self.schedule and layer < max(self.schedule)):
                    raise ValueError(f"stage layers must increase along the chain; {pruner.spec} prunes before layer {layer}")
                self.schedule[layer] = (pruner, stage)
        self.layers = tuple(self.schedule)
        self.input_spans = spans
        self.replay = replay
        self.decisions: list[Decision] = []
        self.records: list[dict] = []  # per stage: layer, rows each layer after it runs on, kept ids per image
        self.memos = {id(p): [{} for _ in spans] for p in pruners}
        B, N = key_mask.shape
        self.key_mask = key_mask
        self.input_width = N
        self.origin = torch.where(key_mask, torch.arange(N, device=key_mask.device), -1)  # (B, N) input row
        self.image = torch.full((B, N), -1, dtype=torch.long, device=key_mask.device)  # image of the row, -1 for text
        self.partition = torch.zeros(B, N, dtype=torch.long, device=key_mask.device)
        self.patch = torch.full((B, N), -1, dtype=torch.long, device=key_mask.device)
        for b, sample in enumerate(spans):
            for j, span in enumerate(sample):
                self.image[b, span.start : span.end] = j
                self.partition[b, span.start : span.end] = span.token_partition
                self.patch[b, span.start : span.end] = span.patch_index
        self.real_before = key_mask.sum(dim=1).tolist()

    # ---- the decoder's side ----------------------------------------------------------------------

    def wants_qk(self, layer: int) -> bool:
        return self.replay is None and self.schedule[layer][0].reads_keys

    def cut(self, state: LayerState) -> Regather:
        stage = len(self.decisions)
        if self.replay is not None:
            decision = self.replay.decisions[stage]
            decision = Decision(decision.extended(state.hidden.shape[1]), state.hidden.shape[1], decision.merged_image)
        else:
            decision = self._decide(state)
        self.decisions.append(decision)
        self._apply(decision, state.layer)
        return decision.cut

    # ---- deciding --------------------------------------------------------------------------------

    def current_spans(self, b: int, key_mask: torch.Tensor) -> list[VisualSpan]:
        """Sample b's images as they are now: their real rows, which stay contiguous (in mask mode they have holes;
        only their kept ids are read then, for the stats)."""
        spans = []
        for j, original in enumerate(self.input_spans[b]):
            rows = ((self.image[b] == j) & key_mask[b]).nonzero()[:, 0]
            spans.append(VisualSpan(
                int(rows[0]), len(rows), original.grid, self.patch[b, rows],
                None if original.partition is None else self.partition[b, rows], original.partition_grid,
                original.frames))
        return spans

    def _decide(self, state: LayerState) -> Decision:
        pruner, stage = self.schedule[state.layer]
        key_mask = state.key_mask
        B, N = key_mask.shape
        device = key_mask.device
        orders, mixes, merged_images = [], [], []
        for b in range(B):
            spans = self.current_spans(b, key_mask)
            first = int(key_mask[b].long().argmax())
            if not spans:
                orders.append(torch.arange(first, N, device=device))
                mixes.append([]), merged_images.append([])
                continue
            view = StageView(
                state.layer, stage, spans, key_mask[b], state.hidden[b], state.embeds[b],
                attention=lambda rows, of="previous", b=b: state.attention(b, rows, of),
                keys=lambda b=b: state.keys(b), final_norm=state.final_norm, memo=self.memos[id(pruner)][b])
            cuts = pruner.cut(view)
            if len(cuts) != len(spans):
                raise ValueError(f"{pruner.spec} answered {len(cuts)} cuts for {len(spans)} images")
            order, sample_mixes, sample_images, cursor = [], [], [], first
            for j, (span, cut) in enumerate(zip(spans, cuts)):
                keep = span.start + _checked(cut, span, pruner)
                query_here = span.end == N  # the query row is this image's last token
                if query_here:
                    keep = keep[keep != N - 1]
                order += [torch.arange(cursor, span.start, device=device), keep]
                if cut.mix is not None and len(cut.mix):
                    full = torch.zeros(cut.mix.shape[0], N, dtype=torch.float32, device=device)
                    full[:, span.start : span.end] = cut.mix.float()
                    order.append(N + len(sample_mixes) + torch.arange(len(full), device=device))
                    sample_mixes += list(full)
                    sample_images += [j] * len(full)
                if query_here:
                    order.append(torch.tensor([N - 1], device=device))
                cursor = span.end
            order.append(torch.arange(cursor, N, device=device))
            orders.append(torch.cat(order))
            mixes.append(sample_mixes), merged_images.append(sample_images)

        width = max(len(o) for o in orders)
        M = max(len(m) for m in mixes)
        sources = torch.zeros(B, width, dtype=torch.long, device=device)
        new_mask = torch.zeros(B, width, dtype=torch.bool, device=device)
        mix = torch.zeros(B, M, N, dtype=torch.float32, device=device) if M else None
        merged_image = torch.full((B, M), -1, dtype=torch.long, device=device)
        for b, order in enumerate(orders):
            pad = width - len(order)
            sources[b, pad:] = order  # merged token m of the sample: N + m
            new_mask[b, pad:] = True
            if mixes[b]:
                mix[b, : len(mixes[b])] = torch.stack(mixes[b])
                merged_image[b, : len(mixes[b])] = torch.tensor(merged_images[b], device=device)
        if M and not pruner.renumbers:
            raise ValueError(f"{pruner.spec} merges tokens but keeps position ids; merged tokens need renumbering")
        if pruner.mode == "mask":
            if len(self.layers) != 1 or M:
                raise ValueError(f"{pruner.spec}: mask mode is for a single stage that merges nothing")
            keep = torch.zeros_like(key_mask)
            for b, order in enumerate(orders):
                keep[b, order] = True
            return Decision(Regather(None, keep & key_mask), N, merged_image)
        return Decision(Regather(sources, new_mask, mix, pruner.renumbers), N, merged_image)

    # ---- the books -------------------------------------------------------------------------------

    def _apply(self, decision: Decision, layer: int) -> None:
        cut = decision.cut
        if cut.sources is not None:
            M = decision.merged_image.shape[1]

            def regather(t: torch.Tensor, merged: torch.Tensor | int) -> torch.Tensor:
                if M:
                    fill = merged if isinstance(merged, torch.Tensor) else torch.full_like(decision.merged_image, merged)
                    t = torch.cat([t, fill], dim=1)
                return t.gather(1, cut.sources)

            self.origin = regather(self.origin, -1)
            self.image = regather(self.image, decision.merged_image)
            self.partition = regather(self.partition, 0)
            self.patch = regather(self.patch, -1)
            self.key_mask = cut.key_mask
            ran = cut.key_mask.sum(dim=1).tolist()
        else:  # masked keys: every row still runs
            self.key_mask = cut.key_mask
            ran = self.records[-1]["ran"] if self.records else self.real_before
        spans = [self.current_spans(b, self.key_mask) for b in range(len(self.input_spans))]
        self.records.append({
            "layer": layer,
            "ran": ran,
            "kept": [[span.kept_ids() for span in sample] for sample in spans],
            "kept_partitions": [[span.kept_partitions() for span in sample] for sample in spans],
            "kept_cls": [[span.kept_cls() for span in sample] for sample in spans],
        })

    def keep_mask(self) -> torch.Tensor:
        """(B, N) in the input layout: the input rows that reach the last layer."""
        keep = torch.zeros(self.origin.shape[0], self.input_width, dtype=torch.bool, device=self.origin.device)
        real = self.key_mask & (self.origin >= 0)
        keep[real.nonzero()[:, 0], self.origin[real]] = True
        return keep

    def fill_stats(self, stats: PruneStats, num_layers: int) -> None:
        """What the stages did: per layer the tokens it ran on, the kept tokens after the last stage and after each."""
        seq_lens = [[n] * num_layers for n in self.real_before]
        for record in self.records:
            for b, n in enumerate(record["ran"]):
                seq_lens[b][record["layer"]:] = [n] * (num_layers - record["layer"])
        stats.seq_lens = seq_lens
        if not self.records:
            return
        stats.kept_in_llm = self.records[-1]["kept"]
        stats.kept_partitions_in_llm = self.records[-1]["kept_partitions"]
        stats.kept_cls_in_llm = self.records[-1]["kept_cls"]
        stats.kept_stages = [{"layer": r["layer"], "kept": [[sorted(ids) for ids in sample] for sample in r["kept"]]}
                             for r in self.records]

    @property
    def replay_record(self) -> Replay:
        return Replay(list(self.decisions))


def _checked(cut: SpanCut, span: VisualSpan, pruner: LayerPruner) -> torch.Tensor:
    """The cut's kept local indices, checked: sorted, distinct, inside the span; a method error is a bug, not input."""
    keep = cut.keep.to(torch.long)
    if len(keep) and (int(keep.min()) < 0 or int(keep.max()) >= span.length or bool((keep[1:] <= keep[:-1]).any())):
        raise ValueError(f"{pruner.spec} returned kept indices that are not sorted, distinct local indices of a"
                         f" {span.length}-token span")
    if cut.mix is not None and cut.mix.shape[1:] != (span.length,):
        raise ValueError(f"{pruner.spec} returned merge weights of shape {tuple(cut.mix.shape)} for a {span.length}-token span")
    return keep.to(span.patch_index.device)
