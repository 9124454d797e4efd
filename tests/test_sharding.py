"""The student and the frozen teacher sharded across 2 CPU processes (FSDP2, gloo) learn what one process learns.

Sharded runs are launched with torchrun (`_fsdp_worker.py`); the references run here, in one
process, where sharding has nothing to shard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ktransfer.checkpoint import load_weights, read_manifest
from ktransfer.engine import sharding
from ktransfer.engine.sharding import ShardingError, layer_class_names, unservable_features
from ktransfer.sequence import TargetsStage
from ktransfer.train import TrainConfig, WorldSizeError

sys.path.insert(0, str(Path(__file__).parent))
import _fsdp_worker as worker  # noqa: E402
import _launch  # noqa: E402
from test_causal import corpus  # noqa: E402, F401  (a fixture: a word-level text corpus and its tokenizer)
from test_cross_tokenizer import _minilm_folder, corpus_file, xtok_config  # noqa: E402, F401  (corpus_file: a fixture)

WORKER = Path(__file__).parent / "_fsdp_worker.py"


def torchrun(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*_launch.torchrun(), str(WORKER), *args],
                          capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_close_weights(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> None:
    """Every tensor within 1e-5 of its norm (plus 1e-8 for tensors whose gradient is zero, e.g. key biases)."""
    assert one.keys() == two.keys()
    for key in one:
        assert float((one[key] - two[key]).norm()) <= 1e-5 * float(one[key].norm()) + 1e-8, key


def one_process(model: str, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    worker.distiller(model, run_dir, optimizer="sgd").fit()  # train.sharding=fsdp, one process
    assert "one process, nothing to shard; training unsharded" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sharded_causal_lm_learns_what_one_process_learns_and_holds_half_the_teacher(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = torchrun("run", str(tmp_path / "two"), "causal", "sgd")
    assert "sharded across 2 processes (FSDP2): student in 2 x GPT2Block, teacher in 3 x GPT2Block" in proc.stderr
    one_process("causal", tmp_path / "one", capsys)
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert_close_weights(load_file(str(tmp_path / "one" / "final" / "model.safetensors")), two)
    assert any(float((two[k] - v).abs().max()) > 1e-3 for k, v in worker.gpt2(0, 2, 16).state_dict().items()
               if k in two)  # it did train
    # final/ is one ordinary file that loads into the bare architecture (tied head included)
    bare = load_weights(worker.gpt2(0, 2, 16), tmp_path / "two" / "final" / "model.safetensors")
    assert bare.lm_head.weight is bare.transformer.wte.weight
    assert torch.equal(bare.transformer.wte.weight, two["transformer.wte.weight"])
    teacher_bytes = sum(p.numel() * p.element_size() for p in worker.gpt2(1, 3, 32).parameters())
    memory = [json.loads((tmp_path / "two" / f"memory-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(m["teacher_sharded"] for m in memory)
    assert sum(m["teacher"] for m in memory) == teacher_bytes  # each parameter held once, split in two
    assert all(abs(m["teacher"] - teacher_bytes / 2) <= 0.02 * teacher_bytes for m in memory)


@pytest.mark.slow
def test_a_sharded_encoder_with_feature_and_attention_terms_learns_what_one_process_learns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = torchrun("run", str(tmp_path / "two"), "encoder", "sgd")
    assert "student in 3 x BertEmbeddings/BertLayer" in proc.stderr
    one_process("encoder", tmp_path / "one", capsys)
    for name in ("model.safetensors", "terms.safetensors"):  # the student, and the feature projection
        assert_close_weights(load_file(str(tmp_path / "one" / "final" / name)),
                             load_file(str(tmp_path / "two" / "final" / name)))
    log = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    terms = [r["terms"] for r in log if r["split"] == "train"]
    assert len(terms) == 10 and all(t["feature"] > 0 and t["attention"] > 0 for t in terms)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sharded", "unsharded"])
def test_a_two_process_run_killed_and_resumed_ends_bit_identical_to_the_uninterrupted_one(
        tmp_path: Path, mode: str) -> None:
    """AdamW state on the shards, the student's dropout (every process's RNG), a resume in mid-epoch 1 (under
    several processes the resumed loader once kept epoch 0's order; data parallel runs are checked for it too)."""
    flags = ["causal", "dropout"] + (["unsharded"] if mode == "unsharded" else [])
    torchrun("killed_and_full", str(tmp_path), *flags)
    ckpt = tmp_path / "killed" / "checkpoints" / "step-00000005"
    assert not (tmp_path / "killed" / "final").exists()
    manifest = read_manifest(ckpt)
    assert manifest["world_size"] == 2
    if mode == "sharded":
        assert (ckpt / "shards" / "rank-00000.pt").exists() and (ckpt / "shards" / "rank-00001.pt").exists()
        assert manifest["sharding"] == "fsdp"
        refusal = "sharded across 2 processes and this run has 1"
    else:
        assert manifest["sharding"] == "none" and not (ckpt / "shards").exists()
        refusal = "written by 2 process[(]es[)] and this run has 1"
    train = {"sharding": "none"} if mode == "unsharded" else {}
    with pytest.raises(WorldSizeError, match=refusal):
        worker.distiller("causal", tmp_path / "killed", 0.1, **train).fit(resume=True)
    proc = torchrun("resume", str(tmp_path), *flags)
    assert "resuming from checkpoint" in proc.stderr and "(step 5 of 10)" in proc.stderr
    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    logs = [[json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("full", "killed")]
    losses = [[x["loss"] for x in log if x["split"] == "train"] for log in logs]
    assert losses[0] == losses[1] and len(losses[0]) == 10
    assert [x["epoch"] for x in logs[0] if x["split"] == "train"][4] == 1  # step 5 is inside epoch 1


@pytest.mark.slow
def test_a_nan_on_one_process_stops_every_sharded_process_at_the_same_step(tmp_path: Path) -> None:
    proc = torchrun("nan", str(tmp_path), check=False)
    assert proc.returncode != 0
    for rank in (0, 1):
        step, message = (tmp_path / f"rank{rank}.txt").read_text().split("\n", 1)
        assert step == "3" and "at step 3" in message and "nan_on_rank1=nan" in message
        assert "whether bf16 overflows" in message


@pytest.mark.slow
def test_a_sharded_run_from_yaml_under_torchrun_evaluates_uneven_shards_and_matches_one_process(
        corpus: dict[str, Path], tmp_path: Path) -> None:
    """The CLI under torchrun: Llama student and teacher sharded, a validation split that does not divide
    evenly (one process evaluates one batch more), best/ and final/ gathered into ordinary files."""
    import yaml

    from ktransfer.config import RunConfig
    from ktransfer.runner import load_data, run

    config = {
        "task": "causal_lm",
        "data": {"name": "text_corpus", "path": str(corpus["lines"]), "tokenizer": str(corpus["tokenizer"]),
                 "max_length": 8, "val_fraction": 0.15, "test_fraction": 0.2},
        "teacher": {"builder": "llama_student", "hidden_size": 32, "num_layers": 2, "num_heads": 2},
        "student": {"builder": "llama_student", "hidden_size": 16, "num_layers": 2, "num_heads": 2},
        "knowledge": [{"type": "response", "temperature": 2.0}],
        "optim": {"name": "sgd", "lr": 0.5},
        "train": {"max_steps": 4, "batch_size": 4, "eval_batch_size": 3, "eval_every": 2, "metric": "perplexity",
                  "sharding": "fsdp"},
    }
    assert len(load_data(RunConfig.from_dict(config)).val) == 7  # 4 + 3 examples: 2 batches of 3 and 1
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = subprocess.run([*_launch.torchrun(), "-m", "ktransfer.cli", "run", str(cfg), "--run-dir",
                           str(tmp_path / "two"), "--no-progress"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "teacher in 2 x LlamaDecoderLayer" in proc.stderr
    run(RunConfig.from_dict(config), tmp_path / "one", progress=False)
    summaries = [json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two")]
    assert summaries[1]["world_size"] == 2
    for key, value in summaries[0]["final_val"].items():
        assert summaries[1]["final_val"][key] == pytest.approx(value, rel=1e-5), key
    for which in ("final", "best"):
        assert_close_weights(load_file(str(tmp_path / "one" / which / "model.safetensors")),
                             load_file(str(tmp_path / "two" / which / "model.safetensors")))


@pytest.mark.slow
def test_a_sharded_run_sampling_the_students_targets_learns_what_the_data_parallel_run_learns(
        tmp_path: Path) -> None:
    """Half the targets sampled from the student (an on-policy backward-KL term), 10 steps, 2 processes:
    sharded and data parallel end with the same weights. The reference is the 2-process data-parallel
    run, not one process: each process samples from its own seed, so one process would draw other samples."""
    proc = torchrun("compare", str(tmp_path), "onpolicy", "sgd")
    assert "sharded across 2 processes (FSDP2): student in 2 x GPT2Block, teacher in 3 x GPT2Block" in proc.stderr
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert_close_weights(load_file(str(tmp_path / "dp" / "final" / "model.safetensors")), two)
    assert any(float((two[k] - v).abs().max()) > 1e-3 for k, v in worker.gpt2(0, 2, 16).state_dict().items()
               if k in two)  # it did train
    log = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["terms"]["on_policy"] > 0 for r in log if r["split"] == "train") >= 5  # student samples were drawn


@pytest.mark.slow
def test_a_sharded_run_sampling_teacher_mixed_with_a_greedy_baseline_learns_what_the_data_parallel_run_learns(
        tmp_path: Path) -> None:
    """Half the targets sampled from the student mixed with the teacher (teacher_mix: the teacher runs inside
    generate's token selection, so no process stops early), a REINFORCE term whose self-critic baseline scores
    the student's greedy output (as many scoring passes on every process), 10 steps: sharded and data parallel
    end with the same weights."""
    proc = torchrun("compare", str(tmp_path), "mixed", "sgd")
    assert "sharded across 2 processes (FSDP2): student in 2 x GPT2Block, teacher in 3 x GPT2Block" in proc.stderr
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert_close_weights(load_file(str(tmp_path / "dp" / "final" / "model.safetensors")), two)
    assert any(float((two[k] - v).abs().max()) > 1e-3 for k, v in worker.gpt2(0, 2, 16).state_dict().items()
               if k in two)  # it did train
    logs = [[json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("two", "dp")]
    losses = [[r["terms"]["reinforce"] for r in log if r["split"] == "train"] for log in logs]
    assert sum(x != 0 for x in losses[0]) >= 5 and losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_a_sharded_seq2seq_run_sampling_the_students_targets_learns_what_the_data_parallel_run_learns(
        tmp_path: Path) -> None:
    """T5 student and teacher, targets from the dataset, the teacher's and the student's generations: generate
    runs the encoder apart from the model's forward, so a sharded model gathers its shared embeddings around
    all of generate. Data parallel reference, as above."""
    proc = torchrun("compare", str(tmp_path), "seq2seq", "sgd")
    assert "student in 4 x T5Block, teacher in 6 x T5Block" in proc.stderr
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert_close_weights(load_file(str(tmp_path / "dp" / "final" / "model.safetensors")), two)
    assert any(float((two[k] - v).abs().max()) > 1e-3 for k, v in worker.t5(0, 2, 16).state_dict().items()
               if k in two)  # it did train


@pytest.mark.slow
def test_sharded_generation_steps_on_while_another_process_still_samples(tmp_path: Path) -> None:
    """Rank 0's greedy samples all end at their first token, rank 1's run to max_new_tokens; then rank 0 has
    nothing to generate. Without stepping in sync rank 0 would leave rank 1 waiting for its gathers forever
    (the harness's timeout fails the test); the samples equal the unsharded model's."""
    torchrun("eos", str(tmp_path))
    ranks = [json.loads((tmp_path / f"eos-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sharded"] == ranks[0]["plain"] == [1, 1] and ranks[0]["sharded_tokens"] == [worker.EOS]
    assert ranks[1]["sharded"] == ranks[1]["plain"] == [6, 6] and ranks[1]["sharded_tokens"] == [11] * 6
    assert ranks[0]["sharded_only_rank1"] == [] and ranks[1]["sharded_only_rank1"] == [6, 6]
    assert ranks[0]["same_fingerprint"] and ranks[1]["same_fingerprint"]  # the teacher cache finds the same entries


@pytest.mark.slow
def test_sharded_runs_weighted_by_the_actor_critic_and_the_random_selector_learn_what_one_process_learns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """BERT student and teacher sharded. The actor-critic over response, feature and labels terms (its reward a
    held-out loss every process measures on the sharded student, its teacher representation captured by a hook
    inside a sharded layer); the random selector over a token relation and a response term. Both end with the
    one-process weights, the actor-critic's policy and the selectors' term weights too."""
    torchrun("selectors", str(tmp_path / "two"), "encoder", "sgd")
    for name in ("actor_critic", "relation"):
        one_process(name, tmp_path / "one" / name, capsys)
        files = sorted(p.name for p in (tmp_path / "one" / name / "final").glob("*.safetensors"))
        assert files == (["model.safetensors", "terms.safetensors"] if name == "actor_critic" else ["model.safetensors"])
        for file in files:  # the student, and the feature projection
            assert_close_weights(load_file(str(tmp_path / "one" / name / "final" / file)),
                                 load_file(str(tmp_path / "two" / name / "final" / file)))
        logs = [[json.loads(x) for x in (tmp_path / r / name / "metrics.jsonl").read_text().splitlines()]
                for r in ("one", "two")]
        weights = [[r["weights"] for r in log if r["split"] == "train"] for log in logs]
        assert len(weights[0]) == 10 and len({tuple(w.values()) for w in weights[0]}) > 1  # the selector did choose
        for one, two in zip(*weights, strict=True):
            assert one.keys() == two.keys() and all(abs(one[k] - two[k]) < 1e-5 for k in one)
    policies = [torch.load(tmp_path / r / "actor_critic" / "final" / "policy.pt") for r in ("one", "two")]
    assert_close_weights(policies[0]["actor"], policies[1]["actor"])


@pytest.mark.slow
def test_a_store_built_by_two_processes_with_a_sharded_teacher_is_the_one_process_store(
        corpus: dict[str, Path], tmp_path: Path) -> None:
    """`ktransfer teacher-outputs build` under torchrun with train.sharding=fsdp: each process runs its batches
    (11 batches of 3: the last round has one, and the other process makes a spare pass) with half the teacher, the
    main process writes; hidden states and attention maps captured by hooks inside the sharded layers. The
    store has the bytes of the one-process build, and a build killed after one shard resumes to the same."""
    import yaml

    from ktransfer.config import RunConfig
    from ktransfer.store import TeacherStore
    from ktransfer.store.build import build_store

    config = {
        "task": "causal_lm",
        "data": {"name": "text_corpus", "path": str(corpus["lines"]), "tokenizer": str(corpus["tokenizer"]),
                 "max_length": 8, "val_fraction": 0.15, "test_fraction": 0.2},
        "teacher": {"builder": "llama_student", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
                    "attn_implementation": "eager"},
        "student": {"builder": "llama_student", "hidden_size": 16, "num_layers": 2, "num_heads": 2},
        "knowledge": [{"type": "response", "temperature": 2.0}],
        "train": {"max_steps": 4, "batch_size": 4, "sharding": "fsdp"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = torchrun("build", str(tmp_path), str(path))
    assert "teacher sharded across 2 processes (FSDP2) in 2 x LlamaDecoderLayer" in proc.stderr
    assert "computed by 2 processes" in proc.stdout and proc.stdout.count("examples computed") == 1  # the main process reports
    one = build_store(RunConfig.from_dict(config), tmp_path / "one", **worker.BUILD)  # type: ignore[arg-type]
    assert one.computed == 33 and one.world_size == 1
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(files) == 10  # the manifest and 9 shards of 4 examples
    for built in ("two", "killed", "dp"):  # sharded, sharded killed and resumed, data parallel
        assert sorted(p.name for p in (tmp_path / built).iterdir()) == files
        for name in files:
            assert (tmp_path / built / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), (built, name)
    store = TeacherStore.open(tmp_path / "two")
    assert [i.key for i in store.capture_items] == ["model.layers.0:output", "model.layers.1.self_attn:output"]
    assert store.capture(7, 1).abs().sum() > 0
    ranks = [json.loads((tmp_path / f"build-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["killed_computed"] == 6 and r["resumed_computed"] == 29 for r in ranks)
    teacher_bytes = one.teacher_bytes
    assert sum(r["teacher_bytes"] for r in ranks) == teacher_bytes  # each parameter held once, split in two
    assert all(abs(r["teacher_bytes"] - teacher_bytes / 2) <= 0.02 * teacher_bytes for r in ranks)


@pytest.mark.slow
def test_sharded_cross_tokenizer_and_averaged_teachers_runs_learn_what_unsharded_runs_learn(
        corpus: dict[str, Path], corpus_file: Path, tmp_path: Path) -> None:
    """One torchrun launch, run configs with train.sharding=fsdp: two named teachers of other widths whose
    tempered outputs are averaged (`combine: {method: average}`), each sharded per layer, and a cross-tokenizer
    span term reading a teacher that tokenizes with MiniLM's WordPiece (`data.teacher_tokenizer`), end with
    the one-process weights. The span term averages over aligned spans and the engine weighs each process's
    share of the step by its spans (`count_units`), so splitting a step over processes changes nothing."""
    import yaml

    from ktransfer.config import RunConfig
    from ktransfer.runner import run

    llama = {"builder": "llama_student", "num_layers": 2, "num_heads": 2}
    train = {"max_steps": 4, "batch_size": 4, "eval_every": 4, "seed": 0, "log_every": 1, "sharding": "fsdp"}
    xtok = xtok_config(corpus_file, _minilm_folder(), {**llama, "hidden_size": 32}, train=train,
                       optim={"name": "sgd", "lr": 0.5})
    configs = {
        "xtok": xtok,
        "average": {
            "task": "causal_lm",
            "data": {"name": "text_corpus", "path": str(corpus["lines"]), "tokenizer": str(corpus["tokenizer"]),
                     "max_length": 8, "val_fraction": 0.15, "test_fraction": 0.2},
            "teachers": {"narrow": {**llama, "hidden_size": 24}, "wide": {**llama, "hidden_size": 32}},
            "combine": {"method": "average"},
            "student": {**llama, "hidden_size": 16},
            "knowledge": [{"type": "response", "temperature": 2.0}, {"type": "labels", "weight": 0.5}],
            "optim": {"name": "sgd", "lr": 0.5},
            "train": train,
        },
    }
    paths = {name: tmp_path / f"{name}.yaml" for name in configs}
    for name, config in configs.items():
        paths[name].write_text(yaml.safe_dump(config))
    for name in configs:
        run(RunConfig.from_yaml(paths[name]), tmp_path / "one" / name, progress=False)
    proc = torchrun("configs", str(tmp_path / "two"), *map(str, paths.values()))
    assert "teacher in 2 x LlamaDecoderLayer" in proc.stderr  # the cross-tokenizer run's teacher
    assert "teacher 'narrow' in 2 x LlamaDecoderLayer, teacher 'wide' in 2 x LlamaDecoderLayer" in proc.stderr
    weights = {name: load_file(str(tmp_path / "two" / name / "final" / "model.safetensors")) for name in configs}
    for name in configs:
        assert_close_weights(load_file(str(tmp_path / "one" / name / "final" / "model.safetensors")), weights[name])
    for name, key in (("xtok", "cross_tokenizer"), ("average", "response")):
        log = [json.loads(x) for x in (tmp_path / "two" / name / "metrics.jsonl").read_text().splitlines()]
        terms = [r["terms"] for r in log if r["split"] == "train"]
        assert len(terms) == 4 and all(t[key] > 0 for t in terms)


# ------------------------------------------------------------------------------ layers and refusals
def test_layers_are_found_from_no_split_modules_or_the_repeated_blocks() -> None:
    assert layer_class_names(worker.gpt2(0, 2, 16)) == ["GPT2Block"]
    assert layer_class_names(worker.bert(0, 2, 16)) == ["BertEmbeddings", "BertLayer"]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([Block(), Block()])

    assert layer_class_names(Net()) == ["Block"]
    assert layer_class_names(Net(), ["Block", "LlamaDecoderLayer"], "teacher") == ["Block"]


def test_a_model_whose_layers_cannot_be_found_says_what_was_looked_for_and_how_to_name_them() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ShardingError) as e:
        layer_class_names(model, (), "student")
    text = str(e.value)
    assert "the student (Sequential)" in text and "_no_split_modules" in text and "model.layers" in text
    assert "train.shard_layers" in text and "Linear, ReLU" in text
    with pytest.raises(ShardingError, match=r"the teacher \(GPT2LMHeadModel\) has no module of class 'Nope'"):
        layer_class_names(worker.gpt2(0, 1, 16), ["Nope"], "teacher")


class _FakeAccelerator:
    """What `_shard_models` reads of an Accelerator, as two processes would have it."""

    num_processes = 2
    device = torch.device("cpu")
    is_main_process = True


def test_features_the_sharded_path_cannot_serve_are_refused_by_name_before_training() -> None:
    class Fused:
        name = "response"
        fused_head = True

    class Generate:
        def __call__(self, batch: dict[str, Any], ctx: Any) -> dict[str, Any]:
            return batch

    class Store:
        provides_teacher_outputs = True

    refused = unservable_features([Fused()], [Generate(), Store()])
    assert len(refused) == 2 and "['response'] use fused_head" in refused[0]
    assert "['Generate'] run the models without keeping the processes' forward passes in step" in refused[1]
    assert unservable_features([], [Store()]) == []
    assert unservable_features([], [TargetsStage(sources={"dataset": 0.5, "teacher": 0.2, "student": 0.3})]) == []
    limited = TargetsStage(generation={"teacher_mix": 0.2}, greedy_baseline=True)
    refused = unservable_features([], [limited])
    assert refused == []  # teacher-mixed sampling and the greedy baseline are served sharded too
    d = worker.distiller("causal", None)
    d.stages = [Generate()]  # type: ignore[list-item]
    with pytest.raises(ShardingError, match=r"train.sharding=fsdp cannot serve this run: batch stages \['Generate'\]"):
        d._shard_models(_FakeAccelerator())
    assert not sharding.is_sharded(d.student)  # refused before touching the models


def test_models_to_shard_are_handed_to_fully_shard_where_they_are_never_moved_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`fully_shard` moves each layer to the mesh's device as it shards it (and the rest with the model's own
    call); moving a model there whole first would need the device to hold the whole teacher. Here the device
    is `meta` and sharding is recorded: every model, named teachers too, stays where it was built."""
    from ktransfer.engine import loop
    from ktransfer.knowledge import CombineConfig, arrange_terms

    calls: list[tuple[str, bool]] = []

    def record(model: nn.Module, names: Any, mesh: Any, frozen: bool = False) -> int:
        calls.append((type(model).__name__ + ("+frozen" if frozen else ""), model.training))
        return 0

    class MetaAccelerator(_FakeAccelerator):
        device = torch.device("meta")

    monkeypatch.setattr(loop, "device_mesh", lambda device, world: ("mesh", device, world))
    monkeypatch.setattr(loop, "shard_model", record)
    single = worker.distiller("causal", None)
    terms = arrange_terms([worker.ResponseTerm("forward_kl")], ["a", "b"], CombineConfig(method="average"))
    named = worker.Distiller(worker.gpt2(0, 2, 16), {"a": worker.gpt2(1, 3, 32), "b": worker.gpt2(2, 2, 24)}, terms,
                             train_data=worker.token_data(), task="causal_lm", progress=False,
                             config=TrainConfig(max_steps=1, batch_size=4, sharding="fsdp"))
    for d in (single, named):
        d.student.train()
        assert d._shard_models(MetaAccelerator())
    student, teacher = ("GPT2LMHeadModel", True), ("GPT2LMHeadModel+frozen", False)  # the teachers in eval mode
    assert calls == [student, teacher, student, teacher, teacher]
    assert single.teacher is not None
    teachers = [single.teacher, *named.teachers.values()]
    models = [single.student, named.student, *teachers]
    assert all(t.device.type == "cpu" for m in models for t in [*m.parameters(), *m.buffers()])
    assert not any(p.requires_grad for m in teachers for p in m.parameters())


def test_shard_layers_without_sharding_is_refused_and_the_keys_validate() -> None:
    with pytest.raises(ValueError, match="train.shard_layers names the layers to shard, but train.sharding is 'none'"):
        TrainConfig(shard_layers=["GPT2Block"])
    with pytest.raises(Exception, match="valid choices: none, fsdp"):
        TrainConfig(sharding="zero3")  # type: ignore[arg-type]
    assert TrainConfig(sharding="fsdp", shard_layers=["GPT2Block"]).shard_layers == ["GPT2Block"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only without a CUDA GPU")
def test_fp16_on_the_cpu_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="fp16' needs a CUDA GPU"):
        worker.distiller("causal", None, mixed_precision="fp16").fit()


@pytest.mark.slow
def test_the_sharded_benchmark_measures_both_modes_at_a_tiny_size(tmp_path: Path) -> None:
    """benchmarks/sharded/sharded.py (what gpu.sh runs on several GPUs) with 2 CPU processes."""
    script = Path(__file__).parent.parent / "benchmarks" / "sharded" / "sharded.py"
    tiny = ["--vocab", "64", "--student-hidden", "16", "--student-layers", "2", "--teacher-hidden", "64",
            "--teacher-layers", "4", "--heads", "2", "--seq", "16", "--batch", "4", "--steps", "5", "--warmup", "2",
            "--precision", "no"]
    results = {}
    for mode in ("none", "fsdp"):
        proc = subprocess.run([*_launch.torchrun(), str(script), "--sharding", mode, "--out",
                               str(tmp_path / f"{mode}.json"), *tiny], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    for r in results.values():
        assert r["world_size"] == 2 and r["steps_timed"] == 3  # steps 3 to 5 and r["median_step_s"] > 0
        assert len(r["processes"]) == 2 and all(p["peak_memory_bytes"] > 0 for p in r["processes"])
    teacher_bytes = results["none"]["teacher_parameters"] * 4
    assert [p["teacher_bytes_held"] for p in results["none"]["processes"]] == [teacher_bytes] * 2
    assert sum(p["teacher_bytes_held"] for p in results["fsdp"]["processes"]) == teacher_bytes
