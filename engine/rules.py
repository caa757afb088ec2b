"""The limits of one model, read from its own config files before it loads (no torch: the cogs' limits come
from here through the engine's view).

Every rule a request is held to lives in ``jobrequest``; this module only finds the numbers those rules use
(transformer sample_size × VAE scale factor = the native size, the tokenizer that counts prompt tokens).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from jobrequest import COGVIEW4_LIMITS, ModelLimits

log = logging.getLogger(__name__)


def limits_from_folder(folder: str | Path) -> ModelLimits:
    """Read the limits from a diffusers pipeline folder (a local copy or the HF cache snapshot)."""
    folder = Path(folder)
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae.get("block_out_channels", [1, 1, 1, 1])) - 1)
    limits = ModelLimits.from_sizes(
        sample_size=int(transformer.get("sample_size", 128)),
        vae_scale_factor=scale,
        patch_size=int(transformer.get("patch_size", 2)),
    )
    counter = _token_counter(folder / "tokenizer" / "tokenizer.json")
    if counter is not None:
        limits = ModelLimits(**{**limits.__dict__, "count_tokens": counter})
    return limits


def limits_for_model(model_id: str) -> ModelLimits:
    """The model's limits before loading it: from a local folder's configs when there is one, else
    CogView4-6B's (a hub id is read once the weights are downloaded)."""
    folder = Path(model_id).expanduser()
    if (folder / "transformer" / "config.json").exists():
        try:
            return limits_from_folder(folder)
        except (OSError, ValueError, KeyError):
            log.warning("Could not read limits from %s; using CogView4-6B's", folder, exc_info=True)
    return COGVIEW4_LIMITS


def _token_counter(path: Path) -> Callable[[str], int] | None:
    """Count tokens with the `tokenizers` library (no torch needed)."""
    if not path.exists():
        return None
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # a tokenizer we cannot read only disables the token check
        log.warning("Could not read %s; prompt length is checked in characters only", path, exc_info=True)
        return None
    return lambda text: len(tokenizer.encode(text).ids)


def missing_model_folder(model_id: str) -> str | None:
    """A sentence when `model_id` names a local folder that does not exist (an absolute or ./ path, ~, a
    backslash, more than owner/name), None when it is a folder or may be a Hugging Face id (owner/name)."""
    path = Path(model_id).expanduser()
    if path.exists():
        return None
    looks_local = (
        path.is_absolute() or model_id.startswith((".", "~")) or "\\" in model_id or len(Path(model_id).parts) != 2
    )
    if not looks_local:
        return None
    return (
        f"The model folder {model_id} does not exist: check the path (a folder with model_index.json), "
        "or use a Hugging Face id such as THUDM/CogView4-6B."
    )


def model_label(model_id: str) -> str:
    """How the model is named to users and in the PNGs: a Hugging Face id as is, a local folder by its name only
    (no local paths)."""
    path = Path(model_id).expanduser()
    return path.name if path.is_dir() else model_id
