"""Quantized weights kept on disk, so only the first start pays for quantizing.

An entry is one component in one format (e.g. the text encoder in NF4), in a folder named by a key
over everything that could make it stale: the source files (names, sizes, modification times), the
versions of torch/diffusers/transformers/bitsandbytes and the format. It is written into a temporary
folder and renamed into place, with a manifest of every file's size and SHA-256. A missing manifest,
a wrong size or hash, or an entry that fails to load is logged and rebuilt from the model; entries of
the same component and format under another key (a new model revision or library) are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "safetensors")


def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def cache_key(source: Path, quant: str) -> str:
    """What the entry depends on: the source files, the libraries and the format."""
    files = sorted(
        (p.relative_to(source).as_posix(), p.stat().st_size, int(p.stat().st_mtime))
        for p in source.rglob("*")
        if p.is_file()
    )
    payload = {"format": FORMAT, "quant": quant, "files": files, "versions": _versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


class WeightCache:
    """One folder of entries `<component>-<quant>-<key>/`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def entry(self, component: str, quant: str, source: Path) -> Path:
        return self.root / f"{component}-{quant}-{cache_key(source, quant)}"

    def problem(self, entry: Path) -> str | None:
        """Why an entry cannot be trusted (None: every file is there, whole and unchanged)."""
        try:
            manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
            files: dict[str, dict] = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "no readable manifest"
        for name, expected in files.items():
            path = entry / name
            if not path.is_file() or path.stat().st_size != expected["size"]:
                return f"{name} is missing or truncated"
            if _sha256(path) != expected["sha256"]:
                return f"{name} does not match its checksum"
        return None

    def load_or_build(
        self,
        component: str,
        quant: str,
        source: Path,
        build: Callable[[], torch.nn.Module],
        save: Callable[[torch.nn.Module, Path], None],
        load: Callable[[Path], torch.nn.Module],
        *,
        reload: bool = False,
    ) -> torch.nn.Module:
        """The cached module if a sound entry exists, else `build()` saved for the next start.

        `reload`: once saved, return the module loaded back from the entry (weights `load` maps from the
        file stay file-backed) instead of the one built. A cache that cannot be read or written never stops
        loading: the model is built as without one."""
        entry = self.entry(component, quant, source)
        self._remove_stale(component, quant, keep=entry)
        if entry.exists():
            why = self.problem(entry)
            if why is None:
                try:
                    module = load(entry)
                    log.info("Loaded %s (%s) from the quantized cache %s", component, quant, entry)
                    return module
                except Exception as exc:  # a sound-looking entry that still fails: rebuild it
                    why = f"loading failed ({exc.__class__.__name__}: {str(exc)[:200]})"
            log.warning("Quantized cache %s is unusable (%s); rebuilding it", entry, why)
            shutil.rmtree(entry, ignore_errors=True)
        module = build()
        try:
            self._write(entry, module, save)
        except Exception:
            log.warning("Could not write the quantized cache %s; next start quantizes again", entry, exc_info=True)
            return module
        if reload:
            del module
            return load(entry)
        return module

    def _write(self, entry: Path, module: torch.nn.Module, save: Callable[[torch.nn.Module, Path], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{entry.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save(module, tmp)
            files = {
                p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            manifest = {"format": FORMAT, "versions": _versions(), "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            for path in tmp.rglob("*"):
                if path.is_file():
                    with path.open("rb") as handle:
                        os.fsync(handle.fileno())
            os.replace(tmp, entry)  # atomic: a reader sees the whole entry or none
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("Saved %s to the quantized cache (%s)", entry.name, self.root)

    def _remove_stale(self, component: str, quant: str, *, keep: Path) -> None:
        if not self.root.is_dir():
            return
        for old in self.root.glob(f"{component}-{quant}-*"):
            if old != keep and old.is_dir():
                log.info("Removing stale quantized cache %s (another model revision or library version)", old)
                shutil.rmtree(old, ignore_errors=True)


def map_onto_files(module: torch.nn.Module, folder: Path) -> int:
    """Point the module's host weights at the same tensors memory-mapped from `folder`'s safetensors files
    (a cache entry it was loaded from): file-backed pages the OS may drop and read again, instead of
    anonymous memory. Only a weight on the host whose name, shape and dtype match is moved; the bytes moved.
    """
    from safetensors import safe_open

    slots = {}
    for prefix, owner in module.named_modules():
        for key, tensor in [*owner._parameters.items(), *owner._buffers.items()]:
            if tensor is not None and tensor.device.type == "cpu":
                slots[f"{prefix}.{key}" if prefix else key] = (owner, key, tensor)
    moved = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                if name not in slots:
                    continue
                owner, key, tensor = slots[name]
                mapped = handle.get_tensor(name)
                if mapped.shape != tensor.shape or mapped.dtype != tensor.dtype:
                    continue
                if key in owner._parameters:
                    owner._parameters[key].data = mapped
                else:
                    owner._buffers[key] = mapped
                moved += mapped.numel() * mapped.element_size()
    return moved
