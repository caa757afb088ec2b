"""An attention processor that lets the conditional and unconditional passes share one batched forward.

The prompt and the negative prompt have different token counts. Batching them
needs the shorter one padded, and the padding must be invisible. CogView4's own
processor turns a 2-D mask into a full (L × L) 0/1 float matrix and hands it to
SDPA as an *additive* bias, which does not hide anything. This processor takes
a ready additive key-padding bias of shape (B, 1, 1, L) with -inf on padded keys,
so every real token sees exactly what it sees unbatched; with no mask it is the
stock computation. Padded text rows produce values no real token ever reads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class KeyPaddingAttnProcessor:
    """CogView4AttnProcessor with a key-padding bias instead of the stock (L × L) mask."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = encoder_hidden_states.dtype
        text_seq_length = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)

        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query).to(dtype=dtype)
        if attn.norm_k is not None:
            key = attn.norm_k(key).to(dtype=dtype)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query[:, :, text_seq_length:, :] = apply_rotary_emb(
                query[:, :, text_seq_length:, :], image_rotary_emb, use_real_unbind_dim=-2
            )
            key[:, :, text_seq_length:, :] = apply_rotary_emb(
                key[:, :, text_seq_length:, :], image_rotary_emb, use_real_unbind_dim=-2
            )
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states


def install(transformer: torch.nn.Module) -> None:
    """Use the key-padding processor in every attention layer (identical results without a mask)."""
    processor = KeyPaddingAttnProcessor()
    for block in transformer.transformer_blocks:  # type: ignore[union-attr]
        block.attn1.set_processor(processor)


def bucketed(
    embeds: list[torch.Tensor], image_tokens: int, bucket: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack text embeddings left-padded to a common length, with the bias that hides the padding.

    `bucket` rounds the length up (e.g. to 64 tokens) so a compiled transformer sees the same
    shapes for most prompts instead of recompiling, or falling back to slower dynamic-shape
    kernels, whenever a prompt's token count changes.
    """
    longest = max(e.shape[1] for e in embeds)
    length = -(-longest // bucket) * bucket
    if all(e.shape[1] == length for e in embeds):
        return torch.cat(embeds), None
    rows, biases = [], []
    for e in embeds:
        pad = length - e.shape[1]
        rows.append(F.pad(e, (0, 0, pad, 0)))
        bias = torch.zeros(length + image_tokens, dtype=e.dtype, device=e.device)
        bias[:pad] = float("-inf")
        biases.append(bias)
    return torch.cat(rows), torch.stack(biases)[:, None, None, :]
