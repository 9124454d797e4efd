"""Tests for ktransfer.capture: forward-hook capture of submodule inputs and outputs."""

from __future__ import annotations

import gc
import weakref
from collections import namedtuple
from typing import Any

import pytest
import torch
from torch import nn

from ktransfer.capture import (
    Capture,
    CaptureError,
    CaptureSpec,
    capture_forward,
    first_tensor,
    list_modules,
    parse_spec,
)

transformers = pytest.importorskip("transformers")


# ---------------------------------------------------------------------------------------------
# Fixtures / helpers
# ---------------------------------------------------------------------------------------------


class Block(nn.Module):
    """A small residual block with nested children."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(self.norm(x))


class Net(nn.Module):
    """Embedding-free toy network: stem -> two blocks -> head."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(4, dim)
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class SharedNet(nn.Module):
    """Calls the same layer twice in one forward (weight sharing)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(torch.tanh(self.shared(x))))


class KwargsOnly(nn.Module):
    """Module whose forward is called with keyword arguments only."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.proj(x) * scale


class CallsKwargs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = KwargsOnly()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x=x, scale=2.0)


class Wrapper(nn.Module):
    """Stands in for DDP: keeps the real model under ``.module``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class Boom(RuntimeError):
    pass


def all_forward_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture()
def net() -> Net:
    torch.manual_seed(0)
    return Net()


@pytest.fixture()
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(5, 4)


def tiny_gpt2() -> Any:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=16,
        n_head=2,
        vocab_size=50,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_bert() -> Any:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return transformers.BertModel(cfg).eval()


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------


def test_parse_spec_defaults_and_kinds() -> None:
    assert parse_spec("encoder.layer.1") == CaptureSpec("encoder.layer.1", "output")
    assert parse_spec("encoder.layer.1:input") == CaptureSpec("encoder.layer.1", "input")
    assert parse_spec("encoder.layer.1:output").key == "encoder.layer.1:output"
    assert parse_spec("") == CaptureSpec("", "output")
    assert parse_spec(":input").key == ":input"
    spec = CaptureSpec("a.b", "input")
    assert parse_spec(spec) is spec


def test_parse_spec_bad_kind() -> None:
    with pytest.raises(CaptureError, match="valid kinds: output, input"):
        parse_spec("encoder.layer.1:inptu")
    with pytest.raises(CaptureError):
        CaptureSpec("x", "grad")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Plain modules
# ---------------------------------------------------------------------------------------------


def test_sequential_outputs_and_inputs_match_manual() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    with Capture(model, ["0", "1", "2:input", "2", ""]) as cap:
        out = model(x)
    h0 = model[0](x)
    h1 = torch.relu(h0)
    torch.testing.assert_close(cap["0"], h0, rtol=0, atol=0)
    torch.testing.assert_close(cap["1:output"], h1, rtol=0, atol=0)
    torch.testing.assert_close(cap["2:input"], cap["1"], rtol=0, atol=0)  # input = previous output
    torch.testing.assert_close(cap["2"], model[2](h1), rtol=0, atol=0)
    assert cap[""] is out
    assert set(cap.outputs) == {"0:output", "1:output", "2:input", "2:output", ":output"}


def test_nested_custom_module_matches_manual(net: Net, x: torch.Tensor) -> None:
    specs = ["stem", "blocks.0", "blocks.1:input", "blocks.1.ff.0", "blocks.1.norm:input", "head:input"]
    with Capture(net, specs) as cap:
        net(x)
    h = net.stem(x)
    b0 = net.blocks[0](h)
    torch.testing.assert_close(cap["stem"], h, rtol=0, atol=0)
    torch.testing.assert_close(cap["blocks.0"], b0, rtol=0, atol=0)
    torch.testing.assert_close(cap["blocks.1:input"], b0, rtol=0, atol=0)
    torch.testing.assert_close(cap["blocks.1.norm:input"], b0, rtol=0, atol=0)
    torch.testing.assert_close(cap["blocks.1.ff.0"], net.blocks[1].ff[0](net.blocks[1].norm(b0)), rtol=0, atol=0)
    torch.testing.assert_close(cap["head:input"], net.blocks[1](b0), rtol=0, atol=0)


def test_gradients_flow_through_captured_features(net: Net, x: torch.Tensor) -> None:
    target = torch.randn(5, 8)
    with Capture(net, ["blocks.0"]) as cap:
        net(x)
    loss = (cap["blocks.0"] - target).pow(2).mean()
    assert cap["blocks.0"].requires_grad
    loss.backward()
    got = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)

    direct = net.blocks[0](net.stem(x))
    (direct - target).pow(2).mean().backward()
    want = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    assert any(n.startswith("stem") for n in want) and not any(n.startswith("head") for n in want)
    for name in want:
        torch.testing.assert_close(got[name], want[name])


def test_detach_gives_tensors_without_grad(net: Net, x: torch.Tensor) -> None:
    with Capture(net, ["blocks.0", "blocks.1:input", "head"], detach=True) as cap:
        out = net(x)
    assert out.requires_grad  # the forward itself is untouched
    for key, value in cap.outputs.items():
        assert not value.requires_grad, key
        assert value.grad_fn is None
    torch.testing.assert_close(cap["head"], out.detach(), rtol=0, atol=0)


def test_detach_is_recursive_through_structures() -> None:
    Pair = namedtuple("Pair", ["a", "b"])

    class Structured(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> Any:
            y = self.lin(x)
            return {"t": (y, [y * 2]), "p": Pair(y, None), "n": 3}

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s = Structured()

        def forward(self, x: torch.Tensor) -> Any:
            return self.s(x)

    model = Outer()
    with Capture(model, ["s"], detach=True) as cap:
        out = model(torch.randn(1, 2))
    got = cap["s"]
    assert isinstance(got["t"], tuple) and isinstance(got["t"][1], list)
    assert isinstance(got["p"], Pair) and got["p"].b is None and got["n"] == 3
    assert not got["t"][0].requires_grad and not got["t"][1][0].requires_grad and not got["p"].a.requires_grad
    assert out["t"][0].requires_grad
    torch.testing.assert_close(got["t"][1][0], out["t"][1][0].detach())


def test_clone_protects_against_inplace_ops() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True))
    with torch.no_grad():
        model[0].bias.fill_(-10.0)  # make ReLU change every value
    x = torch.randn(2, 3)
    with Capture(model, ["0"]) as plain, Capture(model, ["0"], clone=True) as cloned:
        model(x)
    assert torch.all(plain["0"] == 0)  # overwritten by the in-place ReLU (documented caveat)
    assert torch.all(cloned["0"] < 0)


def test_input_capture_rules() -> None:
    class TwoArgs(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.two = TwoArgs()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.two(x, x * 2)

    model = Outer()
    x = torch.randn(2, 2)
    with Capture(model, ["two:input"]) as cap:
        model(x)
    a, b = cap["two:input"]
    assert a is x
    torch.testing.assert_close(b, x * 2)
    assert first_tensor(cap["two:input"]) is x

    kw = CallsKwargs()
    with Capture(kw, ["inner:input", "inner"]) as cap:
        out = kw(x[:, :1].repeat(1, 4))
    inputs = cap["inner:input"]
    assert isinstance(inputs, dict) and set(inputs) == {"x", "scale"} and inputs["scale"] == 2.0
    torch.testing.assert_close(cap["inner"], out)
    assert first_tensor(inputs) is inputs["x"]


def test_hooks_removed_after_exit(net: Net, x: torch.Tensor) -> None:
    with Capture(net, ["stem", "blocks.0", "blocks.1:input", ""]) as cap:
        assert cap.active
        assert all_forward_hooks(net) == 4
        net(x)
    assert not cap.active
    assert all_forward_hooks(net) == 0
    assert net.stem._forward_hooks == {} and net._forward_hooks == {}
    assert all(not m._forward_hooks_with_kwargs for m in net.modules())
    # values stay readable after exit; a later forward no longer records anything
    before = cap["stem"]
    net(x * 2)
    assert cap["stem"] is before and len(cap.calls["stem:output"]) == 1


def test_hooks_removed_when_forward_raises(net: Net, x: torch.Tensor) -> None:
    def explode(module: nn.Module, args: Any, output: Any) -> None:
        raise Boom("inside forward")

    handle = net.head.register_forward_hook(explode)
    try:
        with pytest.raises(Boom):
            with Capture(net, ["stem", "blocks.0", "head"]) as cap:
                net(x)
    finally:
        handle.remove()
    assert all_forward_hooks(net) == 0
    assert "stem" in cap and "head" not in cap  # what ran before the error was captured


def test_capture_cannot_be_entered_twice(net: Net) -> None:
    cap = Capture(net, ["stem"])
    with cap:
        with pytest.raises(CaptureError, match="already active"):
            cap.__enter__()
    assert all_forward_hooks(net) == 0


def test_module_called_twice_keeps_all_calls_last_in_outputs() -> None:
    torch.manual_seed(0)
    model = SharedNet()
    x = torch.randn(3, 4)
    with Capture(model, ["shared", "shared:input"]) as cap:
        model(x)
    first = model.shared(x)
    second = model.shared(torch.tanh(first))
    calls = cap.calls["shared:output"]
    assert len(calls) == 2
    torch.testing.assert_close(calls[0], first, rtol=0, atol=0)
    torch.testing.assert_close(calls[1], second, rtol=0, atol=0)
    assert cap.outputs["shared:output"] is calls[-1] and cap["shared"] is calls[-1]
    assert cap.calls["shared:input"][0] is x
    torch.testing.assert_close(cap["shared:input"], torch.tanh(first), rtol=0, atol=0)


def test_reenter_clears_and_clear_drops_references(net: Net, x: torch.Tensor) -> None:
    cap = Capture(net, ["blocks.0"], detach=True)
    with cap:
        net(x)
        net(x)
    assert len(cap.calls["blocks.0:output"]) == 2
    with cap:  # entering starts a fresh capture
        net(x)
    assert len(cap.calls["blocks.0:output"]) == 1

    ref = weakref.ref(cap["blocks.0"])
    assert ref() is not None
    cap.clear()
    gc.collect()
    assert ref() is None
    assert cap.outputs == {}
    with pytest.raises(CaptureError, match="not called"):
        cap["blocks.0"]


def test_missing_key_error_names_captured_keys(net: Net, x: torch.Tensor) -> None:
    with Capture(net, ["stem"]) as cap:
        net(x)
    with pytest.raises(CaptureError, match=r"'head:output' was not requested.*stem:output"):
        cap["head"]
    with pytest.raises(CaptureError):
        cap["stem:weird"]


def test_unknown_name_suggests_close_names(net: Net) -> None:
    with pytest.raises(CaptureError) as info:
        Capture(net, ["blocks.0.nrom"])
    msg = str(info.value)
    assert "'blocks.0.nrom'" in msg and "'blocks.0.norm'" in msg and "named modules" in msg
    assert all_forward_hooks(net) == 0
    with pytest.raises(CaptureError, match="Top-level children"):
        Capture(net, ["zzzzzzzzzzzzzzzzzz"])


def test_first_tensor_rules() -> None:
    t = torch.ones(2)
    u = torch.zeros(3)
    assert first_tensor(t) is t
    assert first_tensor((t, u)) is t
    assert first_tensor([None, (u, t)]) is u
    assert first_tensor({"a": 1, "b": u}) is u
    out = transformers.modeling_outputs.CausalLMOutput(loss=torch.tensor(1.0), logits=t)
    assert first_tensor(out) is t  # logits, not loss
    assert first_tensor(transformers.modeling_outputs.BaseModelOutput(last_hidden_state=u)) is u
    assert first_tensor(transformers.modeling_outputs.CausalLMOutput(loss=u)) is u
    with pytest.raises(CaptureError, match="tuple"):
        first_tensor((None, "x"))
    with pytest.raises(CaptureError, match="int"):
        first_tensor(3)


def test_capture_forward(net: Net, x: torch.Tensor) -> None:
    out, feats = capture_forward(net, ["blocks.1", "head:input"], lambda: net(x), detach=True)
    torch.testing.assert_close(out, net(x))
    assert set(feats) == {"blocks.1:output", "head:input"}
    torch.testing.assert_close(feats["blocks.1:output"], feats["head:input"], rtol=0, atol=0)
    assert not feats["blocks.1:output"].requires_grad
    assert all_forward_hooks(net) == 0


def test_wrapped_model_accepts_unwrapped_names(net: Net, x: torch.Tensor) -> None:
    wrapped = Wrapper(net)
    with Capture(wrapped, ["blocks.0", "module.stem", "head:input", ""]) as cap:
        out = wrapped(x)
    torch.testing.assert_close(cap["blocks.0"], net.blocks[0](net.stem(x)), rtol=0, atol=0)
    torch.testing.assert_close(cap["module.stem"], net.stem(x), rtol=0, atol=0)
    assert cap[""] is out
    assert all_forward_hooks(wrapped) == 0
    # the other way round: a "module."-prefixed name for an unwrapped model
    with Capture(net, ["module.stem"]) as cap:
        net(x)
    torch.testing.assert_close(cap["module.stem"], net.stem(x), rtol=0, atol=0)
    with pytest.raises(CaptureError, match="'blocks.0.norm'"):
        Capture(wrapped, ["blocks.0.nrom"])


def test_list_modules_names_are_accepted(net: Net, x: torch.Tensor) -> None:
    listed = list_modules(net)
    assert listed[0] == ("", "Net")
    assert ("blocks.1.ff.0", "Linear") in listed
    names = [n for n, _ in listed]
    assert len(names) == len(list(net.named_modules()))
    with Capture(net, names) as cap:
        net(x)
    assert set(cap.outputs) == {f"{n}:output" for n in names} - {"blocks:output"}  # ModuleList never called
    shallow = list_modules(net, max_depth=1)
    assert [n for n, _ in shallow] == ["", "stem", "blocks", "head"]
    assert list_modules(net, max_depth=0) == [("", "Net")]


# ---------------------------------------------------------------------------------------------
# Hugging Face models (tiny, random, built from configs)
# ---------------------------------------------------------------------------------------------


def test_gpt2_block_outputs_match_hidden_states() -> None:
    model = tiny_gpt2()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    hooks_before = all_forward_hooks(model)
    specs = ["transformer.h.0", "transformer.h.1", "transformer.h.0:input", "transformer.ln_f", "transformer.h.0.attn", ""]
    with Capture(model, specs) as cap:
        out = model(ids, output_hidden_states=True, output_attentions=True)
    # HF v5 installs its own (permanent) output-recording hooks lazily: ours are gone, theirs stay.
    hf_hooks = all_forward_hooks(model) - hooks_before
    with Capture(model, specs):
        assert all_forward_hooks(model) == hooks_before + hf_hooks + len(specs)
    assert all_forward_hooks(model) == hooks_before + hf_hooks

    hs = out.hidden_states
    assert len(hs) == 3
    # v5: GPT2Block returns a plain tensor
    assert isinstance(cap["transformer.h.0"], torch.Tensor)
    torch.testing.assert_close(first_tensor(cap["transformer.h.0"]), hs[1], rtol=0, atol=0)
    # The last hidden state has ln_f applied: it equals ln_f's output, not block 1's output.
    torch.testing.assert_close(cap["transformer.ln_f"], hs[2], rtol=0, atol=0)
    torch.testing.assert_close(model.transformer.ln_f(cap["transformer.h.1"]), hs[2], rtol=0, atol=0)
    assert not torch.allclose(cap["transformer.h.1"], hs[2])
    # Block input: (hidden_states, cache, mask, encoder_hidden_states) positionally -> tuple
    block_in = cap["transformer.h.0:input"]
    assert isinstance(block_in, tuple) and len(block_in) >= 2
    torch.testing.assert_close(first_tensor(block_in), hs[0], rtol=0, atol=0)
    # Attention returns (attn_output, attn_weights); eager attention gives the weights.
    attn = cap["transformer.h.0.attn"]
    assert isinstance(attn, tuple) and len(attn) == 2
    torch.testing.assert_close(attn[1], out.attentions[0], rtol=0, atol=0)
    assert first_tensor(attn).shape == (2, 7, 16)
    # The whole model: ModelOutput, first tensor = logits
    assert cap[""] is out and first_tensor(out) is out.logits


def test_gpt2_teacher_detach_and_student_grad() -> None:
    model = tiny_gpt2()
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), Capture(model, ["transformer.h.1", "transformer.h.1.attn", ""], detach=True) as teacher:
        model(ids)
    assert not teacher["transformer.h.1"].requires_grad
    assert not teacher[""].logits.requires_grad
    assert isinstance(teacher[""], transformers.modeling_outputs.CausalLMOutputWithCrossAttentions)
    # eager attention returns weights even without output_attentions in v5
    assert teacher["transformer.h.1.attn"][1] is not None

    with Capture(model, ["transformer.h.1"]) as student:
        model(ids)
    feat = first_tensor(student["transformer.h.1"])
    assert feat.requires_grad
    (feat - teacher["transformer.h.1"]).pow(2).mean().backward()  # zero loss but a real graph
    assert model.transformer.wte.weight.grad is not None


def test_bert_layer_output_matches_hidden_states() -> None:
    model = tiny_bert()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(2))
    with Capture(model, ["encoder.layer.0", "encoder.layer.1", "encoder.layer.0.attention.self", "encoder"]) as cap:
        out = model(ids, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(first_tensor(cap["encoder.layer.0"]), out.hidden_states[1], rtol=0, atol=0)
    # BERT has no final norm: the last layer output is the last hidden state too
    torch.testing.assert_close(cap["encoder.layer.1"], out.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(cap["encoder.layer.0.attention.self"][1], out.attentions[0], rtol=0, atol=0)
    torch.testing.assert_close(first_tensor(cap["encoder"]), out.last_hidden_state, rtol=0, atol=0)


def test_hf_list_modules_and_wrapped_hf_model() -> None:
    model = tiny_gpt2()
    names = [n for n, _ in list_modules(model)]
    assert "transformer.h.0.attn" in names and ("transformer.h.0", "GPT2Block") in list_modules(model)
    ids = torch.randint(0, 50, (1, 4), generator=torch.Generator().manual_seed(3))
    wrapped = Wrapper(model)
    with Capture(wrapped, ["transformer.h.0"]) as cap:
        wrapped(ids)
    with Capture(model, ["transformer.h.0"]) as direct:
        model(ids)
    torch.testing.assert_close(cap["transformer.h.0"], direct["transformer.h.0"], rtol=0, atol=0)
    with pytest.raises(CaptureError, match="'transformer.h.0.attn'"):
        Capture(wrapped, ["transformer.h.0.atn"])
