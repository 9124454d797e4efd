"""Length-grouped batching: a permutation per epoch with little padding, and evaluation sorted by length."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from ktransfer.batching import (
    declared_lengths,
    example_lengths,
    example_size,
    length_grouped_order,
    length_sorted,
)
from ktransfer.data.text import PadCollator, TokenizedDataset
from ktransfer.knowledge import LabelsTerm
from ktransfer.train import Distiller, EpochShuffleSampler, TrainConfig, make_evaluator


def texts(n: int, seed: int = 0) -> TokenizedDataset:
    """`n` token sequences of random length 2..40 with a label each."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 41, (n,), generator=g).tolist()
    ids = [torch.randint(1, 50, (k,), generator=g).tolist() for k in lengths]
    return TokenizedDataset({"input_ids": ids, "attention_mask": [[1] * k for k in lengths]},
                            [int(i[0] % 3) for i in ids])


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def cut(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def test_grouped_order_is_a_permutation_with_far_less_padding() -> None:
    data = texts(1000)
    lengths = data.lengths
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(1000, generator=g)
    grouped = length_grouped_order(order, lengths, batch_size=16, generator=g)
    assert sorted(grouped) == list(range(1000))
    real = sum(lengths)
    random_pad = padded_tokens(cut(order.tolist(), 16), lengths)
    grouped_pad = padded_tokens(cut(grouped, 16), lengths)
    assert grouped_pad < real * 1.05 < random_pad  # random batches pad ~1.8x here; grouped ones almost nothing
    # the 1000 % 16 = 8 examples that do not fill a batch stay last, in the permutation's order
    assert grouped[-8:] == order.tolist()[-8:]
    # a batch holds neighbouring lengths of its window (a window of 12 batches here spans ~5
    # examples per length, so at most 5 lengths); a random batch spans nearly the range 2..40
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in cut(grouped[:-8], 16)]
    assert max(spread) <= 5 and min(max(lengths[i] for i in b) - min(lengths[i] for i in b)
                                    for b in cut(order.tolist(), 16)) > 20


def test_grouped_order_is_seeded_and_shuffles_batches_across_windows() -> None:
    lengths = texts(640).lengths

    def draw(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return length_grouped_order(torch.randperm(640, generator=g), lengths, 8, g, group_batches=10)

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)
    maxima = [max(lengths[i] for i in b) for b in cut(draw(0), 8)]
    assert maxima != sorted(maxima, reverse=True)  # batches are not served longest first


def test_grouped_order_checks_its_arguments() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="3 lengths for 4 examples"):
        length_grouped_order(torch.arange(4), [1, 2, 3], 2, g)
    with pytest.raises(ValueError, match="batch_size"):
        length_grouped_order(torch.arange(4), [1, 2, 3, 4], 0, g)


def test_lengths_declared_through_subsets_or_measured() -> None:
    data = texts(10)
    assert declared_lengths(data) == [len(data[i]["input_ids"]) for i in range(10)]
    assert declared_lengths(Subset(Subset(data, [9, 3, 5]), [2, 0])) == [data.lengths[5], data.lengths[9]]
    plain = [{"x": torch.zeros(k, 3), "y": torch.tensor(1)} for k in (2, 5)]
    assert declared_lengths(plain) is None  # type: ignore[arg-type]
    assert example_lengths(plain) == [2 * 3 + 1, 5 * 3 + 1]  # type: ignore[arg-type]
    assert example_size(([1, 2, 3], torch.ones(2, 2))) == 7


def test_length_sorted_views_longest_first_and_leaves_undeclared_data_alone() -> None:
    data = texts(50)
    view = length_sorted(data)
    got = [len(view[i]["input_ids"]) for i in range(50)]
    assert got == sorted(data.lengths, reverse=True)
    plain = [torch.zeros(3)] * 4
    assert length_sorted(plain) is plain  # type: ignore[arg-type]


def test_sampler_without_lengths_is_the_plain_permutation() -> None:
    a = EpochShuffleSampler(100, seed=4)
    a.set_epoch(2)
    g = torch.Generator().manual_seed(4 * 1_000_003 + 2)
    assert list(a) == torch.randperm(100, generator=g).tolist()
    b = EpochShuffleSampler(100, seed=4, lengths=texts(100).lengths, batch_size=10)
    b.set_epoch(2)
    assert sorted(b) == list(range(100)) and list(b) != list(a)


class BagOfTokens(nn.Module):
    """A classifier over padded ids that records the padded length of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(50, 8, mode="sum")
        self.out = nn.Linear(8, 3)
        self.seen: list[int] = []

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.training:
            self.seen.append(input_ids.shape[1])
        mask = attention_mask.float()
        return self.out(self.embed(input_ids, per_sample_weights=mask / mask.sum(1, keepdim=True)))


@pytest.mark.parametrize("group", [False, True])
def test_distiller_batches_by_length_when_asked(group: bool) -> None:
    data = texts(320)
    torch.manual_seed(0)
    student = BagOfTokens()
    cfg = TrainConfig(max_steps=20, batch_size=16, eval_every=20, log_every=20, group_by_length=group)
    Distiller(student, None, [LabelsTerm()], train_data=data, config=cfg, collate_fn=PadCollator(),
              evaluate=make_evaluator(data, batch_size=64, collate_fn=PadCollator()), progress=False).fit()
    assert len(student.seen) == 20
    padded = sum(student.seen) * 16
    if group:
        assert padded < 1.1 * sum(data.lengths)
    else:
        assert padded > 1.5 * sum(data.lengths)


def test_evaluation_sorted_by_length_gives_the_same_metrics() -> None:
    data = texts(200)
    torch.manual_seed(0)
    model = BagOfTokens().eval()
    sorted_metrics = make_evaluator(data, batch_size=32, collate_fn=PadCollator())(model)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [data[i] for i in order]  # a plain list declares no lengths, so it is evaluated as given
    plain_metrics = make_evaluator(shuffled, batch_size=32, collate_fn=PadCollator())(model)  # type: ignore[arg-type]
    assert sorted_metrics.keys() == plain_metrics.keys()
    for k in sorted_metrics:
        assert sorted_metrics[k] == pytest.approx(plain_metrics[k], rel=1e-5)
