"""Build the full-size CogView4-6B architecture with random weights, saved as a diffusers folder.

Real weights cannot be downloaded in the benchmark environment; random weights of
the real shapes cost the same memory and time. The configs come from a folder holding
CogView4-6B's published config files (`--configs`). The tokenizer is
built locally with the `tokenizers` library: GLM's vocabulary size, one token per
word, `[gMASK]<sop>` prefix and left padding like GLM-4's.

    python bench/random_model.py OUT_DIR [--configs CONFIG_DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_CONFIGS = ROOT.parent / "shared" / "cogview4-6b"


def build_tokenizer(out: Path, vocab_size: int, pad_id: int) -> None:
    """GLM's vocabulary size and special ids, one token per word (ids only shape the sequence length)."""
    from tools.tiny import save_glm_like_tokenizer

    vocab = {f"w{i}": i for i in range(vocab_size)}
    specials = {"<pad>": pad_id, "<unk>": pad_id + 1, "[gMASK]": pad_id + 2, "<sop>": pad_id + 3}
    for token, index in specials.items():
        vocab.pop(f"w{index}")
        vocab[token] = index
    save_glm_like_tokenizer(out, vocab, per_character=False, model_max_length=8192)


def build(out: Path, configs: Path) -> None:
    from diffusers import AutoencoderKL, CogView4Transformer2DModel
    from transformers import GlmConfig, GlmModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(configs / "model_index.json", out / "model_index.json")
    (out / "scheduler").mkdir(exist_ok=True)
    shutil.copy(configs / "scheduler_config.json", out / "scheduler" / "scheduler_config.json")

    started = time.time()
    te_config = GlmConfig.from_dict(json.loads((configs / "text_encoder_config.json").read_text()))
    build_tokenizer(out, te_config.vocab_size, te_config.pad_token_id)
    with torch.device(device):
        torch.manual_seed(0)
        text_encoder = GlmModel._from_config(te_config, dtype=torch.bfloat16)
    text_encoder.save_pretrained(out / "text_encoder", max_shard_size="5GB")
    del text_encoder
    torch.cuda.empty_cache() if device == "cuda" else None
    print(f"text encoder saved ({time.time() - started:.0f} s)", flush=True)

    tr_config = json.loads((configs / "transformer_config.json").read_text())
    # On the CPU the weights are made in bf16 straight away: fp32 first would need 25 GB of RAM.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device == "cpu" else default)
    try:
        with torch.device(device):
            transformer = CogView4Transformer2DModel.from_config(tr_config).to(torch.bfloat16)
    finally:
        torch.set_default_dtype(default)
    transformer.save_pretrained(out / "transformer", max_shard_size="5GB")
    del transformer
    torch.cuda.empty_cache() if device == "cuda" else None
    print(f"transformer saved ({time.time() - started:.0f} s)", flush=True)

    vae_config = json.loads((configs / "vae_config.json").read_text())
    with torch.device(device):
        vae = AutoencoderKL.from_config(vae_config).to(torch.bfloat16)
    vae.save_pretrained(out / "vae")
    print(f"model built in {out} ({time.time() - started:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    args = parser.parse_args()
    build(args.out, args.configs)


if __name__ == "__main__":
    main()
