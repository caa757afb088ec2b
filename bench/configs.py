"""CogView4-6B's published configs as the benchmarks keep them (one `<component>_config.json` per component,
as in bench/out/cogview4-6b), read in one place so every script finds the same file."""

from __future__ import annotations

import json
from pathlib import Path

from engine import card_profile


def transformer_block_config(configs: Path) -> dict[str, int]:
    """One transformer block's shape, from the folder of configs."""
    return card_profile.block_config_of(json.loads((configs / "transformer_config.json").read_text()))
