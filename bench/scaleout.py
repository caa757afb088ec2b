"""Scale-out: jobs/minute with 1, 2 and 4 GPU workers on PostgreSQL, and the dispatch overhead per job.

Real `python -m engine worker` processes (tiny CogView4 on the CPU) on a throw-away PostgreSQL
server, fed from a paused queue that is then resumed. Every denoising step sleeps
ENGINE_STEP_DELAY, so a job's length is set by sleeping, not by the CPU: this machine has
2 cores and 4 workers, and compute per step of the tiny model is ~3 ms next to the delay.
What it measures is therefore the machinery: fetch, claim, progress, storing the PNG in the
database, the next fetch.

    python bench/scaleout.py                  # print a markdown block
    python bench/scaleout.py --write          # and put it in bench/RESULTS.md ("## Scale-out")
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))

from db.models import JobState  # noqa: E402
from tests.cluster import Cluster, request, requester  # noqa: E402
from tests.pgserver import PgServer, admin_sql  # noqa: E402

SECTION = "## Scale-out"
RESULTS = REPO / "bench" / "RESULTS.md"


@dataclass(frozen=True)
class Run:
    workers: int
    jobs: int
    span_s: float  # first claim → last result stored
    fetch_to_claim: list[float]  # procrastinate fetched the token → our job row claimed
    claim_to_engine: list[float]  # claimed → engine.generate called
    claim_to_first_step: list[float]  # claimed → first step done, minus the model's work before it
    engine_to_done: list[float]  # engine returned → PNG stored and job done (one transaction)
    done_to_next_fetch: list[float]  # same worker: job done → next token fetched
    off_engine_per_job: float  # wall time of busy workers not spent inside the engine, per job
    per_worker: dict[str, int]

    @property
    def jobs_per_min(self) -> float:
        return self.jobs / self.span_s * 60


async def one_run(
    server: PgServer, model: Path, folder: Path, workers: int, jobs: int, steps: int, delay: float
) -> Run:
    name = f"scale_{workers}_{int(time.time() * 1000) % 10**8}"
    await asyncio.to_thread(admin_sql, server.url(), f"CREATE DATABASE {name}")
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    cluster = await Cluster(server.url(name), model, folder, step_delay=delay).open()
    names = [f"w{i}" for i in range(workers)]
    try:
        for worker in names:
            cluster.start_worker(worker, progress_every=1.0, stalled_after=30.0, heartbeat=5.0, poll=5.0)
        await cluster.wait_ready(*names, timeout=180)
        await cluster.queue.set_paused(True)
        ids = [
            (await cluster.queue.enqueue(requester(1 + n % 4), request(f"job {n}", steps=steps, seed=n))).job_id
            for n in range(jobs)
        ]
        await cluster.queue.set_paused(False)
        done = await cluster.wait_jobs(ids, timeout=60 + jobs * steps * delay * 2)
        assert all(job.state is JobState.DONE for job in done), [(j.id, j.state, j.error) for j in done]
        rows = cluster.sql(
            "SELECT j.id, j.worker_id, j.started_at, j.finished_at, j.timings_json, "
            "extract(epoch FROM (SELECT max(e.at) FROM procrastinate_events e "
            "  WHERE e.job_id = j.token_id AND e.type = 'started')) "
            "FROM jobs j ORDER BY j.started_at"
        )
    finally:
        await cluster.close()
    return summarise(rows, workers)


def summarise(rows: list[tuple], workers: int) -> Run:
    fetch_to_claim, claim_to_engine, claim_to_first, engine_to_done, next_fetch = [], [], [], [], []
    per_worker: dict[str, list[tuple]] = {}
    off_engine = 0.0
    for job_id, worker, started, finished, timings_json, fetched in rows:
        t = json.loads(timings_json)
        fetch_to_claim.append(started - float(fetched))
        claim_to_engine.append(t["claim_to_engine_s"])
        # before the first step the model encodes the prompt and runs one step (its delay included)
        claim_to_first.append(t["claim_to_first_step_s"] - t["encode_s"] - t["step_s"])
        engine_to_done.append(finished - (started + t["claim_to_engine_s"] + t["total_s"]))
        per_worker.setdefault(worker, []).append((started, finished, float(fetched), t["total_s"], job_id))
    for jobs in per_worker.values():
        jobs.sort()
        for previous, following in itertools.pairwise(jobs):
            next_fetch.append(following[2] - previous[1])
        busy = jobs[-1][1] - jobs[0][2]  # first fetch → last done
        off_engine += busy - sum(job[3] for job in jobs)
    span = max(r[3] for r in rows) - min(float(r[5]) for r in rows)
    return Run(
        workers=workers,
        jobs=len(rows),
        span_s=span,
        fetch_to_claim=fetch_to_claim,
        claim_to_engine=claim_to_engine,
        claim_to_first_step=claim_to_first,
        engine_to_done=engine_to_done,
        done_to_next_fetch=next_fetch,
        off_engine_per_job=off_engine / len(rows),
        per_worker={w: len(j) for w, j in sorted(per_worker.items())},
    )


def ms(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values) * 1000:.1f} (max {max(values) * 1000:.1f})"


def render(runs: dict[int, list[Run]], steps: int, delay: float, jobs_per_worker: int, repeats: int) -> str:
    def median_rate(n: int) -> float:
        return statistics.median(r.jobs_per_min for r in runs[n])

    ideal = 60 / (steps * delay)
    lines = [
        SECTION,
        "",
        f"Measured {dt.date.today().isoformat()} with `python bench/scaleout.py` (issue 7).",
        "",
        f"Real `python -m engine worker` processes (tiny CogView4 on the CPU, `OMP_NUM_THREADS=1`) on one "
        f"PostgreSQL {server_version()} server on the same machine. Each job: 64×64, {steps} steps, "
        f"`ENGINE_STEP_DELAY={delay}` s, so ~{steps * delay:.1f} s of sleeping per job against ~3 ms of compute per "
        f"step: on this 2-core machine the sleep, not the CPU, sets the pace, which is what makes 4 workers "
        f"meaningful here. {jobs_per_worker} jobs per worker from 4 users, queued while paused, then resumed; "
        f"median of {repeats} runs (min–max in brackets). Ideal for one worker: {ideal:.1f} jobs/min.",
        "",
        "| workers | jobs/min | speed-up vs 1 | per-worker efficiency |",
        "|---|---|---|---|",
    ]
    base = median_rate(1)
    for n in sorted(runs):
        rates = [r.jobs_per_min for r in runs[n]]
        lines.append(
            f"| {n} | {median_rate(n):.1f} ({min(rates):.1f}–{max(rates):.1f}) | "
            f"{median_rate(n) / base:.2f}× | {median_rate(n) / base / n:.0%} |"
        )
    every = [r for rs in runs.values() for r in rs]

    def pooled(attr: str) -> list[float]:
        return [v for r in every for v in getattr(r, attr)]

    lines += [
        "",
        "Dispatch overhead per job, all runs pooled, median (max) in ms:",
        "",
        "| stage | ms |",
        "|---|---|",
        f"| procrastinate fetch → job claimed | {ms(pooled('fetch_to_claim'))} |",
        f"| claimed → engine starts | {ms(pooled('claim_to_engine'))} |",
        f"| **claimed → first step, minus the model's own work** (prompt encode + one step) | "
        f"{ms(pooled('claim_to_first_step'))} |",
        f"| engine done → PNG in the database, job done, result notice queued | {ms(pooled('engine_to_done'))} |",
        f"| job done → same worker fetches its next job | {ms(pooled('done_to_next_fetch'))} |",
        f"| all time a busy worker spends outside the engine, per job | "
        f"{statistics.median(r.off_engine_per_job for r in every) * 1000:.1f} |",
        "",
        f"Machine: `nproc` = {os.cpu_count()}, {platform.processor() or platform.machine()}, "
        f"Linux {platform.release()}, Python {platform.python_version()}.",
        "",
        "Reproduce: `python bench/scaleout.py` (needs `apt-get install postgresql` and the cluster extra; "
        "add `--write` to update this section).",
    ]
    return "\n".join(lines) + "\n"


def server_version() -> str:
    from tests.pgserver import find_bin_dir

    folder = find_bin_dir()
    return folder.parent.name if folder is not None else "?"


def write_section(block: str, results: Path = RESULTS) -> None:
    """Replace the scale-out section of RESULTS.md (up to the next '## ' heading), or append it."""
    text = results.read_text(encoding="utf-8")
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    results.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


async def main_async(args: argparse.Namespace) -> str:
    from tools.tiny import write_tiny_model

    root = Path(tempfile.mkdtemp(prefix="scaleout-"))
    model = await asyncio.to_thread(write_tiny_model, root / "tiny")
    runs: dict[int, list[Run]] = {n: [] for n in args.workers}
    with PgServer() as server:
        for repeat in range(args.repeats):
            for n in args.workers:
                run = await one_run(
                    server, model, root / f"r{repeat}-w{n}", n, n * args.jobs_per_worker, args.steps, args.step_delay
                )
                runs[n].append(run)
                print(
                    f"{n} worker(s): {run.jobs_per_min:.1f} jobs/min, claim→first step overhead "
                    f"{ms(run.claim_to_first_step)} ms, per worker {run.per_worker}",
                    file=sys.stderr,
                )
    return render(runs, args.steps, args.step_delay, args.jobs_per_worker, args.repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs-per-worker", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--step-delay", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"update the {SECTION!r} section of {RESULTS}")
    args = parser.parse_args()
    block = asyncio.run(main_async(args))
    print(block)
    if args.write:
        write_section(block)
        print(f"Wrote the {SECTION!r} section of {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
