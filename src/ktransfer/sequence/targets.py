"""Where a step's targets come from: the dataset, the teacher's generations, or the student's samples.

`TargetsStage` picks, for each example of a batch, one source by the configured fractions (as
in generalised on-policy distillation, Agarwal et al. 2024), generates the targets of the
teacher- and student-sourced examples with Hugging Face `generate` (batched, KV cache) and
rewrites the batch:

* causal LM: the prompt is the example's tokens before its first label; the new row is
  prompt + continuation, with labels -100 on the prompt and on padding;
* seq2seq: the encoder input stays, the labels become the generated decoder tokens (the
  decoder start token dropped), -100 after the end-of-sequence token.

A generated continuation ends with (and includes) the first end-of-sequence token. The stage
adds `target_source` (B,) with 0 = dataset, 1 = teacher, 2 = student, and `sample_logprobs`,
the log-probability of each sampled token under the (processed) distribution it was drawn
from, aligned with `labels` (0 elsewhere); importance weights need them. With
`greedy_baseline`, it also decodes each student-sourced prompt greedily and stores the greedy
output's sequence reward sum_t (log p_T - log q_S) as `greedy_reward` (a self-critic baseline),
and its length in tokens as `greedy_length`. Every rewritten batch also carries `max_new_tokens`
(B,), the generation budget, a constant that length-normalises returns without bias.

Sampling is driven by the stage's own `torch.Generator`, checkpointed with the run: each call
seeds a forked global RNG from it, so generation never disturbs the training RNG (dropout) and
a resumed run draws exactly the samples of the uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from ktransfer.engine.sharding import is_sharded
from ktransfer.knowledge.sources import SOURCE_IDS, SOURCES  # noqa: F401  (SOURCE_IDS: read from here too)
from ktransfer.engine.stages import StageContext
from ktransfer.registry import ConfigError, unknown_key
from ktransfer.sequence.cache import GenerationCache, prompt_key
from ktransfer.sequence.vocab import VocabularyError, check_vocabularies
from ktransfer.tasks import IGNORE_INDEX

# The batch key of each example's generation budget (generation.max_new_tokens): the constant
# by which a REINFORCE term's `normalise: max_length` divides the returns.
MAX_LENGTH_KEY = "max_new_tokens"


@dataclass
class GenerationConfig:
    """Decoding settings passed to `model.generate` (see Hugging Face's GenerationConfig).

    `do_sample` False with `num_beams` > 1 is beam search; `teacher_mix` in [0, 1) samples the
    student's targets from alpha * p_T + (1 - alpha) * q_S token by token (MiniLLM), which
    needs `do_sample` and one beam. `vocab_size` restricts generation to the first ids when
    an embedding matrix is padded beyond the tokenizer's vocabulary. `use_cache` keeps the
    models' key/value cache between generated tokens (Hugging Face's default; false recomputes
    the whole prefix at every token, for comparison: benchmarks/sampling).
    """

    max_new_tokens: int = 16
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    teacher_mix: float = 0.0
    vocab_size: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"generation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"generation.temperature must be > 0, got {self.temperature}")
        if self.num_beams < 1:
            raise ValueError(f"generation.num_beams must be >= 1, got {self.num_beams}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"generation.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"generation.top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.teacher_mix < 1.0:
            raise ValueError(f"generation.teacher_mix must be in [0, 1), got {self.teacher_mix}")
        if self.teacher_mix > 0 and (not self.do_sample or self.num_beams != 1):
            raise ValueError("generation.teacher_mix samples from a mixed policy: it needs do_sample=true and num_beams=1")


class _MixWithTeacher:
    """A logits processor: the scores become log(alpha * p_T + (1 - alpha) * softmax(scores)).

    The teacher is run on the whole prefix at each step (no cache of its own): simple and
    exact; the student keeps its KV cache.
    """

    def __init__(self, teacher: nn.Module, alpha: float, encoder: dict[str, Tensor] | None,
                 prompt_mask: Tensor | None, vocab: int) -> None:
        self.teacher, self.alpha, self.encoder, self.prompt_mask, self.vocab = teacher, alpha, encoder, prompt_mask, vocab

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.encoder is not None:  # seq2seq: input_ids are the decoder's
            out = self.teacher(**self.encoder, decoder_input_ids=input_ids)
        else:  # causal: left-padded prompt + continuation, positions counted as generate counts them
            mask = torch.ones_like(input_ids)
            if self.prompt_mask is not None:
                mask[:, :self.prompt_mask.shape[1]] = self.prompt_mask
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            out = self.teacher(input_ids=input_ids, attention_mask=mask, position_ids=positions)
        log_p = torch.log_softmax(out.logits[:, -1, :self.vocab].float(), -1)
        log_q = torch.log_softmax(scores[:, :self.vocab].float(), -1)
        mixed = torch.logaddexp(log_p + math.log(self.alpha), log_q + math.log1p(-self.alpha))
        full = torch.full_like(scores, -torch.inf)
        full[:, :self.vocab] = mixed.to(scores.dtype)
        return full


class _SuppressPadded:
    """A logits processor that forbids ids >= vocab_size (padded embedding rows)."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        scores = scores.clone()
        scores[:, self.vocab:] = -torch.inf
        return scores


@dataclass
class TargetsStage:
    """Rewrites each batch's targets, mixing sources by fraction (see the module docstring).

    `sources` maps "dataset", "teacher", "student" to non-negative fractions (normalised to
    sum 1); each example draws its source independently. `generation` holds
    `GenerationConfig` keys. `student_tokenizer` / `teacher_tokenizer`, when given, are
    checked to be one vocabulary (different tokenizers stop the run with an error). With
    `cache`, the teacher's generations are kept on disk (`GenerationCache`, under `cache_dir`
    or the ktransfer cache) and each prompt is generated by the teacher only once, ever.
    """

    sources: dict[str, float] = field(default_factory=lambda: {"student": 1.0})
    generation: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    greedy_baseline: bool = False
    student_tokenizer: Any = None
    teacher_tokenizer: Any = None
    cache: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sources) - set(SOURCES))
        if unknown:
            raise ValueError(f"sources.{unknown[0]}: unknown source; valid choices: {', '.join(SOURCES)}")
        if any(v < 0 for v in self.sources.values()) or sum(self.sources.values()) <= 0:
            raise ValueError(f"sources: fractions must be >= 0 and not all 0, got {self.sources}")
        self.config = GenerationConfig(**self.generation)
        total = sum(self.sources.values())
        self.fractions = torch.tensor([self.sources.get(s, 0.0) / total for s in SOURCES], dtype=torch.float64)
        self.requires_teacher = self.fractions[1] > 0 or self.config.teacher_mix > 0 or self.greedy_baseline
        self.generator = torch.Generator().manual_seed(self.seed)
        self._checked = False
        self._seed = 0
        self._cache: Any = None

    def sharding_limits(self) -> list[str]:
        """What of this stage's settings a sharded run cannot serve, one phrase each ([] when it can).

        Every setting is served: a sharded model generates in step on every process (see
        `_generate`); with teacher_mix, whose teacher runs inside generate's token selection, every
        process generates max_new_tokens tokens (see `_generate`); greedy_baseline scores the greedy
        outputs in as many forward passes on every process (see `_greedy_rewards`).
        """
        return []

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    # -------------------------------------------------------------------------------- call
    def __call__(self, batch: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        if ctx.task.kind not in ("causal_lm", "seq2seq"):
            raise ValueError(f"sequence targets need task causal_lm or seq2seq, not '{ctx.task.kind}'")
        if any(k.startswith("teacher_") for k in batch):
            raise VocabularyError(
                "the batch has teacher-specific inputs (teacher_* keys), i.e. teacher and student read different "
                "tokens; generated targets are compared token by token, so both must use one tokenizer")
        if not self._checked:
            check_vocabularies(ctx.student, ctx.teacher if self.requires_teacher else None, self.config.vocab_size,
                               self.student_tokenizer, self.teacher_tokenizer)
            self._checked = True
        labels = batch.get("labels")
        if not isinstance(labels, Tensor):
            what = "decoder targets ('labels')" if ctx.task.kind == "seq2seq" else "'labels' marking the prompt (-100)"
            raise ValueError(f"a {ctx.task.kind} batch without {what}: the targets stage needs them to "
                             "know " + ("what the dataset's targets are" if ctx.task.kind == "seq2seq"
                                        else "where each prompt ends"))
        # drawn for every process alike (the generator stays in step everywhere); this process takes its share
        n, rank, world = labels.shape[0], ctx.process_index, ctx.num_processes
        drawn = torch.multinomial(self.fractions.expand(n * world, -1), 1, replacement=True, generator=self.generator)
        choice = drawn[rank * n:(rank + 1) * n, 0]
        seeds = torch.randint(0, 2**62, (world,), generator=self.generator)
        self._seed = int(seeds[rank])
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            if ctx.task.kind == "causal_lm":
                return self._causal(batch, choice, ctx)
            return self._seq2seq(batch, choice, ctx)

    # -------------------------------------------------------------------------------- generation
    def _generate(self, model: nn.Module, ctx: StageContext, inputs: dict[str, Tensor], greedy: bool,
                  prompt_len: int, synced: bool = False) -> tuple[Tensor, Tensor]:
        """(generated tokens (n, <= max_new_tokens), log-prob of each under the sampling policy).

        `synced` (a sharded model): every process keeps stepping, its finished rows padded, until
        the rows of all processes have ended (`generate`'s `synced_gpus`, one all-reduce per token),
        so that every process makes the same number of forward passes. A process whose rows have
        all ended skips generate's token selection, where teacher_mix runs the teacher; so with
        teacher_mix no row stops at the end-of-sequence token and every process generates
        max_new_tokens tokens: what follows a row's end is cut off as always, and the rows before
        it are the tokens of a generation that stopped there.
        """
        from transformers import LogitsProcessorList

        cfg = self.config
        processors: list[Any] = []
        vocab = cfg.vocab_size
        if vocab is not None:
            processors.append(_SuppressPadded(vocab))
        mix = cfg.teacher_mix if (model is ctx.student and not greedy) else 0.0
        if mix > 0:
            assert ctx.teacher is not None
            seq2seq = ctx.task.kind == "seq2seq"
            encoder = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")} if seq2seq else None
            processors.append(_MixWithTeacher(ctx.teacher, mix, encoder, None if seq2seq else inputs["attention_mask"],
                                              vocab or _vocab_size(model)))
        kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample and not greedy,
                                  "num_beams": 1 if greedy else cfg.num_beams, "output_scores": True,
                                  "return_dict_in_generate": True, "logits_processor": LogitsProcessorList(processors),
                                  "use_cache": cfg.use_cache, "synced_gpus": synced}
        if kwargs["do_sample"]:
            kwargs.update(temperature=cfg.temperature, top_k=cfg.top_k or 0, top_p=cfg.top_p or 1.0)
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else _config_id(model, "eos_token_id")
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else _config_id(model, "pad_token_id")
        pad = pad if pad is not None else (eos if eos is not None else 0)
        kwargs.update(eos_token_id=None if synced and mix > 0 else eos, pad_token_id=pad)
        was_training = model.training
        model.eval()
        try:
            out = model.generate(**inputs, **kwargs)
        finally:
            model.train(was_training)
        tokens = out.sequences[:, prompt_len:] if ctx.task.kind == "causal_lm" else out.sequences[:, 1:]
        tokens = tokens[:, :len(out.scores)]
        keep = _until_eos(tokens, eos)
        if kwargs["num_beams"] == 1:
            logprobs = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
            logprobs = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            logprobs = torch.where(keep, logprobs, torch.zeros_like(logprobs))
        else:  # beam search: the beams' scores are not the probabilities of a sampling policy
            logprobs = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        return torch.where(keep, tokens, torch.full_like(tokens, IGNORE_INDEX)), logprobs

    def _causal(self, batch: dict[str, Any], choice: Tensor, ctx: StageContext) -> dict[str, Any]:
        ids, labels = batch["input_ids"], batch["labels"]
        attention = batch.get("attention_mask", torch.ones_like(ids))
        labelled = labels != IGNORE_INDEX
        if bool((~labelled.any(1)).any()):
            raise ValueError("a causal_lm example without labels: the targets stage takes the tokens before the "
                             "first label as the prompt, so every example needs at least one label")
        starts = labelled.int().argmax(1)  # first label: the prompt is everything before it
        rows: list[tuple[Tensor, Tensor, Tensor]] = []  # (ids, labels, sample_logprobs) per example
        generated = self._generate_rows(ctx, choice, starts, ids, attention)
        for i in range(ids.shape[0]):
            if int(choice[i]) == 0:
                length = int(attention[i].sum())
                rows.append((ids[i, :length], labels[i, :length], torch.zeros(length, device=ids.device)))
                continue
            tokens, logprobs = generated[i]
            prompt = ids[i, :int(starts[i])]
            valid = tokens != IGNORE_INDEX
            cont = tokens[valid]
            rows.append((torch.cat([prompt, cont]),
                         torch.cat([torch.full_like(prompt, IGNORE_INDEX), cont]),
                         torch.cat([torch.zeros(prompt.shape[0], device=ids.device), logprobs[valid].float()])))
        width = max(r[0].shape[0] for r in rows)
        new_ids = torch.zeros(len(rows), width, dtype=ids.dtype, device=ids.device)
        new_labels = torch.full_like(new_ids, IGNORE_INDEX)
        new_mask = torch.zeros_like(new_ids)
        new_logprobs = torch.zeros(len(rows), width, dtype=torch.float32, device=ids.device)
        for i, (row_ids, row_labels, row_lp) in enumerate(rows):
            k = row_ids.shape[0]
            new_ids[i, :k], new_labels[i, :k], new_mask[i, :k], new_logprobs[i, :k] = row_ids, row_labels, 1, row_lp
        out = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels", "position_ids")}
        out.update(input_ids=new_ids, attention_mask=new_mask, labels=new_labels, target_source=choice.to(ids.device),
                   sample_logprobs=new_logprobs)
        out[MAX_LENGTH_KEY] = self._budget(choice, ids.device)
        if self.greedy_baseline:
            out["greedy_reward"], out["greedy_length"] = self._greedy_rewards(ctx, choice, starts, ids, attention)
        return out

    def _budget(self, choice: Tensor, device: torch.device) -> Tensor:
        """Each example's generation budget, generation.max_new_tokens (B,)."""
        return torch.full((choice.shape[0],), float(self.config.max_new_tokens), device=device)

    def _generate_rows(self, ctx: StageContext, choice: Tensor, starts: Tensor, ids: Tensor,
                       attention: Tensor, greedy: bool = False) -> dict[int, tuple[Tensor, Tensor]]:
        """Generations for the examples whose source is the teacher (1) or the student (2), by example index."""
        results: dict[int, tuple[Tensor, Tensor]] = {}
        for source, model in ((1, ctx.teacher), (2, ctx.student)):
            index = (choice == source).nonzero().squeeze(-1).tolist()
            if model is None:
                continue
            # each generation its own seed, so that cache hits elsewhere never shift these samples
            torch.manual_seed((self._seed + 7919 * source + (1 if greedy else 0)) % 2**63)
            cache = self._teacher_cache(ctx) if source == 1 else None
            keys: dict[int, str] = {}
            if cache is not None:
                keys = {i: prompt_key(_prompt(ids, attention, starts, i, ctx.task.kind)) for i in index}
                for i in index:
                    hit = cache.get(keys[i])
                    if hit is not None:
                        results[i] = (hit[0].to(ids.device), hit[1].to(ids.device))
                index = [i for i in index if i not in results]
            synced = _sharded(model)
            if not (_any_process(bool(index), ids.device) if synced else index):
                continue
            # a sharded model gathers its layers from every process at each forward: a process with
            # nothing to generate from this model generates from its first prompt, the result dropped
            rows = index or [0]
            if ctx.task.kind == "causal_lm":
                inputs, prompt_len = _left_padded_prompts(ids, attention, starts, rows)
            else:
                inputs, prompt_len = {"input_ids": ids[rows], "attention_mask": attention[rows]}, 0
            tokens, logprobs = self._generate(model, ctx, inputs, greedy, prompt_len, synced)
            for row, i in enumerate(index):
                keep = tokens[row] != IGNORE_INDEX  # stored without the padding after the sequence's end
                length = int(keep.sum())
                results[i] = (tokens[row, :length], logprobs[row, :length])
            if cache is not None:
                cache.put({keys[i]: results[i] for i in index})
        return results

    def _teacher_cache(self, ctx: StageContext) -> GenerationCache | None:
        """The on-disk cache of the teacher's generations (built on first use), or None without `cache`."""
        if not self.cache:
            return None
        if self._cache is None:
            assert ctx.teacher is not None
            self._cache = GenerationCache(ctx.teacher, self.config, ctx.task.kind, self.teacher_tokenizer,
                                          root=self.cache_dir)
        return self._cache

    def _seq2seq(self, batch: dict[str, Any], choice: Tensor, ctx: StageContext) -> dict[str, Any]:
        ids, labels = batch["input_ids"], batch["labels"]
        attention = batch.get("attention_mask", torch.ones_like(ids))
        generated = self._generate_rows(ctx, choice, torch.zeros_like(choice), ids, attention)
        rows = []
        for i in range(ids.shape[0]):
            if int(choice[i]) == 0:
                rows.append((labels[i], torch.zeros(labels.shape[1], device=ids.device)))
            else:
                tokens, logprobs = generated[i]
                rows.append((tokens, logprobs.float()))
        width = max(r[0].shape[0] for r in rows)
        new_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=labels.dtype, device=ids.device)
        new_logprobs = torch.zeros(len(rows), width, dtype=torch.float32, device=ids.device)
        for i, (row_labels, row_lp) in enumerate(rows):
            new_labels[i, :row_labels.shape[0]], new_logprobs[i, :row_lp.shape[0]] = row_labels, row_lp
        out = {k: v for k, v in batch.items() if k not in ("labels", "decoder_input_ids", "decoder_attention_mask")}
        out.update(labels=new_labels, target_source=choice.to(ids.device), sample_logprobs=new_logprobs)
        out[MAX_LENGTH_KEY] = self._budget(choice, ids.device)
        if self.greedy_baseline:
            out["greedy_reward"], out["greedy_length"] = self._greedy_rewards(ctx, choice, torch.zeros_like(choice), ids,
                                                                              attention)
        return out

    def _greedy_rewards(self, ctx: StageContext, choice: Tensor, starts: Tensor, ids: Tensor,
                        attention: Tensor) -> tuple[Tensor, Tensor]:
        """sum_t log p_T(y_t) - log q_S(y_t) of the student's greedy output, and its length in tokens,
        per example (0 where not sampled)."""
        assert ctx.teacher is not None
        rewards = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device)
        lengths = torch.zeros_like(rewards)
        student_rows = choice == 2
        # sharded models gather their layers at each forward pass: every process scores as many outputs
        synced = _sharded(ctx.student) or _sharded(ctx.teacher)
        if not (_any_process(bool(student_rows.any()), ids.device) if synced else bool(student_rows.any())):
            return rewards, lengths
        greedy = self._generate_rows(ctx, torch.where(student_rows, 2, 0), starts, ids, attention, greedy=True)
        passes = _most_over_processes(len(greedy), ids.device) if synced else len(greedy)  # before any pass
        for i, (tokens, _) in greedy.items():
            valid = tokens != IGNORE_INDEX
            cont = tokens[valid]
            kwargs, positions = _scoring_inputs(ctx, ids, attention, starts, i, cont)
            s_logits, t_logits = self._score(ctx, kwargs)
            s_logits, t_logits = s_logits[0, positions], t_logits[0, positions]
            vocab = self.config.vocab_size or min(s_logits.shape[-1], t_logits.shape[-1])
            log_q = torch.log_softmax(s_logits[:, :vocab].float(), -1).gather(-1, cont.unsqueeze(-1))
            log_p = torch.log_softmax(t_logits[:, :vocab].float(), -1).gather(-1, cont.unsqueeze(-1))
            rewards[i] = (log_p - log_q).sum()
            lengths[i] = cont.shape[0]
        if synced:  # spare passes on the first example's first tokens, results dropped
            spare, _ = _scoring_inputs(ctx, ids, attention, torch.ones_like(starts), 0, ids[0, :0])
            for _ in range(passes - len(greedy)):
                self._score(ctx, spare)
        return rewards, lengths

    @staticmethod
    def _score(ctx: StageContext, kwargs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The student's (in eval mode) and the teacher's logits on `kwargs`: one forward pass of each."""
        assert ctx.teacher is not None
        was_training = ctx.student.training
        ctx.student.eval()
        try:
            s_logits = ctx.student(**kwargs).logits
        finally:
            ctx.student.train(was_training)
        return s_logits, ctx.teacher(**kwargs).logits


# The keys of a run config's `targets` section (tokenizers are Python objects: API only).
CONFIG_KEYS: tuple[str, ...] = ("sources", "generation", "seed", "greedy_baseline", "cache", "cache_dir")


def targets_stage_from_config(spec: dict[str, Any], task: str, where: str = "targets") -> TargetsStage:
    """The `TargetsStage` a run config's `targets` section describes; a bad key or value is a ConfigError."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(CONFIG_KEYS)}, got {spec!r}")
    if task not in ("causal_lm", "seq2seq"):
        raise ConfigError(f"{where}: generated targets need task causal_lm or seq2seq, not '{task}'")
    for key in spec:
        if key not in CONFIG_KEYS:
            raise unknown_key(where, key, list(CONFIG_KEYS))
    generation = spec.get("generation") or {}
    valid = [f.name for f in fields(GenerationConfig)]
    for key in generation:
        if key not in valid:
            raise unknown_key(f"{where}.generation", key, valid)
    try:
        return TargetsStage(**spec)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _prompt(ids: Tensor, attention: Tensor, starts: Tensor, i: int, kind: str) -> Tensor:
    """Example i's prompt: the tokens before its first label (causal LM), or its unpadded source (seq2seq)."""
    if kind == "causal_lm":
        return ids[i, :int(starts[i])]
    return ids[i][attention[i].bool()]


def _left_padded_prompts(ids: Tensor, attention: Tensor, starts: Tensor,
                         index: list[int]) -> tuple[dict[str, Tensor], int]:
    """The prompts of the chosen examples, left-padded to one width (generate continues on the right)."""
    width = int(starts[index].max())
    if width == 0:
        raise ValueError("a causal_lm example whose first token is labelled has an empty prompt: put at least "
                         "one prompt token (label -100) before the targets")
    prompt_ids = torch.zeros(len(index), width, dtype=ids.dtype, device=ids.device)
    prompt_mask = torch.zeros_like(prompt_ids)
    for row, i in enumerate(index):
        k = int(starts[i])
        prompt_ids[row, width - k:] = ids[i, :k]
        prompt_mask[row, width - k:] = attention[i, :k]
    return {"input_ids": prompt_ids, "attention_mask": prompt_mask}, width


def _until_eos(tokens: Tensor, eos: int | None) -> Tensor:
    """True up to and including the first end-of-sequence token of each row."""
    if eos is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    is_eos = (tokens == eos).int()
    before = torch.cumsum(is_eos, 1) - is_eos  # EOS tokens strictly before each position
    return before == 0


def _sharded(model: nn.Module) -> bool:
    """Whether `model`'s parameters are sharded across processes (its forward passes are collective)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and is_sharded(model)


def _scoring_inputs(ctx: StageContext, ids: Tensor, attention: Tensor, starts: Tensor, i: int,
                    cont: Tensor) -> tuple[dict[str, Tensor], slice]:
    """Model inputs scoring continuation `cont` of example `i` (its prompt, then `cont`), and the
    positions of the logits that predict `cont`."""
    if ctx.task.kind == "causal_lm":
        prompt = ids[i, :int(starts[i])]
        seq = torch.cat([prompt, cont]).unsqueeze(0)
        return {"input_ids": seq}, slice(prompt.shape[0] - 1, seq.shape[1] - 1)
    start = _config_id(ctx.student, "decoder_start_token_id") or 0
    dec = torch.cat([torch.tensor([start], device=ids.device, dtype=cont.dtype), cont]).unsqueeze(0)
    return ({"input_ids": ids[i:i + 1], "attention_mask": attention[i:i + 1], "decoder_input_ids": dec},
            slice(0, cont.shape[0]))


def _most_over_processes(count: int, device: torch.device) -> int:
    """The largest `count` of any process (collective: every process calls it)."""
    value = torch.tensor(float(count), device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return int(value.item())


def _any_process(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on any process (collective: every process calls it)."""
    value = torch.tensor(1.0 if flag else 0.0, device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def _config_id(model: nn.Module, key: str) -> int | None:
    """A special token id from the model's generation config or config (None if unset)."""
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, key, None) if source is not None else None
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def _vocab_size(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])  # type: ignore[operator,union-attr]
