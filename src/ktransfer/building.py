"""A run's data and models, built from the sections of its config: builder + weights, another run, a cached teacher.

`build_model` builds a model section: a `from_run` section is that run's student with its
`best` or `final` weights; a `builder` section is a registered model builder (arguments the
config leaves out are filled from the dataset's `info`), with optional initial `weights`.

A teacher trained once (`ktransfer data prepare teacher --config CONFIG`) lives in the cache
under a key of the config it was trained from: the resolved config, the content of every file
or folder it names (a user's CSV edited in place gives another teacher), the source code of the
data package (which decides the splits), the ktransfer version and the pretrained package's
version. The `cached_teacher` model builder finds it here (this module provides its loader to
`ktransfer.models`), and refuses with the command to run when it has not been trained: building
a model never trains one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

from torch import nn

import ktransfer.data as data_package
from ktransfer._version import __version__
from ktransfer.cache import cache_root
from ktransfer.checkpoint import load_weights
from ktransfer.config import MODEL_META_KEYS, RunConfig
from ktransfer.data import DATASETS, DataSplits
from ktransfer.fingerprint import source_digest
from ktransfer.models import DATASET_DEFAULTS, MODELS, provide_cached_teacher_loader, provide_run_loader
from ktransfer.pretrained import MINILM
from ktransfer.registry import ConfigError


def load_data(cfg: RunConfig) -> DataSplits:
    """The dataset of a run config, split into train/val/test."""
    data = dict(cfg.data)
    return DATASETS.build(data.pop("name"), data, "data")


def _architecture(spec: dict[str, Any]) -> dict[str, Any]:
    """A model section without its initial weights: the weights of a run replace them."""
    return {k: v for k, v in spec.items() if k != "weights"}


# What a dataset that tokenises each text for the teacher too says about the teacher's tokens.
TEACHER_TOKEN_INFO = (("vocab_size", "teacher_vocab_size"), ("eos_token_id", "teacher_eos_token_id"),
                      ("pad_token_id", "teacher_pad_token_id"), ("bos_token_id", None),
                      ("tokenizer_sha256", "teacher_tokenizer_sha256"))


def model_info(info: dict[str, Any], where: str) -> dict[str, Any]:
    """The dataset facts a model section is built from: for the teacher of a dataset with `teacher_tokenizer`,
    its own tokenizer's vocabulary and special ids in place of the student's."""
    if not where.startswith("teacher") or info.get("teacher_tokenizer") is None:
        return info
    return {**info, **{key: info.get(source) if source else None for key, source in TEACHER_TOKEN_INFO}}


def build_model(spec: dict[str, Any], info: dict[str, Any], where: str) -> nn.Module:
    """Build a model section: `from_run` (that run's student and weights) or builder + optional weights."""
    info = model_info(info, where)
    if "from_run" in spec:
        run_dir = Path(spec["from_run"])
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{where}.from_run: no run found at {run_dir} (missing {cfg_path.name})")
        source = RunConfig.from_yaml(cfg_path)
        model = build_model(_architecture(source.student), info, f"{where}.from_run")
        which = spec.get("which", "best")
        try:
            return load_weights(model, run_dir / which / "model.safetensors")
        except RuntimeError as e:  # tensor shapes differ: that run was sized for other data
            raise ConfigError(
                f"{where}.from_run: the weights of the run at {run_dir} (trained on dataset "
                f"'{source.data.get('name')}') do not fit a model built for dataset '{info.get('name', '?')}': "
                f"{_shape_mismatches(e)}; use a run trained on data of the same shape"
            ) from e
    builder = spec["builder"]
    kwargs = {k: v for k, v in spec.items() if k not in MODEL_META_KEYS}
    accepted = MODELS.keys(builder)
    for key, info_key in DATASET_DEFAULTS:
        if key in accepted and key not in kwargs and info_key in info:
            kwargs[key] = info[info_key]
    model = MODELS.build(builder, kwargs, where)
    if spec.get("weights"):
        try:
            load_weights(model, spec["weights"])
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{where}.weights: {e}") from e
        except RuntimeError as e:  # tensor shapes differ from the model this section builds
            raise ConfigError(f"{where}.weights: {spec['weights']} does not fit the model this section builds: "
                              f"{_shape_mismatches(e)}") from e
    return model


def _shape_mismatches(error: RuntimeError, limit: int = 2) -> str:
    """The first 'size mismatch' lines of a `load_state_dict` error, on one line."""
    lines = [line.strip().rstrip(".") for line in str(error).splitlines() if "size mismatch" in line]
    if not lines:
        return str(error).strip().splitlines()[0]
    more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


# ---------------------------------------------------------------------------------- teachers trained once
def teacher_key(config: str | Path) -> str:
    """The cache entry of the run `config` describes: `teacher-<data name>-<hash>`."""
    cfg = RunConfig.from_yaml(config)
    described = {"config": cfg.to_yaml(), "inputs": cfg.input_digests(), "version": __version__,
                 "pretrained": MINILM.key, "data_code": _data_code_digest()}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return f"teacher-{cfg.data['name']}-{digest}"


def _data_code_digest() -> str:
    """The source of every module of `ktransfer.data`: the code that reads and splits a teacher's data."""
    modules = [importlib.import_module(f"ktransfer.data.{m.name}") for m in pkgutil.iter_modules(data_package.__path__)]
    return source_digest([data_package, *modules])


def cached_teacher_dir(config: str | Path) -> Path:
    """The trained run of `config` in the cache, or an error naming the command that trains it."""
    path = cache_root() / teacher_key(config)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"the teacher of {config} is not trained yet (looked for {path}); run "
            f"`ktransfer data prepare teacher --config {config}`"
        )
    return path


def load_cached_teacher(config: str | Path, num_classes: int, which: str = "best") -> nn.Module:
    """The student model of the cached run of `config`, with its `which` (best or final) weights."""
    return build_model({"from_run": str(cached_teacher_dir(config)), "which": which}, {"num_classes": num_classes},
                       "teacher.cached")


provide_cached_teacher_loader(load_cached_teacher)


def load_run_student(run_dir: str, which: str, info: dict[str, Any]) -> nn.Module:
    """The student of the run at `run_dir` with its `which` weights (what `hf_cut` cuts from a run directory)."""
    return build_model({"from_run": run_dir, "which": which}, info, "hf_cut.teacher")


provide_run_loader(load_run_student)
def build_teachers(cfg: RunConfig, info: dict[str, Any]) -> dict[str, nn.Module]:
    """The live teachers of a config's `teachers` section by name (those given as stores are not models)."""
    return {name: build_model(spec, info, f"teachers.{name}") for name, spec in (cfg.teachers or {}).items()
            if "store" not in spec}
