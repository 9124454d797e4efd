"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`, unpacked into the ktransfer cache.

`prepare_fashion_mnist` runs `apt-get download` (no root needed) and `dpkg-deb -x`, then keeps
the four IDX files as one compressed NumPy archive in the cache. Loading never downloads: an
absent cache entry is an error that says which command prepares it.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from ktransfer.cache import cache_root, cached_entry
from ktransfer.data.base import DataSplits, TensorDictDataset

FASHION_KEY = "fashion-mnist-v1"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
_FILES = {
    "x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {body.size}")
    return body.reshape(shape)


def _find(root: Path, name: str) -> Path:
    found = sorted(root.rglob(name))
    if not found:
        raise FileNotFoundError(f"{name} not found in the unpacked package {DEBIAN_PACKAGE}")
    return found[0]


def fashion_mnist_path() -> Path:
    return cache_root() / FASHION_KEY / "fashion_mnist.npz"


def prepare_fashion_mnist(source_dir: str | Path | None = None) -> Path:
    """Obtain Fashion-MNIST into the cache (once) and return the archive's path.

    `source_dir`: a folder that already holds the four IDX files (or the .deb); otherwise the
    package is fetched with `apt-get download` into a temporary folder.
    """

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="ktransfer-fmnist-") as tmp_name:
            tmp = Path(tmp_name)
            search = Path(source_dir) if source_dir is not None else tmp
            debs = sorted(search.glob(f"{DEBIAN_PACKAGE}_*.deb"))
            if source_dir is None:
                if shutil.which("apt-get") is None:
                    raise RuntimeError(f"apt-get is not available to download {DEBIAN_PACKAGE}")
                done = subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, capture_output=True, text=True)
                debs = sorted(tmp.glob(f"{DEBIAN_PACKAGE}_*.deb"))
                if done.returncode != 0 or not debs:
                    raise RuntimeError(
                        f"`apt-get download {DEBIAN_PACKAGE}` failed ({done.stderr.strip()[-300:]}); check the "
                        "Debian sources, or pass a folder with the IDX files or the .deb"
                    )
            if debs:
                if shutil.which("dpkg-deb") is None:
                    raise RuntimeError("dpkg-deb is needed to unpack the Debian package")
                subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tmp / "unpacked")], check=True)
                search = tmp / "unpacked"
            arrays = {key: read_idx(_find(search, name)) for key, name in _FILES.items()}
            np.savez_compressed(out / "fashion_mnist.npz", **arrays)

    try:
        entry = cached_entry(FASHION_KEY, build)
    except (RuntimeError, FileNotFoundError, subprocess.CalledProcessError) as e:
        raise RuntimeError(f"could not prepare Fashion-MNIST: {e}") from e
    return entry / "fashion_mnist.npz"


def fashion_mnist(
    train_size: int | None = 6000, val_size: int = 1000, test_size: int | None = 2000, split_seed: int = 0,
) -> DataSplits:
    """Fashion-MNIST (28x28 grey clothes, 10 classes) as flat vectors scaled to [0, 1].

    Validation comes from the official training images (disjoint from train); the test set from
    the official test images. `train_size` / `test_size` subsample (stratified by a seeded
    permutation) because 60k images are heavy on a few CPU cores; None keeps all.
    """
    path = fashion_mnist_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST is not prepared (looked for {path}); run `ktransfer data prepare fashion-mnist`"
        )
    with np.load(path) as z:
        x_all, y_all, x_test, y_test = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    rng = np.random.default_rng(split_seed)
    order = rng.permutation(len(y_all))
    if val_size < 1 or val_size >= len(order):
        raise ValueError(f"val_size must be in [1, {len(order) - 1}], got {val_size}")
    val_idx, rest = order[:val_size], order[val_size:]
    if train_size is not None:
        if train_size < 1:
            raise ValueError(f"train_size must be >= 1 or null, got {train_size}")
        rest = rest[:train_size]
    test_order = rng.permutation(len(y_test))
    if test_size is not None:
        test_order = test_order[:test_size]

    def ds(x: np.ndarray, y: np.ndarray) -> TensorDictDataset:
        flat = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0)
        return TensorDictDataset(inputs=flat, labels=torch.from_numpy(y.astype(np.int64)))

    return DataSplits(
        train=ds(x_all[rest], y_all[rest]), val=ds(x_all[val_idx], y_all[val_idx]),
        test=ds(x_test[test_order], y_test[test_order]),
        info={"num_features": 784, "num_classes": 10, "name": "fashion_mnist", "kind": "image", "input_keys": ["inputs"],
              "sizes": {"train": len(rest), "val": len(val_idx), "test": len(test_order)}},
    )
