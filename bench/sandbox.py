"""What confining code nodes costs: start-up and job latency of the code sandbox.

For each confinement (``bwrap``: namespaces and a read-only view; ``none``: resource
limits only) it measures, on real child processes:

- cold: no warm pool, so each job starts its process (bwrap + interpreter + the curated
  imports) and then runs ``result = 1``;
- warm: a warm pool of 2, one job at a time with a pause that lets the pool refill, so
  the job finds a started process (what a task normally sees);
- back-to-back: jobs one after another with no pause (the pool refills while they run),
  reported as jobs per second.

Both confinements run the same interpreter, so the difference is what confinement costs.

Usage: python bench/sandbox.py [--jobs 40] [--confinement bwrap none]
Needs bubblewrap (scripts/bootstrap.sh installs it) for the bwrap figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from flowyard_executor.sandbox import (
    CodeSandbox,
    SandboxLimits,
    SandboxUnavailable,
    resolve_confinement,
)

LIMITS = SandboxLimits(cpu_seconds=10, wall_seconds=30.0)
JOB = "result = 1"


def summary(label: str, samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"  {label:<12} median {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms   "
        f"min {ordered[0]:7.1f} ms   (n={len(ordered)})"
    )


async def timed_job(box: CodeSandbox) -> float:
    started = time.perf_counter()
    result = await box.run(JOB, {})
    elapsed = (time.perf_counter() - started) * 1000
    if not result.ok:
        raise SystemExit(f"the job failed: {result.error_code}: {result.error_message}")
    return elapsed


async def measure(kind: str, jobs: int, python: str) -> None:
    try:
        confinement = await asyncio.to_thread(resolve_confinement, kind, python)
    except SandboxUnavailable as exc:
        print(f"{kind}: unavailable: {exc}")
        return
    print(f"{kind}: {confinement.describe()}")

    async with CodeSandbox(LIMITS, warm_processes=0, confinement=confinement) as box:
        cold = [await timed_job(box) for _ in range(jobs)]
    print(summary("cold", cold))

    async with CodeSandbox(LIMITS, warm_processes=2, confinement=confinement) as box:
        warm = []
        for _ in range(jobs):
            await asyncio.sleep(0.15)  # the pool refills
            warm.append(await timed_job(box))
    print(summary("warm", warm))

    async with CodeSandbox(LIMITS, warm_processes=2, confinement=confinement) as box:
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        for _ in range(jobs):
            await timed_job(box)
        elapsed = time.perf_counter() - started
    print(f"  back-to-back {jobs / elapsed:7.1f} jobs/s (one at a time, pool of 2)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--confinement", nargs="+", default=["bwrap", "none"])
    args = parser.parse_args()
    # Both confinements run the same interpreter (the one bwrap can use), for a fair comparison.
    try:
        python = (await asyncio.to_thread(resolve_confinement, "bwrap")).python
    except SandboxUnavailable:
        python = ""
    for kind in args.confinement:
        await measure(kind, args.jobs, python)


if __name__ == "__main__":
    asyncio.run(main())
