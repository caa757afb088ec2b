"""FolderResults: numeric names, atomic writes, and no path outside OUTPUT_DIR is ever read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from db.models import Job, JobState
from db.results import FolderResults, ResultFile, UnsafeResult, result_name
from tests.queue_helpers import what, who


def done_job(job_id: int, paths: list[str]) -> Job:
    return Job(
        id=job_id, requester=who(), request=what(), state=JobState.DONE, attempts=1, created_at=0.0, result_paths=paths
    )


async def test_save_writes_numeric_names_atomically_and_read_returns_them(tmp_path: Path) -> None:
    store = FolderResults(tmp_path / "out")
    paths = await store.save(42, [b"first", b"second"])
    assert [Path(p).name for p in paths] == ["job0000042_0.png", "job0000042_1.png"]
    assert all(Path(p).parent == (tmp_path / "out").resolve() for p in paths)
    assert sorted(os.listdir(tmp_path / "out")) == ["job0000042_0.png", "job0000042_1.png"], "no temp files left"
    files = await store.read(done_job(42, paths))
    assert files == [ResultFile("job0000042_0.png", b"first"), ResultFile("job0000042_1.png", b"second")]
    assert await store.read(done_job(42, paths), count=1) == files[:1], "a Vary reads only the first"


@pytest.mark.parametrize("bad", [-1, True, "7", 1.5])
def test_names_are_built_from_numbers_only(bad: object) -> None:
    with pytest.raises(UnsafeResult):
        result_name(bad, 0)  # type: ignore[arg-type]
    with pytest.raises(UnsafeResult):
        result_name(1, bad)  # type: ignore[arg-type]


async def test_paths_outside_the_folder_are_refused(tmp_path: Path) -> None:
    store = FolderResults(tmp_path / "out")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_bytes(b"not a result")
    os.symlink(tmp_path / "secret.png", tmp_path / "out" / "job0000001_0.png")
    for recorded in (
        str(tmp_path / "secret.png"),
        str(tmp_path / "out" / ".." / "secret.png"),
        str(tmp_path / "out" / "notes.txt"),
        str(tmp_path / "out" / "job0000001_0.png"),  # a link leading out
        "/etc/passwd",
    ):
        with pytest.raises(UnsafeResult):
            await store.read(done_job(1, [recorded]))
        with pytest.raises(UnsafeResult):
            await store.delete(done_job(1, [recorded]))
    assert (tmp_path / "secret.png").read_bytes() == b"secret"


async def test_missing_file_is_not_found_and_reading_writes_nothing(tmp_path: Path) -> None:
    store = FolderResults(tmp_path / "out")
    paths = await store.save(3, [b"x"])
    os.unlink(paths[0])
    with pytest.raises(FileNotFoundError):
        await store.read(done_job(3, paths))
    with pytest.raises(FileNotFoundError):
        await store.read(done_job(3, []))
    assert os.listdir(tmp_path / "out") == []


async def test_delete_removes_the_files(tmp_path: Path) -> None:
    store = FolderResults(tmp_path / "out")
    paths = await store.save(5, [b"a", b"b"])
    await store.delete(done_job(5, paths))
    await store.delete(done_job(5, paths))  # twice is fine
    assert os.listdir(tmp_path / "out") == []


async def test_a_full_disk_raises_oserror_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FolderResults(tmp_path / "out")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        await store.save(9, [b"big"])
    assert os.listdir(tmp_path / "out") == []
