"""How the swap plans hold weights on the host (engine.residency), on the CPU.

The GPU side (bus-speed copies, page-locking) is measured by bench/plans.py; here: which components keep
a host copy and which are page-locked for a given RAM, that a host copy is one buffer holding exact
copies, and that a component holds host memory only while it needs to."""

from __future__ import annotations

import pytest
import torch

from engine.residency import ComponentSwap, HostCopy, HostMode, host_policy

GIB = 1024**3
# The swap plan of an 8 GiB card: 4-bit text encoder and transformer, bf16 VAE (measured sizes, rounded).
NF4_SWAP = {"text_encoder": int(5.5 * GIB), "transformer": int(3.3 * GIB), "vae": int(0.8 * GIB)}
KEEP_PIN = HostMode(keep=True, pin=True)
KEEP = HostMode(keep=True, pin=False)
NEITHER = HostMode(keep=False, pin=False)


@pytest.mark.parametrize(
    ("ram_gib", "expected"),
    [
        # A 16 GiB PC: no spare copies (9.6 GiB of weights > half the RAM), nothing page-locked.
        (16, {"text_encoder": NEITHER, "transformer": NEITHER, "vae": NEITHER}),
        # 32 GiB: copies kept; the transformer and VAE (back after every encoder visit) are locked first,
        # the text encoder would take the locked total past a quarter of the RAM.
        (32, {"text_encoder": KEEP, "transformer": KEEP_PIN, "vae": KEEP_PIN}),
        # A workstation: everything kept and locked.
        (128, {"text_encoder": KEEP_PIN, "transformer": KEEP_PIN, "vae": KEEP_PIN}),
        # RAM unknown (no psutil): hold nothing twice.
        (None, {"text_encoder": NEITHER, "transformer": NEITHER, "vae": NEITHER}),
    ],
)
def test_host_policy_spends_host_memory_only_where_the_machine_has_it(ram_gib, expected) -> None:
    ram = None if ram_gib is None else ram_gib * GIB
    assert host_policy(NF4_SWAP, ram) == expected


def test_host_policy_locks_in_order_and_skips_what_does_not_fit() -> None:
    # 24 GiB: 9.6 ≤ 12 kept; locked budget 6 GiB: transformer (3.3) + VAE (0.8) fit, the encoder (5.5) not.
    modes = host_policy(NF4_SWAP, 24 * GIB)
    assert [name for name, mode in modes.items() if mode.pin] == ["transformer", "vae"]
    # A bigger encoder alone over the budget does not stop a smaller one later in the order from locking.
    modes = host_policy({"transformer": 7 * GIB, "vae": 1 * GIB, "text_encoder": 1 * GIB}, 32 * GIB)
    assert (modes["transformer"].pin, modes["vae"].pin, modes["text_encoder"].pin) == (True, True, False)


def test_host_policy_counts_what_the_layer_streams_locked_already() -> None:
    # 24 GiB: a budget of 6 GiB; with 3 GiB locked by streams the transformer (3.3) no longer fits, the VAE does.
    modes = host_policy(NF4_SWAP, 24 * GIB, locked=3 * GIB)
    assert [name for name, mode in modes.items() if mode.pin] == ["vae"]
    assert all(mode.keep for mode in modes.values())  # keeping a copy is a matter of RAM, not of locking


def _tensors() -> list[torch.Tensor]:
    return [
        torch.randn(3, 5, dtype=torch.bfloat16),
        torch.randn(7),
        torch.randint(0, 255, (11, 1), dtype=torch.uint8),
        torch.randn(4, 4).to(torch.float8_e4m3fn),
        torch.tensor([True, False, True]),
        torch.tensor(2.5),  # 0-dim
        torch.randn(2, 3, 4).transpose(0, 2),  # not contiguous
    ]


def test_host_copy_is_one_aligned_buffer_of_exact_copies() -> None:
    originals = _tensors()
    placed: list[int] = []
    copy = HostCopy(
        [(t.shape, t.dtype) for t in originals],
        lambda i: originals[i],
        lambda i, view: placed.append(i),
        pin=False,
        from_gpu=False,
    )
    assert placed == list(range(len(originals)))  # each weight re-pointed as soon as it is copied
    base = copy.buffer.untyped_storage().data_ptr()
    for original, view in zip(originals, copy.views, strict=True):
        assert view.untyped_storage().data_ptr() == base  # one allocation for the whole component
        assert view.data_ptr() % 4096 == 0
        assert view.dtype == original.dtype and view.shape == original.shape
        assert torch.equal(view.reshape(-1).view(torch.uint8), original.reshape(-1).view(torch.uint8))
    assert copy.nbytes == 4096 * len(originals)  # each small tensor takes one page, nothing rounded to 2^n
    assert not copy.pinned  # no CUDA here: nothing to lock


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.BatchNorm1d(32))
    return module.to(torch.bfloat16)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("keep", [True, False])
def test_a_component_on_the_device_holds_no_host_copy_until_it_has_to_leave(keep: bool) -> None:
    module = _module()
    before = _state(module)
    # On the CPU the "device" is the CPU itself: the module starts there, like the transformer on the GPU.
    swap = ComponentSwap(module, torch.device("cpu"), HostMode(keep=keep, pin=False))
    assert swap.on_gpu and swap.host_bytes() == 0

    swap.to_host()  # evicted: the weights are copied out into one buffer
    assert not swap.on_gpu and swap.host_bytes() >= swap.nbytes
    base = swap.copy.buffer.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == base for p in module.parameters())
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())

    swap.to_gpu()  # back: a mover keeps its copy where RAM allows (leaving again is free), else frees it
    assert swap.on_gpu and swap.left_once
    assert (swap.host_bytes() > 0) is keep
    swap.to_host()
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_a_component_loaded_on_the_host_is_moved_into_its_buffer_not_duplicated() -> None:
    module = _module()
    before = _state(module)
    # "meta" stands in for a GPU: the module starts off it, like the text encoder of a swap plan. (Its first
    # visit, which frees the copy of a component that has never had to leave, is measured on the GPU by
    # bench/plans.py: the host bytes held after the first image.)
    swap = ComponentSwap(module, torch.device("meta"), HostMode(keep=True, pin=False))
    assert not swap.on_gpu and swap.host_bytes() >= swap.nbytes
    base = swap.copy.buffer.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == base for p in module.parameters())
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


class _Encoder(torch.nn.Module):
    """A text encoder's shape: a token table, then layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(100, 16)
        self.layer = torch.nn.Linear(16, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.layer(self.embed_tokens(ids))


def test_the_token_table_stays_on_the_host_and_only_the_layers_visit() -> None:
    torch.manual_seed(0)
    encoder = _Encoder()
    table = encoder.embed_tokens.weight
    expected = encoder(torch.tensor([[1, 2, 3]]))
    swap = ComponentSwap(
        encoder, torch.device("meta"), HostMode(keep=False, pin=False), stays_on_host=encoder.embed_tokens
    )
    layer_bytes = sum(p.numel() * p.element_size() for p in encoder.layer.parameters())
    assert swap.nbytes == layer_bytes  # what a visit moves: 1.2 GiB less for CogView4's encoder
    assert swap.host_bytes() >= layer_bytes + table.numel() * table.element_size()  # both counted as host memory
    assert encoder.layer.weight.untyped_storage().data_ptr() == swap.copy.buffer.untyped_storage().data_ptr()
    assert encoder.embed_tokens.weight is table  # never copied into the buffer, never moved
    assert torch.equal(encoder(torch.tensor([[1, 2, 3]])), expected)  # the lookup runs through the hooks unchanged
    swap.close()
    assert not encoder.embed_tokens._forward_hooks and not encoder.embed_tokens._forward_pre_hooks
