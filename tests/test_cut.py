"""Students cut from a Hugging Face teacher: equal to the teacher when every layer is kept, and to a hand-written
copy of the chosen layers (narrower MLPs, fewer heads) otherwise."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _hub import lay_out, offline_hub  # noqa: E402,F401  (offline_hub is a fixture)

from ktransfer.models import MODELS  # noqa: E402
from ktransfer.models.cut import choose_layers, cut_student, cut_student_with_record  # noqa: E402
from ktransfer.registry import ConfigError  # noqa: E402

IDS = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM._from_config(config, attn_implementation="eager").eval()


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification._from_config(config, attn_implementation="eager").eval()


def tiny_marian() -> nn.Module:
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    config = MarianConfig(vocab_size=50, d_model=16, encoder_layers=3, decoder_layers=3, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                          pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    return MarianMTModel._from_config(config, attn_implementation="eager").eval()


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_embd=16, n_layer=3, n_head=2, n_positions=32, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel._from_config(config, attn_implementation="eager").eval()


def outputs(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=IDS, decoder_input_ids=IDS[:, :4]).logits
        return model(input_ids=IDS).logits


def renumbered(layers: list[nn.Module]) -> nn.ModuleList:
    for k, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = k
    return nn.ModuleList(layers)


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert, tiny_marian, tiny_gpt2], ids=["llama", "bert", "marian", "gpt2"])
def test_keeping_every_layer_reproduces_the_teacher_exactly(make: Any) -> None:
    teacher = make()
    student = cut_student(teacher)
    assert torch.equal(outputs(student), outputs(teacher))
    assert all(p is not q for p, q in zip(student.parameters(), teacher.parameters()))  # copied, not shared


def test_a_llama_cut_is_a_hand_written_copy_of_its_layers_and_generates_alike() -> None:
    teacher = tiny_llama()
    student, record = cut_student_with_record(teacher, layers=[0, 3])
    ref = copy.deepcopy(teacher)
    ref.model.layers = renumbered([ref.model.layers[0], ref.model.layers[3]])
    ref.config.num_hidden_layers = 2
    assert torch.equal(outputs(student), outputs(ref))
    assert not torch.equal(outputs(student), outputs(teacher))
    assert torch.equal(student.generate(IDS[:1], max_new_tokens=4, do_sample=False),
                       ref.generate(IDS[:1], max_new_tokens=4, do_sample=False))  # the KV cache has 2 layers
    assert record["layers"] == {"layers": [0, 3]} and student.config.ktransfer_cut["layers"] == {"layers": [0, 3]}
    assert student.config.num_hidden_layers == 2 and len(teacher.model.layers) == 4  # the teacher is unchanged


def test_a_bert_cut_is_a_hand_written_copy_of_its_layers() -> None:
    teacher = tiny_bert()
    student = cut_student(teacher, every=2)  # from the top: layers 1 and 3
    ref = copy.deepcopy(teacher)
    ref.bert.encoder.layer = renumbered([ref.bert.encoder.layer[1], ref.bert.encoder.layer[3]])
    ref.config.num_hidden_layers = 2
    assert torch.equal(outputs(student), outputs(ref)) and student.config.ktransfer_cut["layers"] == {"layers": [1, 3]}


def test_a_marian_cut_keeps_its_encoder_and_decoder_layers_apart() -> None:
    teacher = tiny_marian()
    student = cut_student(teacher, encoder_layers=[0, 2], decoder_layers=[1])
    ref = copy.deepcopy(teacher)
    ref.model.encoder.layers = renumbered([ref.model.encoder.layers[0], ref.model.encoder.layers[2]])
    ref.model.decoder.layers = renumbered([ref.model.decoder.layers[1]])
    ref.config.encoder_layers, ref.config.decoder_layers = 2, 1
    assert torch.equal(outputs(student), outputs(ref))
    assert student.config.encoder_layers == 2 and student.config.decoder_layers == 1
    assert torch.equal(student.generate(IDS[:1], max_new_tokens=3, do_sample=False),
                       ref.generate(IDS[:1], max_new_tokens=3, do_sample=False))
    both = cut_student(teacher, last=1)  # one choice for both stacks
    assert both.config.ktransfer_cut["layers"] == {"encoder": [2], "decoder": [2]}


def test_narrower_mlps_keep_the_units_of_largest_weight_norm_or_the_first() -> None:
    teacher = tiny_llama()
    student, record = cut_student_with_record(teacher, layers=[1, 2], intermediate_size=8, keep="norm")
    ref = copy.deepcopy(teacher)
    ref.model.layers = renumbered([ref.model.layers[1], ref.model.layers[2]])
    ref.config.num_hidden_layers = 2
    for k, layer in enumerate(ref.model.layers):
        mlp = layer.mlp
        score = (mlp.gate_proj.weight.double().norm(dim=1) * mlp.up_proj.weight.double().norm(dim=1)
                 * mlp.down_proj.weight.double().norm(dim=0))
        units = sorted(torch.argsort(score, descending=True)[:8].tolist())
        assert record["mlp_units"]["layers"][k] == units
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            setattr(mlp, name, nn.Linear(16, 8, bias=False))
            getattr(mlp, name).weight.data = old.weight.data[units].clone()
        down = nn.Linear(8, 16, bias=False)
        down.weight.data = mlp.down_proj.weight.data[:, units].clone()
        mlp.down_proj = down
    assert torch.equal(outputs(student), outputs(ref))
    assert student.config.intermediate_size == 8
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(student.config).load_state_dict(student.state_dict())  # its config describes its shapes
    bert = cut_student(tiny_bert(), intermediate_size=5, keep="first")
    assert bert.bert.encoder.layer[0].intermediate.dense.weight.shape == (5, 16)
    assert torch.equal(bert.bert.encoder.layer[2].output.dense.weight,
                       tiny_bert().bert.encoder.layer[2].output.dense.weight[:, :5])


def test_fewer_heads_keep_query_heads_per_key_value_head_and_bert_heads() -> None:
    teacher = tiny_llama()  # 4 query heads over 2 key/value heads, head size 4
    student, record = cut_student_with_record(teacher, num_heads=2, keep="first")
    assert record["heads"]["layers"] == [[0, 2]] * 4  # the first query head of each group
    ref = copy.deepcopy(teacher)
    rows = torch.cat([torch.arange(0, 4), torch.arange(8, 12)])
    for layer in ref.model.layers:
        attn = layer.self_attn
        q, o = nn.Linear(16, 8, bias=False), nn.Linear(8, 16, bias=False)
        q.weight.data, o.weight.data = attn.q_proj.weight.data[rows].clone(), attn.o_proj.weight.data[:, rows].clone()
        attn.q_proj, attn.o_proj, attn.num_key_value_groups = q, o, 1
    assert torch.equal(outputs(student), outputs(ref))
    assert student.config.num_attention_heads == 2 and student.config.head_dim == 4
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(student.config).load_state_dict(student.state_dict())
    with pytest.raises(ValueError, match="num_heads must be a multiple of the teacher's 2 key/value heads"):
        cut_student(teacher, num_heads=3)
    bert_teacher = tiny_bert()
    bert = cut_student(bert_teacher, num_heads=1, keep="first")
    ref_bert = copy.deepcopy(bert_teacher)
    for layer in ref_bert.bert.encoder.layer:
        attn, out = layer.attention.self, layer.attention.output
        for name in ("query", "key", "value"):
            lin = nn.Linear(16, 8)
            lin.weight.data = getattr(attn, name).weight.data[:8].clone()
            lin.bias.data = getattr(attn, name).bias.data[:8].clone()
            setattr(attn, name, lin)
        dense = nn.Linear(8, 16)
        dense.weight.data, dense.bias.data = out.dense.weight.data[:, :8].clone(), out.dense.bias.data.clone()
        out.dense = dense
        attn.num_attention_heads, attn.all_head_size = 1, 8
    assert torch.equal(outputs(bert), outputs(ref_bert))


def test_shared_embeddings_are_the_teachers_own_tensors() -> None:
    teacher = tiny_llama()
    student = cut_student(teacher, first=1, share_embeddings=True)
    assert student.get_input_embeddings().weight is teacher.get_input_embeddings().weight
    assert student.get_output_embeddings().weight is teacher.get_output_embeddings().weight
    assert student.model.norm.weight is not teacher.model.norm.weight


def test_a_layer_the_teacher_lacks_is_named_with_the_teachers_layers() -> None:
    with pytest.raises(ValueError, match=r"^layers: the teacher has no layer 4; its 4 layers \(model.layers\) are "
                                         r"0 to 3$"):
        cut_student(tiny_llama(), layers=[0, 4])
    with pytest.raises(ValueError, match=r"decoder_layers: the teacher has no layer 3; its 3 layers "
                                         r"\(model.decoder.layers\) are 0 to 2"):
        cut_student(tiny_marian(), decoder_layers=[3])
    with pytest.raises(ValueError, match="give one of layers, every, or first/last; got layers, every"):
        choose_layers(4, layers=[0], every=2)
    assert choose_layers(6, every=2) == [1, 3, 5] and choose_layers(6, first=2, last=1) == [0, 1, 5]


def test_hf_cut_cuts_a_teacher_named_by_hub_id(tmp_path: Path, offline_hub: Path) -> None:
    teacher = tiny_llama()
    teacher.save_pretrained(tmp_path / "llama")
    lay_out(tmp_path / "llama", offline_hub, "acme/tiny-llama")
    student = MODELS.build("hf_cut", {"teacher": "acme/tiny-llama", "layers": [0, 3]})
    assert torch.equal(outputs(student), outputs(cut_student(teacher, layers=[0, 3])))
    assert student.config.ktransfer_cut["teacher"] == "acme/tiny-llama"
    with pytest.raises(ConfigError, match=r"student: layers: the teacher has no layer 7; its 4 layers"):
        MODELS.build("hf_cut", {"teacher": "acme/tiny-llama", "layers": [7]}, "student")


def _smollm2_folder() -> Path | None:
    from ktransfer.cache import cache_root

    try:
        from ktransfer.models.causal import _dequantised_key

        folder = cache_root() / _dequantised_key()
    except ImportError:
        return None
    return folder if (folder / "model.safetensors").is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_folder() is None, reason="SmolLM2 is not prepared: run `ktransfer data prepare smollm2`")
def test_the_real_smollm2_cut_by_hub_id_keeps_its_logits_with_every_layer(offline_hub: Path) -> None:
    folder = _smollm2_folder()
    assert folder is not None
    lay_out(folder, offline_hub, "HuggingFaceTB/SmolLM2-135M-Instruct", link=True)
    teacher = MODELS.build("hf_pretrained", {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "dtype": "float32"})
    assert torch.equal(outputs(cut_student(teacher)), outputs(teacher))
    two = MODELS.build("hf_cut", {"teacher": "HuggingFaceTB/SmolLM2-135M-Instruct", "layers": [0, 29]})
    assert two.config.num_hidden_layers == 2 and two.ktransfer_tokenizer.startswith(str(offline_hub))
