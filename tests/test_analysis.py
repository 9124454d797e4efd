"""Gradient analysis: logit gradients of forward/backward KL against autograd, parameter gradients, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from ktransfer.analysis import NEAR_UNIFORM, GradientReport, gradient_analysis, kl_logit_gradients, read
from ktransfer.cli import main
from ktransfer.divergences import backward_kl, forward_kl
from ktransfer.tasks import Task
from test_sequence import gpt2, prompts


def test_logit_gradients_and_their_parts_equal_autograd_in_float64() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(7, 11, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(7, 11, generator=g, dtype=torch.float64) * 3
    student[0, 3] = -torch.inf  # a token the student excludes: 0 log 0 = 0, no NaN
    z = student.clone().requires_grad_(True)
    grads = kl_logit_gradients(student, teacher)
    (auto_f,) = torch.autograd.grad(forward_kl(z[1:], teacher[1:], reduction="sum"), z)
    (auto_b,) = torch.autograd.grad(backward_kl(z, teacher, reduction="sum"), z)
    torch.testing.assert_close(grads["forward"][1:], auto_f[1:], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads["backward"], auto_b, rtol=1e-10, atol=1e-12)
    assert not grads["backward"].isnan().any()
    torch.testing.assert_close(grads["supervised"] + grads["reward"], grads["backward"])
    # near agreement the reward-weighted part is second order: halving the gap quarters it
    p = torch.randn(1, 11, generator=g, dtype=torch.float64)
    d = torch.randn(1, 11, generator=g, dtype=torch.float64)
    small, smaller = (kl_logit_gradients(p + e * d, p)["reward"].norm() for e in (1e-2, 5e-3))
    assert 3.5 < float(small / smaller) < 4.5


def test_parameter_gradients_match_autograd_of_the_divergences() -> None:
    student, teacher = gpt2(seed=1).double(), gpt2(seed=2, layers=2).double()
    data = prompts("causal_lm")
    batch = dict(data.tensors)
    task = Task("causal_lm")
    report = gradient_analysis(student, teacher, [batch], task)
    params = [p for p in student.parameters() if p.requires_grad]
    student.eval()
    s_out = task.forward(student, batch)
    with torch.no_grad():
        t_out = task.forward(teacher, batch)
    flat = {}
    for name, fn in (("forward", forward_kl), ("backward", backward_kl)):
        grads = torch.autograd.grad(fn(s_out.logits, t_out.logits, mask=s_out.mask, reduction="sum"), params,
                                    retain_graph=True, allow_unused=True)
        flat[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
    a = report.aggregate
    assert a["param_norm_forward"] == pytest.approx(float(flat["forward"].norm()), rel=1e-9)
    assert a["param_norm_backward"] == pytest.approx(float(flat["backward"].norm()), rel=1e-9)
    cos = float(flat["forward"] @ flat["backward"] / (flat["forward"].norm() * flat["backward"].norm()))
    assert a["param_cosine"] == pytest.approx(cos, rel=1e-9)
    assert report.tokens == int(s_out.mask.sum()) and report.positions == list(range(2, 5))  # type: ignore[union-attr]
    # randomly initialised, the teacher is near uniform: the reading names no order of KL
    assert report.aggregate["entropy_teacher"] > 0.8 * report.aggregate["log_vocab"]
    assert report.verdict == "inconclusive" and "favours" not in report.reading


def _report(entropy_teacher: float, log_vocab: float | None = 8.29) -> GradientReport:
    aggregate = {"entropy_teacher": entropy_teacher, "entropy_student": 6.1, "peak_teacher": 0.02, "cosine": 0.41,
                 "param_cosine": 0.38, "norm_reward": 0.7, "norm_supervised": 1.0}
    if log_vocab is not None:
        aggregate["log_vocab"] = log_vocab
    return GradientReport(positions=[0], per_position={}, aggregate=aggregate, tokens=640)


def test_the_reading_is_inconclusive_for_a_near_uniform_teacher_and_says_what_it_is() -> None:
    verdict, text = read(_report(7.65))  # 92% of log V = log 4000
    assert verdict == "inconclusive" and "favours" not in text
    assert "inconclusive: teacher near uniform (entropy 7.65 of log V = 8.29 nats; near uniform means above 80% " in text
    assert text.startswith("Reading (a rule of thumb on the quantities measured here")
    assert "does not measure which order trains the better student" in text
    verdict, text = read(_report(NEAR_UNIFORM * 8.29 - 0.01))  # below the threshold: the rule applies
    assert verdict == "backward" and "favours backward KL" in text and "inconclusive" not in text
    assert read(_report(7.65, log_vocab=None))[0] == "backward"  # a report written without log V: the rule alone


def test_gradient_analysis_of_a_uniform_and_a_peaked_teacher() -> None:
    """A teacher with a zero output layer is exactly uniform (entropy log V); one with a large output
    layer is peaked and gets a verdict."""
    student, teacher = gpt2(seed=1).double(), gpt2(seed=2).double()
    batch = dict(prompts("causal_lm").tensors)
    task = Task("causal_lm")
    with torch.no_grad():
        teacher.lm_head.weight.zero_()  # tied with the input embedding: the hidden states still differ per token
    uniform = gradient_analysis(student, teacher, [batch], task)
    assert uniform.aggregate["entropy_teacher"] == pytest.approx(math.log(20), rel=1e-9)
    assert uniform.aggregate["log_vocab"] == pytest.approx(math.log(20))
    assert uniform.verdict == "inconclusive" and f"of log V = {math.log(20):.3g} nats" in uniform.reading
    teacher = gpt2(seed=2).double()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(400.0)
    peaked = gradient_analysis(student, teacher, [batch], task)
    assert peaked.aggregate["entropy_teacher"] < 0.5 * peaked.aggregate["log_vocab"]
    assert peaked.verdict in ("forward", "backward", "either") and "inconclusive" not in peaked.reading


def test_analyze_command_writes_json_plot_and_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "pair.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "digits"}, "teacher": {"builder": "mlp", "hidden": [32]},
        "student": {"builder": "mlp", "hidden": [8]}, "knowledge": [{"type": "response"}],
        "train": {"max_steps": 1, "batch_size": 16},
    }))
    assert main(["analyze", str(config), "--out", str(tmp_path / "out"), "--batches", "2", "--batch-size", "16"]) == 0
    report = json.loads((tmp_path / "out" / "gradient_analysis.json").read_text())
    assert report["tokens"] == 32 and report["positions"] == [0]
    assert (tmp_path / "out" / "gradient_analysis.png").stat().st_size > 1000
    assert report["reading"] in capsys.readouterr().out
    assert report["verdict"] in ("forward", "backward", "either", "inconclusive")
    assert main(["analyze", str(tmp_path / "missing-dir")]) == 2  # a clear error, not a traceback
