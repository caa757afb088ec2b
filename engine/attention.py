"""An attention processor that lets the conditional and unconditional passes share one batched forward.

The prompt and the negative prompt have different token counts. Batching them
needs the shorter one padded, and the padding must be invisible. CogView4's own
processor turns a 2-D mask into a full (L × L) 0/1 float matrix and hands it to
SDPA as an *additive* bias, which does not hide anything. An additive -inf bias
would hide it, but a bias also pushes SDPA off its fastest kernels. So here the
"mask" is where each row's real keys start (the text is padded on the left),
and attention for each row runs over that row's real keys only: every real
token sees exactly what it sees unbatched, through the same maskless kernels.
Padded text rows produce values no real token ever reads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


@torch.library.custom_op("cogview_bot::attend_unpadded", mutates_args=())
def attend_unpadded(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_starts: torch.Tensor
) -> torch.Tensor:
    """SDPA for each batch row over its keys from `key_starts[row]` on (a CPU int tensor).

    A custom op, so `torch.compile` treats it as one opaque kernel: the starts are data,
    not shapes, and a new prompt length never triggers a recompile."""
    starts: list[int] = key_starts.tolist()
    if len(set(starts)) == 1:
        s = starts[0]
        out = F.scaled_dot_product_attention(query, key[:, :, s:], value[:, :, s:])
    else:
        out = torch.cat(
            [
                F.scaled_dot_product_attention(query[i : i + 1], key[i : i + 1, :, s:], value[i : i + 1, :, s:])
                for i, s in enumerate(starts)
            ]
        )
    return out.contiguous()


@attend_unpadded.register_fake
def _attend_unpadded_shape(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_starts: torch.Tensor
) -> torch.Tensor:
    return query.new_empty(query.shape)


class KeyPaddingAttnProcessor:
    """CogView4AttnProcessor where `attention_mask` is each row's first real key (see the module doc)."""

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
        hidden_states = self.attend(query, key, value, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states

    @staticmethod
    def attend(
        query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_starts: torch.Tensor | None
    ) -> torch.Tensor:
        """The attention itself; bench/fastpath_probe.py overrides it to time an additive bias instead."""
        if key_starts is None:
            return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        return attend_unpadded(query, key, value, key_starts)


def install(transformer: torch.nn.Module) -> None:
    """Use the key-padding processor in every attention layer (identical results without a mask)."""
    processor = KeyPaddingAttnProcessor()
    for block in transformer.transformer_blocks:  # type: ignore[union-attr]
        block.attn1.set_processor(processor)


def bucketed(embeds: list[torch.Tensor], bucket: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack text embeddings left-padded to a common length, with where each row's real tokens start.

    `bucket` rounds the length up (e.g. to 64 tokens) so a compiled transformer sees the same
    shapes for most prompts instead of recompiling whenever a prompt's token count changes.
    The starts (a CPU int64 tensor) go in as `attention_mask`; they are passed even when nothing
    is padded, so every batch runs the same compiled graph.
    """
    longest = max(e.shape[1] for e in embeds)
    length = -(-longest // bucket) * bucket
    pads = [length - e.shape[1] for e in embeds]
    rows = [F.pad(e, (0, 0, pad, 0)) if pad else e for e, pad in zip(embeds, pads, strict=True)]
    return torch.cat(rows), torch.tensor(pads, dtype=torch.int64)
