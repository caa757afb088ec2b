"""The host RAM the bot counts on: HOST_RAM_GIB, else the machine's, else (where less) its cgroup's limit, so a
bot in a container with `--memory=10g` keeps no more host copies than that allows."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from engine import device
from engine.device import cgroup_memory_limit, host_ram

GIB = 1024**3


def _v2(tmp_path: Path, path: str, limits: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for group, value in limits.items():
        (root / group).mkdir(parents=True, exist_ok=True)
        (root / group / "memory.max").write_text(value + "\n")
    (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    membership = tmp_path / "self-cgroup"
    membership.write_text(f"0::{path}\n")
    return membership, root


def test_cgroup_v2_takes_the_smallest_limit_on_the_way_up(tmp_path: Path) -> None:
    membership, root = _v2(tmp_path, "/bot.slice/bot.service", {"": "max", "bot.slice": str(10 * GIB)})
    (root / "bot.slice" / "bot.service" / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(membership, root) == 10 * GIB
    (root / "bot.slice" / "bot.service" / "memory.max").write_text(str(6 * GIB))
    assert cgroup_memory_limit(membership, root) == 6 * GIB


def test_no_limit_or_no_cgroup_files_means_none(tmp_path: Path) -> None:
    membership, root = _v2(tmp_path, "/", {"": "max"})
    assert cgroup_memory_limit(membership, root) is None
    assert cgroup_memory_limit(tmp_path / "missing", root) is None  # Windows, macOS


def test_cgroup_v1_reads_the_memory_controller_and_ignores_its_no_limit_value(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    group = root / "memory" / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text(str(9223372036854771712))
    membership = tmp_path / "self-cgroup"
    membership.write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert cgroup_memory_limit(membership, root) is None
    (group / "memory.limit_in_bytes").write_text(str(12 * GIB))
    assert cgroup_memory_limit(membership, root) == 12 * GIB


def test_host_ram_is_the_setting_else_the_smaller_of_the_machine_and_its_cgroup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine = psutil.virtual_memory().total / GIB
    monkeypatch.setattr(device, "cgroup_memory_limit", lambda: 10 * GIB)
    assert host_ram() == pytest.approx(min(machine, 10.0))
    assert host_ram(14.0) == 14.0
    monkeypatch.setattr(device, "cgroup_memory_limit", lambda: None)
    assert host_ram() == pytest.approx(machine)
