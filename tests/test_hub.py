"""Pretrained models named by hub id or local folder, read offline from a Hugging Face cache folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _hub import lay_out, offline_hub  # noqa: E402,F401  (offline_hub is a fixture)

from ktransfer.config import RunConfig  # noqa: E402
from ktransfer.models import MODELS  # noqa: E402
from ktransfer.sources import HubSourceError, is_hub_id, resolve_source  # noqa: E402


def tiny_gpt2(seed: int, folder: Path) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=30, n_positions=16, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel._from_config(config, attn_implementation="eager").eval()  # as hf_pretrained loads it
    model.save_pretrained(folder)
    return model


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(0))


def test_a_hub_id_resolves_offline_from_the_cache_at_its_revision_and_dtype(tmp_path: Path, offline_hub: Path) -> None:
    main, v1 = tiny_gpt2(0, tmp_path / "main"), tiny_gpt2(1, tmp_path / "v1")
    commit = lay_out(tmp_path / "main", offline_hub, "acme/tiny-gpt2")
    other = lay_out(tmp_path / "v1", offline_hub, "acme/tiny-gpt2", branch="v1")
    loaded = MODELS.build("hf_pretrained", {"model": "acme/tiny-gpt2"})
    assert torch.equal(logits(loaded, IDS), logits(main, IDS))
    assert loaded.ktransfer_source == {"model": "acme/tiny-gpt2", "revision": None, "commit": commit, "subfolder": None}
    by_branch = MODELS.build("hf_pretrained", {"model": "acme/tiny-gpt2", "revision": "v1"})
    by_commit = MODELS.build("hf_pretrained", {"model": "acme/tiny-gpt2", "revision": other})
    assert torch.equal(logits(by_branch, IDS), logits(v1, IDS)) and torch.equal(logits(by_commit, IDS), logits(v1, IDS))
    half = MODELS.build("hf_pretrained", {"model": "acme/tiny-gpt2", "dtype": "bfloat16"})
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_a_hub_id_missing_from_the_cache_offline_is_one_line_naming_it(tmp_path: Path, offline_hub: Path) -> None:
    with pytest.raises(HubSourceError) as caught:
        MODELS.build("hf_pretrained", {"model": "acme/not-there"})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("hf_pretrained: 'acme/not-there' is not in the local Hugging Face cache "
                              f"(HF_HUB_CACHE={offline_hub})")
    assert "HF_HUB_OFFLINE=1 forbids downloading it" in message
    tiny_gpt2(0, tmp_path / "m")
    lay_out(tmp_path / "m", offline_hub, "acme/tiny-gpt2")
    with pytest.raises(HubSourceError, match=r"'acme/tiny-gpt2' at revision 'v9' is not in the local .* \(the cache "
                                             r"holds its revisions: main, [0-9a-f]{40}\)"):
        MODELS.build("hf_pretrained", {"model": "acme/tiny-gpt2", "revision": "v9"})


def test_a_local_folder_still_loads_and_path_is_a_deprecated_name_of_model(tmp_path: Path) -> None:
    original = tiny_gpt2(0, tmp_path / "tiny")
    assert torch.equal(logits(MODELS.build("hf_pretrained", {"model": str(tmp_path / "tiny")}), IDS),
                       logits(original, IDS))
    with pytest.warns(FutureWarning, match="path is deprecated; name the model with model:"):
        old = MODELS.build("hf_pretrained", {"path": str(tmp_path / "tiny")})
    assert torch.equal(logits(old, IDS), logits(original, IDS))
    with pytest.raises(FileNotFoundError, match="hf_pretrained: model directory not found: /no/such/model"):
        MODELS.build("hf_pretrained", {"model": "/no/such/model"})


def test_hub_ids_are_not_turned_into_paths_but_existing_local_folders_are(tmp_path: Path) -> None:
    assert is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") and is_hub_id("gpt2")
    assert not any(map(is_hub_id, ("./m", "/abs/m", "~/m", "a/b/c", "../m", "-bad", "org/name.")))
    (tmp_path / "models" / "t").mkdir(parents=True)
    assert resolve_source("models/t", tmp_path) == str(tmp_path / "models" / "t")
    assert resolve_source("acme/tiny", tmp_path) == "acme/tiny"
    assert resolve_source("./acme/tiny", tmp_path) == str(tmp_path / "acme" / "tiny")
    config = {"task": "causal_lm", "data": {"name": "digits"}, "student": {"builder": "mlp"},
              "teacher": {"builder": "hf_pretrained", "model": "acme/tiny"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert RunConfig.from_yaml(tmp_path / "run.yaml").teacher["model"] == "acme/tiny"
    config["teacher"]["model"] = "models/t"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert RunConfig.from_yaml(tmp_path / "run.yaml").teacher["model"] == str(tmp_path / "models" / "t")


def test_the_content_key_of_a_hub_model_is_its_snapshot_commit(tmp_path: Path, offline_hub: Path) -> None:
    tiny_gpt2(0, tmp_path / "a")
    tiny_gpt2(1, tmp_path / "b")
    first = lay_out(tmp_path / "a", offline_hub, "acme/tiny-gpt2")
    cfg = RunConfig.from_dict({"data": {"name": "digits"}, "student": {"builder": "mlp"},
                               "teacher": {"builder": "hf_pretrained", "model": "acme/tiny-gpt2"}})
    assert cfg.input_digests()["teacher.model"] == f"hub:model:acme/tiny-gpt2@{first}"
    moved = lay_out(tmp_path / "b", offline_hub, "acme/tiny-gpt2")  # main now names another commit
    assert moved != first and cfg.input_digests()["teacher.model"] == f"hub:model:acme/tiny-gpt2@{moved}"
    pinned = RunConfig.from_dict({**cfg.to_dict(), "teacher": {"builder": "hf_pretrained", "model": "acme/tiny-gpt2",
                                                               "revision": first}})
    assert pinned.input_digests()["teacher.model"] == f"hub:model:acme/tiny-gpt2@{first}"
    missing = RunConfig.from_dict({**cfg.to_dict(), "teacher": {"builder": "hf_pretrained", "model": "acme/gone"}})
    with pytest.raises(HubSourceError, match="'acme/gone' is not in the local Hugging Face cache"):
        missing.input_digests()


def _minilm_prepared() -> Path | None:
    try:
        from ktransfer.data.text import minilm_dir

        return minilm_dir()
    except (FileNotFoundError, OSError):
        return None


@pytest.mark.skipif(_minilm_prepared() is None, reason="MiniLM is not prepared: run `ktransfer data prepare minilm`")
def test_the_real_minilm_loads_by_its_hub_id_offline(offline_hub: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = _minilm_prepared()
    assert folder is not None
    lay_out(folder, offline_hub, "sentence-transformers/all-MiniLM-L6-v2", link=True)
    by_id = MODELS.build("hf_pretrained", {"model": "sentence-transformers/all-MiniLM-L6-v2", "auto_class": "AutoModel"})
    local = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    batch = AutoTokenizer.from_pretrained(str(folder))(["a pretrained encoder, read by its hub id"], return_tensors="pt")
    by_id.eval()
    with torch.no_grad():
        assert torch.equal(by_id(**batch).last_hidden_state, local(**batch).last_hidden_state)
    assert by_id.ktransfer_tokenizer.startswith(str(offline_hub))


def test_minilm_and_its_students_take_a_hub_id(tmp_path: Path, offline_hub: Path) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(tmp_path / "bert")
    lay_out(tmp_path / "bert", offline_hub, "acme/tiny-bert")
    teacher = MODELS.build("minilm", {"num_classes": 3, "path": "acme/tiny-bert"})
    student = MODELS.build("minilm_student", {"num_classes": 3, "num_layers": 2, "path": "acme/tiny-bert"})
    assert torch.equal(student.bert.encoder.layer[1].output.dense.weight, teacher.bert.encoder.layer[3].output.dense.weight)
    with pytest.raises(HubSourceError, match="^minilm: 'acme/other' is not in the local Hugging Face cache"):
        MODELS.build("minilm", {"num_classes": 3, "path": "acme/other"})
