"""Write a tiny random CogView4 pipeline folder.

Tests and smoke runs load it through the same ``from_pretrained`` path as the
real THUDM/CogView4-6B, so every loading and placement code path is exercised
without downloading 30 GB of weights. The tokenizer mimics GLM's: it prefixes
``[gMASK]<sop>`` to every prompt and pads on the left.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<unk>", "[gMASK]", "<sop>"]
# A small fixed vocabulary: lowercase words of the alphabet plus common symbols.
_WORD_PIECES = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(" 0123456789.,!?-'")


def save_glm_like_tokenizer(folder: Path, vocab: dict[str, int], *, per_character: bool, model_max_length: int) -> None:
    """A word-level tokenizer that behaves like GLM-4's where the pipeline cares.

    It prefixes ``[gMASK]<sop>`` (so an empty negative prompt is not a zero-length
    sequence) and pads on the left. `vocab` must hold <pad>, <unk>, [gMASK] and <sop>.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Split(pattern="", behavior="isolated") if per_character else pre_tokenizers.Whitespace()
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A",
        pair="[gMASK] <sop> $A $B",
        special_tokens=[("[gMASK]", vocab["[gMASK]"]), ("<sop>", vocab["<sop>"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=model_max_length,
    )
    fast.save_pretrained(folder / "tokenizer")


def write_tiny_model(folder: str | Path, *, seed: int = 0) -> Path:
    """Create a tiny random CogView4 pipeline in ``folder`` and return its path.

    Default size is 64x64 (transformer sample_size 8 x VAE scale factor 8).
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        CogView4Pipeline,
        CogView4Transformer2DModel,
        FlowMatchEulerDiscreteScheduler,
    )
    from transformers import GlmConfig, GlmModel, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    text_hidden = 64  # bitsandbytes 4-bit needs in_features ≥ its block size (64)
    # Single characters as tokens, so any prompt maps onto the small vocabulary.
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + _WORD_PIECES)}
    save_glm_like_tokenizer(folder, vocab, per_character=True, model_max_length=256)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")

    text_encoder = GlmModel(
        GlmConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_hidden,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            attention_bias=True,
            partial_rotary_factor=0.5,
        )
    )
    transformer = CogView4Transformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        text_embed_dim=text_hidden,
        time_embed_dim=16,
        condition_dim=8,
        pos_embed_max_size=32,
        sample_size=8,
        rope_axes_dim=(4, 4),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )
    scheduler_config = json.loads(
        json.dumps(
            {
                "base_image_seq_len": 16,
                "base_shift": 0.25,
                "max_image_seq_len": 256,
                "max_shift": 0.75,
                "num_train_timesteps": 1000,
                "shift": 1.0,
                "time_shift_type": "linear",
                "use_dynamic_shifting": True,
            }
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**scheduler_config)
    pipe = CogView4Pipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.save_pretrained(folder)
    return folder


def write_classifier(
    folder: str | Path, *, seed: int = 0, full_size: bool = False, passes_everything: bool = False
) -> Path:
    """A random-weight NSFW image classifier folder (ViTForImageClassification, labels normal/nsfw, with its image
    processor), loaded by engine.safety like a Hub one. Tiny by default (32 px, one layer); `full_size` is the
    shape of Falconsai/nsfw_image_detection (ViT-base, 224 px), to measure what the check costs.
    `passes_everything`: its head always says `normal` (the tiny model's own, for smoke runs), so only
    SAFETY_THRESHOLD=0 flags."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    side = 224 if full_size else 32
    shape = {} if full_size else {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = ViTConfig(
        image_size=side,
        patch_size=16 if full_size else 8,
        intermediate_size=3072 if full_size else 32,
        id2label={0: "normal", 1: "nsfw"},
        label2id={"normal": 0, "nsfw": 1},
        **shape,
    )
    model = ViTForImageClassification(config)
    if passes_everything:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([8.0, -8.0]))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(folder)
    return folder
