"""Batched decoding: the replies that overlap in time share every forward pass of the model.

Decoding one token reads every weight of the model once; on a CPU (and on a GPU at small batch sizes) that read,
not the arithmetic, sets the speed, and a batch reads the weights once for all its rows (notes/07 has the
measurements). A :class:`DecodeBatch` holds the rows that decode together on one model:

- one KV cache, left-padded to a common length, with a 0/1 attention mask and each row's own position ids;
- new rows are prefilled together (left-padded), take their first token from that forward pass and join the running
  batch before its next step (continuous batching): the shorter of the two caches is padded on the left, then the
  two are stacked;
- a row that finishes leaves at once, and the columns that only padding still uses are cut away;
- each row samples with its own settings and its own random generator (its seed), cuts its own stop strings and
  ends for its own reason (:data:`~llm_course.inference.request.FinishReason`);
- a row with a :class:`~llm_course.inference.request.Constraint` (a tool call's grammar) samples only among the
  tokens it allows, and advances it by each token it takes (the first one, from the prefill, too).

The server's :class:`~llm_course.inference.scheduler.Scheduler` decides which rows join; :func:`decode_alone` runs
a batch of one for the terminal commands.
"""

import inspect
import time
from collections.abc import Callable
from typing import Any

import torch

from llm_course.inference.request import FinishReason, Generation
from llm_course.inference.sampling import StopScanner


class IncrementalText:
    """The text of a growing list of token ids, piece by piece, as vLLM and TGI detokenize.

    A piece is released once it decodes to whole characters (one character may take several byte-level tokens), and
    it is decoded with the tokens before it in front, so that tokenizers marking word starts (SentencePiece's ``▁``)
    put their spaces where the whole text would have them.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        return self._release(final=False)

    def flush(self) -> str:
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        now = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(now) > len(before) and (final or not now.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before) :]
        return ""


class Row:
    """One reply inside a batch: its detokenizer, stop strings, constraint, logits processors and random generator."""

    def __init__(self, generation: Generation, tokenizer: Any, device: torch.device) -> None:
        from transformers import RepetitionPenaltyLogitsProcessor as Penalty
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        p = generation.params
        self.generation, self.text, self.scanner = generation, IncrementalText(tokenizer), StopScanner(p.stop)
        self.constraint = generation.constraint
        self.penalty = Penalty(p.repetition_penalty) if p.repetition_penalty != 1 else None
        self.warpers: list[Any] | None = None  # None: greedy
        if p.temperature > 0:  # the warpers ``generate`` applies, in its order
            self.warpers = [TemperatureLogitsWarper(p.temperature)] if p.temperature != 1 else []
            self.warpers += [TopKLogitsWarper(p.top_k)] if p.top_k > 0 else []
            self.warpers += [TopPLogitsWarper(p.top_p)] if p.top_p < 1 else []
            self.generator = torch.Generator(device=device)
            if p.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(p.seed)

    def history(self, device: torch.device) -> torch.Tensor:
        g = self.generation
        return torch.tensor([g.prompt_ids + g.token_ids], device=device)


def forward_arguments(model: torch.nn.Module) -> tuple[str, bool]:
    """The name of the cache argument of the model's ``forward`` (``cache`` in recent transformers,
    ``past_key_values`` before) and whether it takes ``logits_to_keep`` (the prefill then skips the LM head for
    every prompt position but the last)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model passes kwargs on
    names = inspect.signature(type(inner).forward).parameters
    return ("cache" if "cache" in names else "past_key_values"), "logits_to_keep" in names


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


class DecodeBatch:
    """The rows decoding together on one engine's model. Not thread-safe: one decode loop drives it.

    Args:
        engine: the :class:`~llm_course.inference.engine.GenerationEngine` whose model computes.
        on_finish: called (from the decode loop) with each generation as it finishes, whatever the reason.
    """

    def __init__(self, engine: Any, on_finish: Callable[[Generation], None] | None = None) -> None:
        self.engine, self.model, self.device, self.on_finish = engine, engine.model, engine.device, on_finish
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask = self.positions = self.next_ids = torch.empty(0, dtype=torch.long)
        self._cache_arg, self._keep_logits = forward_arguments(self.model)
        # rows can join and leave only where every cache layer is a plain one (no sliding window...): elsewhere the
        # scheduler keeps this model's batch at one row
        self.joinable = self._paddable(self._new_cache())
        tokenizer = engine.tokenizer
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    @property
    def width(self) -> int:
        """Columns of the cache (the longest row plus the padding of the others)."""
        return self.mask.shape[1] if self.rows else 0

    def tokens_with(self, new: list[Generation]) -> int:
        """Cache positions (rows × columns) the batch may reach if ``new`` join: the memory bound of admission."""
        generations = [r.generation for r in self.rows] + new
        if not generations:
            return 0
        width = max([self.width] + [len(g.prompt_ids) for g in new])
        remaining = max(g.params.max_new_tokens - len(g.token_ids) for g in generations)
        return len(generations) * (width + remaining)

    def add(self, generations: list[Generation]) -> None:
        """Prefill ``generations`` together, give each its first token, and join them to the running rows."""
        live = [g for g in generations if not g.cancelled]
        for g in generations:
            if g.cancelled:
                self._finish(g, "cancelled")
        if not live:
            return
        width = max(len(g.prompt_ids) for g in live)
        ids = torch.full((len(live), width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(live), width), dtype=torch.long, device=self.device)
        for i, g in enumerate(live):
            ids[i, width - len(g.prompt_ids) :] = torch.tensor(g.prompt_ids, device=self.device)
            mask[i, width - len(g.prompt_ids) :] = 1
            g.started()
        cache = self._new_cache()
        logits = self._forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        rows = [Row(g, self.engine.tokenizer, self.device) for g in live]
        tokens = self._sample(logits, rows)
        self._join(rows, cache, mask, tokens)
        self._deliver(rows, tokens)
        self._drop_finished()

    def step(self) -> None:
        """One decode step for every row: a token each, delivered; finished and cancelled rows leave."""
        for row in self.rows:
            if row.generation.cancelled:
                self._end(row, "cancelled")
        self._drop_finished()
        if not self.rows:
            return
        mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        logits = self._forward(self.next_ids[:, None], mask, self.positions[:, None], self.cache)
        self.mask, self.positions = mask, self.positions + 1
        tokens = self._sample(logits, self.rows)
        self.next_ids = torch.tensor(tokens, device=self.device)
        self._deliver(self.rows, tokens)
        self._drop_finished()

    def fail(self, error: BaseException, others: list[Generation] = ()) -> None:
        """End every row (and ``others``, e.g. a group whose prefill failed) with ``error``; the batch is empty."""
        for g in [r.generation for r in self.rows] + list(others):
            self._finish(g, "error", error)
        self.rows, self.cache = [], None

    # --- internals ---

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers: the layers are made on first use
            return DynamicCache()

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        kwargs = {self._cache_arg: cache, "use_cache": True} | ({"logits_to_keep": 1} if self._keep_logits else {})
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1].float()

    def _sample(self, logits: torch.Tensor, rows: list[Row]) -> list[int]:
        greedy = logits.argmax(-1).tolist()
        tokens = []
        for i, row in enumerate(rows):
            if row.constraint is None and row.penalty is None and row.warpers is None:
                tokens.append(greedy[i])
                continue
            tokens.append(self._sample_row(logits[i : i + 1], row))
            if row.constraint is not None:
                row.constraint.advance(tokens[-1])
        return tokens

    def _sample_row(self, scores: torch.Tensor, row: Row) -> int:
        if row.constraint is not None:
            allowed = row.constraint.allowed(scores.shape[-1]).to(scores.device)
            scores = scores.masked_fill(~allowed, float("-inf"))
        history = row.history(self.device)
        if row.penalty is not None:
            scores = row.penalty(history, scores.clone())
        if row.warpers is None:
            return int(scores.argmax(-1))
        for warp in row.warpers:
            scores = warp(history, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _join(self, rows: list[Row], cache: Any, mask: torch.Tensor, tokens: list[int]) -> None:
        positions, next_ids = mask.sum(-1), torch.tensor(tokens, device=self.device)
        if not self.rows:
            self.cache, self.mask, self.positions, self.next_ids = cache, mask, positions, next_ids
        else:
            assert self.joinable, "the scheduler joins rows only to a batch whose cache can be padded"
            width = max(self.width, mask.shape[1])
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([_left_pad(old.keys, width, -2), _left_pad(new.keys, width, -2)])
                old.values = torch.cat([_left_pad(old.values, width, -2), _left_pad(new.values, width, -2)])
            self.mask = torch.cat([_left_pad(self.mask, width, -1), _left_pad(mask, width, -1)])
            self.positions = torch.cat([self.positions, positions])
            self.next_ids = torch.cat([self.next_ids, next_ids])
        self.rows += rows

    @staticmethod
    def _paddable(cache: Any) -> bool:
        try:
            from transformers.cache_utils import DynamicLayer
        except ImportError:
            return False
        layers = getattr(cache, "layers", None)
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    def _deliver(self, rows: list[Row], tokens: list[int]) -> None:
        now, eos = time.perf_counter(), self.engine.eos_ids
        for row, token in zip(rows, tokens, strict=True):
            g = row.generation
            g.token_ids.append(token)
            g.token_times.append(now)
            if token in eos:
                self._end(row, "stop")
                continue
            g.push(row.scanner.feed(row.text.add(token)))
            if row.scanner.stopped:  # checked before the length: a stop on the last allowed token is a stop
                self._end(row, "stop")
            elif len(g.token_ids) >= g.params.max_new_tokens:
                self._end(row, "length")

    def _end(self, row: Row, reason: FinishReason) -> None:
        g = row.generation
        if not row.scanner.stopped:
            g.push(row.scanner.feed(row.text.flush()))
            g.push(row.scanner.flush())
        self._finish(g, reason)

    def _finish(self, g: Generation, reason: FinishReason, error: BaseException | None = None) -> None:
        if g.done:
            return
        g.finish(reason, error)
        if self.on_finish is not None:
            self.on_finish(g)

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self.rows) if not row.generation.done]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache = [], None
            return
        index = torch.tensor(keep, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.positions, self.next_ids = self.mask[index], self.positions[index], self.next_ids[index]
        first = int(self.mask.any(0).nonzero()[0])  # columns before it are padding in every row left
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]


def decode_alone(generation: Generation) -> None:
    """Decode one reply on its own, as a batch of one under the engine's lock (the terminal commands, ``warm_up``,
    and RAG outside the server). Errors end the generation; its reader raises them."""
    batch = DecodeBatch(generation.engine)
    with generation.engine.lock, torch.inference_mode():
        try:
            batch.add([generation])
            while batch.rows:
                batch.step()
        except BaseException as err:  # shown to the reader of the stream, not lost in a thread
            batch.fail(err, [generation])
