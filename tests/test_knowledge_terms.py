"""Knowledge terms reading internals: feature, relation, attention; layer maps; projections; bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ktransfer.capture import Capture
from ktransfer.config import RunConfig
from ktransfer.knowledge import AttentionTerm, FeatureTerm, LayerMapError, RelationTerm, StepView, build_terms
from ktransfer.knowledge.attention import attention_distance
from ktransfer.knowledge.feature import feature_distance
from ktransfer.knowledge.layer_map import find_layers, map_layers
from ktransfer.knowledge.relation import fsp_matrix, sample_relation, token_relation
from ktransfer.registry import ConfigError
from ktransfer.tasks import Task

D = torch.float64


class Stack(nn.Module):
    """A plain model with a ModuleList of `depth` linear layers of `width` (tokens or rows)."""

    def __init__(self, width: int, depth: int, in_dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.head(h)


def tiny_bert(layers: int, heads: int, hidden: int, eager: bool = True) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"attn_implementation": "eager"} if eager else {"attn_implementation": "sdpa"}
    cfg = BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=16, num_labels=3,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kwargs)
    return BertForSequenceClassification(cfg)


def view_of(term: Any, student: nn.Module, teacher: nn.Module, batch: dict[str, Any]) -> StepView:
    """What the engine builds: captures of the term's modules around both forwards."""
    task = Task("classification")
    with Capture(student, term.student_modules) as sc:
        s_out = task.forward(student, batch)
    with torch.no_grad(), Capture(teacher, term.teacher_modules, detach=True) as tc:
        t_out = task.forward(teacher, batch)
    return StepView(batch=batch, student=s_out, teacher=t_out, student_captured=sc.outputs,
                    teacher_captured=tc.outputs)


# ------------------------------------------------------------------ hand-computed losses on small tensors
def test_feature_distances_against_hand_computed_values() -> None:
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=D)
    t = torch.tensor([[0.0, 2.0], [5.0, 4.0]], dtype=D)
    # mse: per row mean of squared differences: (1 + 0) / 2 and (4 + 0) / 2
    assert feature_distance(s, t, "mse").item() == pytest.approx((0.5 + 2.0) / 2, abs=1e-12)
    cos0 = (1 * 0 + 2 * 2) / (math.sqrt(5) * 2)
    cos1 = (3 * 5 + 4 * 4) / (5 * math.sqrt(41))
    assert feature_distance(s, t, "cosine").item() == pytest.approx(((1 - cos0) + (1 - cos1)) / 2, abs=1e-12)
    # a mask drops padded positions: (batch=1, tokens=2, width=2) with the second token padded
    mask = torch.tensor([[True, False]])
    assert feature_distance(s[None], t[None], "mse", mask).item() == pytest.approx(0.5, abs=1e-12)


def test_attention_distances_against_hand_computed_values() -> None:
    t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]], dtype=D)
    s = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]], dtype=D)
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = 1.0 * math.log(1.0 / 0.5)  # the teacher's zero entry adds 0 log 0 = 0
    assert attention_distance(s, t, "kl").item() == pytest.approx((row0 + row1) / 2, abs=1e-12)
    assert attention_distance(s, t, "mse").item() == pytest.approx((0.0625 + 0.25) / 2, abs=1e-12)
    # a padded query row is left out
    assert attention_distance(s, t, "kl", torch.tensor([[True, False]])).item() == pytest.approx(row0, abs=1e-12)


def test_relation_matrices_against_hand_computed_values() -> None:
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=D)
    b = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]], dtype=D)
    # (a0 b0^T + a1 b1^T) / 2 = ([[1, 1], [0, 0]] + [[0, 0], [4, 0]]) / 2
    torch.testing.assert_close(fsp_matrix(a, b), torch.tensor([[[0.5, 0.5], [2.0, 0.0]]], dtype=D))
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=D)
    expected = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]], dtype=D)
    torch.testing.assert_close(sample_relation(p), expected)
    h = torch.tensor([[[0.0], [1.0]]], dtype=D)
    e = math.e
    torch.testing.assert_close(token_relation(h, 1), torch.tensor([[[[0.5, 0.5], [1 / (1 + e), e / (1 + e)]]]], dtype=D))
    # a padded key gets no relation mass
    masked = token_relation(h, 1, torch.tensor([[True, False]]))
    torch.testing.assert_close(masked, torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]], dtype=D))


def test_relation_term_losses_equal_hand_computed_values_on_a_model() -> None:
    torch.manual_seed(0)
    student, teacher = Stack(3, 2).double(), Stack(5, 4).double()
    batch = {"inputs": torch.randn(4, 4, dtype=D), "labels": torch.tensor([0, 1, 2, 0])}
    term = RelationTerm(variant="sample")
    term.setup(student, teacher)
    view = view_of(term, student, teacher, batch)
    expected = torch.stack([
        (sample_relation(view.student_captured[f"layers.{i}:output"])
         - sample_relation(view.teacher_captured[f"layers.{j}:output"])).pow(2).mean()
        for i, j in ((0, 1), (1, 3))]).mean()
    torch.testing.assert_close(term.loss(view), expected)
    fsp = RelationTerm(variant="fsp")
    fsp.setup(student, teacher)
    with pytest.raises(ValueError, match="fsp relation needs equal student and teacher widths"):
        fsp.loss(view_of(fsp, student, teacher, batch))


# ------------------------------------------------------------------ layer maps, projections, head counts
def test_layer_maps_pair_layers_of_different_depths() -> None:
    s3 = [f"s.{i}" for i in range(3)]
    t12 = [f"t.{i}" for i in range(12)]
    assert [p.teacher_index for p in map_layers(s3, t12, "uniform")] == [3, 7, 11]
    s4, t6 = [f"s.{i}" for i in range(4)], [f"t.{i}" for i in range(6)]
    assert [p.teacher_index for p in map_layers(s4, t6, "uniform")] == [1, 2, 4, 5]
    assert [(p.student, p.teacher) for p in map_layers(s3, t12, "last")] == [("s.2", "t.11")]
    explicit = map_layers(s3, t12, [[0, 5], [-1, "t.11"]])
    assert [(p.student_index, p.teacher_index) for p in explicit] == [(0, 5), (2, 11)]
    with pytest.raises(LayerMapError, match=r"teacher layer index 12 does not exist; the teacher has 12 layers: t\.0"):
        map_layers(s3, t12, [[0, 12]])
    with pytest.raises(LayerMapError, match="unknown value 'middle'"):
        map_layers(s3, t12, "middle")


def test_feature_term_projects_mismatched_widths_and_depths() -> None:
    torch.manual_seed(0)
    student, teacher = Stack(3, 2).double(), Stack(5, 4).double()
    term = FeatureTerm(loss="mse")
    term.setup(student, teacher)
    term.double()
    assert term.student_modules == ("layers.0", "layers.1")
    assert term.teacher_modules == ("layers.1", "layers.3")
    assert [tuple(p.weight.shape) for p in term.projections] == [(5, 3), (5, 3)]
    batch = {"inputs": torch.randn(4, 4, dtype=D), "labels": torch.tensor([0, 1, 2, 0])}
    view = view_of(term, student, teacher, batch)
    expected = sum(
        ((term.projections[k](view.student_captured[f"layers.{i}:output"])
          - view.teacher_captured[f"layers.{j}:output"]) ** 2).mean()
        for k, (i, j) in enumerate(((0, 1), (1, 3)))) / 2
    loss = term.loss(view)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert term.projections[0].weight.grad is not None and student.layers[0].weight.grad is not None
    # equal widths need no projection
    same = FeatureTerm(loss="cosine")
    same.setup(Stack(5, 2), teacher)
    assert len(same.projections) == 0 and not list(same.parameters())


def test_feature_attention_and_relation_terms_on_tiny_berts_with_other_depths_widths_and_heads() -> None:
    student, teacher = tiny_bert(2, 2, 8), tiny_bert(4, 4, 16)
    student.train()
    teacher.eval()
    ids = torch.randint(1, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2])}
    feature = FeatureTerm()
    feature.setup(student, teacher)
    assert feature.teacher_modules == ("bert.encoder.layer.1", "bert.encoder.layer.3")
    assert tuple(feature.projections[0].weight.shape) == (16, 8)
    assert torch.isfinite(feature.loss(view_of(feature, student, teacher, batch)))

    attention = AttentionTerm(loss="kl")
    attention.setup(student, teacher)
    assert attention.student_modules == ("bert.encoder.layer.0.attention.self", "bert.encoder.layer.1.attention.self")
    view = view_of(attention, student, teacher, batch)
    # heads differ (2 vs 4): each side's maps are averaged over heads, padded queries left out
    s = view.student_captured["bert.encoder.layer.1.attention.self:output"][1].double().mean(1, keepdim=True)
    t = view.teacher_captured["bert.encoder.layer.3.attention.self:output"][1].double().mean(1, keepdim=True)
    rows = (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(-1).mean(1)
    last = rows[mask.bool()].mean()
    s0 = view.student_captured["bert.encoder.layer.0.attention.self:output"][1].double().mean(1, keepdim=True)
    t0 = view.teacher_captured["bert.encoder.layer.1.attention.self:output"][1].double().mean(1, keepdim=True)
    first = (t0 * (t0.clamp_min(1e-12).log() - s0.clamp_min(1e-12).log())).sum(-1).mean(1)[mask.bool()].mean()
    torch.testing.assert_close(attention.loss(view).double(), (first + last) / 2, rtol=1e-5, atol=1e-6)

    value = RelationTerm(variant="token", path="attention.self.value", relation_heads=2)  # MiniLM value relation
    value.setup(student, teacher)
    assert value.teacher_modules == ("bert.encoder.layer.1.attention.self.value", "bert.encoder.layer.3.attention.self.value")
    assert torch.isfinite(value.loss(view_of(value, student, teacher, batch)))


# ------------------------------------------------------------------ bad input
def test_layer_map_naming_a_missing_layer_lists_the_models_layers() -> None:
    student, teacher = Stack(3, 2), Stack(5, 4)
    term = FeatureTerm(layer_map=[[0, 7]])
    with pytest.raises(LayerMapError, match=r"teacher layer index 7 does not exist; the teacher has 4 layers: "
                                            r"layers\.0, layers\.1, layers\.2, layers\.3"):
        term.setup(student, teacher)
    named = FeatureTerm(teacher_layers=["layers.0", "layers.9"])
    with pytest.raises(LayerMapError, match=r"teacher layer 'layers\.9' does not exist; Stack has modules: embed, "
                                            r"layers, layers\.0, layers\.1, layers\.2, layers\.3, head"):
        named.setup(student, teacher)
    with pytest.raises(LayerMapError, match=r"student layers 'encoder' does not exist; Stack has modules: embed"):
        FeatureTerm(student_layers="encoder").setup(student, teacher)


def test_feature_term_on_a_model_without_hidden_states_is_a_clear_error() -> None:
    with pytest.raises(LayerMapError, match=r"the student does not expose hidden states.*Linear has modules"):
        FeatureTerm().setup(nn.Linear(4, 3), Stack(5, 2))
    # a named "layer" whose output is no float tensor of states
    class Ids(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Identity()])
            self.head = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            self.layers[0](x.argmax(-1))
            return self.head(x)

    term = FeatureTerm(student_width=5)
    term.setup(Ids(), Stack(5, 2))
    batch = {"inputs": torch.randn(2, 4), "labels": torch.tensor([0, 1])}
    with pytest.raises(LayerMapError, match=r"student layer 'layers\.0' does not expose hidden states"):
        term.loss(view_of(term, Ids(), Stack(5, 2), batch))


def test_attention_term_on_an_sdpa_bert_says_to_use_eager() -> None:
    student, teacher = tiny_bert(1, 2, 8, eager=False), tiny_bert(2, 2, 8)
    term = AttentionTerm()
    term.setup(student, teacher)
    batch = {"input_ids": torch.randint(1, 40, (2, 5)), "labels": torch.tensor([0, 1])}
    with pytest.raises(LayerMapError, match="attn_implementation='eager'"):
        term.loss(view_of(term, student, teacher, batch))


def test_terms_are_configured_from_yaml_and_checked() -> None:
    terms = build_terms([
        {"type": "feature", "loss": "cosine", "layer_map": [[0, 1], [1, 3]]},
        {"type": "relation", "variant": "token", "path": "attention.self.value", "relation_heads": 2, "name": "value"},
        {"type": "attention", "loss": "mse", "layer_map": "last"},
        {"type": "labels"},
    ])
    assert [t.name for t in terms] == ["feature", "value", "attention", "labels"]
    with pytest.raises(ConfigError, match=r"knowledge\[0\]: layer_map: unknown value 'middle'; valid choices: uniform, last"):
        build_terms([{"type": "feature", "layer_map": "middle"}])
    with pytest.raises(ConfigError, match=r"knowledge\[0\]\.loss.*mse.*cosine"):
        build_terms([{"type": "feature", "loss": "l1"}])
    with pytest.raises(ConfigError, match=r"knowledge\[0\]\.variant: invalid value 'gram'; valid choices: fsp, sample, token"):
        build_terms([{"type": "relation", "variant": "gram"}])
    RunConfig.from_dict({"teacher": {"builder": "mlp"}, "student": {"builder": "mlp"},
                         "knowledge": [{"type": "feature", "student_layers": ["0"], "teacher_layers": ["0"]},
                                       {"type": "labels"}]})
    with pytest.raises(ConfigError, match="need a teacher"):
        RunConfig.from_dict({"student": {"builder": "mlp"}, "knowledge": [{"type": "attention"}]})


def test_find_layers_auto_detects_the_first_module_list() -> None:
    assert find_layers(tiny_bert(2, 2, 8), None, "student") == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert find_layers(Stack(3, 2), "layers", "student") == ["layers.0", "layers.1"]
