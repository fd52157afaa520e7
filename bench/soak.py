"""Soak: thousands of jobs through Postgres + Redis + 2 workers + the emulator with faults.

Prints accepted and completed jobs/s, p50/p99 end-to-end latency (created_at -> completed_at, from
Postgres), endpoint calls per job, and the lost / duplicated counts, which must both be 0:
- lost: a job answered 202 that is not terminal at the end, or is missing;
- duplicated: jobs beyond one per Idempotency-Key answered 202 (a key that produced two jobs).
The figures are counted from Postgres first; then ``Cluster.assert_nothing_lost`` checks the
invariants of the chaos tests (one result set per job among them), and a broken one is a FAIL.
Baseline in the same run: the emulator's capacity / latency, the most any client could achieve.

    .venv/bin/python -m bench.soak [--jobs 2000] [--latency-ms 150] [--faults 500=0.03,429=0.02]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import select

from db.engine import make_sync_engine
from db.models import Job
from medparse.settings import Settings
from runtime.migrate import upgrade
from tests.support.cluster import Cluster, Submissions
from tests.support.factories import new_tenant
from tests.support.throwaway import REDIS_URL, throwaway_database, throwaway_namespace

CAPACITY = 8


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-ms", type=int, default=150)
    parser.add_argument("--faults", default="500=0.03,429=0.02")
    parser.add_argument("--submitters", type=int, default=4)
    args = parser.parse_args()

    with throwaway_database("medparse_soak") as database, throwaway_namespace("mpsoak") as namespace:
        tmp = Path(tempfile.mkdtemp(prefix="medparse-soak-"))
        settings = Settings(
            database_url=database.async_url, redis_url=REDIS_URL, redis_namespace=namespace, data_dir=tmp / "var"
        )
        return run(settings, tmp, args)


def run(settings: Settings, tmp: Path, args: argparse.Namespace) -> int:
    cluster = Cluster(settings, tmp, latency_ms=args.latency_ms, faults=args.faults)
    try:
        upgrade(settings)
        _, key = new_tenant(settings)
        cluster.env["MEDPARSE_LOG_LEVEL"] = "WARNING"
        cluster.env["MEDPARSE_TENANT_MAX_QUEUED_JOBS"] = str(args.jobs * 2)
        cluster.start_all(workers=2)
        subs = Submissions()
        per = args.jobs // args.submitters
        started = time.monotonic()
        threads = [
            threading.Thread(target=cluster.submit, args=(key, per, subs), kwargs={"prefix": f"s{n}"})
            for n in range(args.submitters)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        accepted_s = time.monotonic() - started
        job_ids = list(subs.accepted.values())
        cluster.wait_terminal(job_ids, timeout_s=max(300, len(job_ids) / 5))
        total_s = time.monotonic() - started
        engine = make_sync_engine(settings, system_scope=True)
        with engine.begin() as conn:
            rows = conn.execute(select(Job.created_at, Job.completed_at, Job.status, Job.attempts)).all()
        engine.dispose()
        latencies = [(done - created).total_seconds() for created, done, _, _ in rows if done is not None]
        lost = len(job_ids) - sum(1 for r in rows if r[2] in ("succeeded", "failed", "canceled"))
        duplicated = len(rows) - len(set(job_ids))  # jobs beyond one per accepted key (this database is the run's own)
        completed_per_s = len(rows) / total_s
        ceiling = CAPACITY / (args.latency_ms / 1000)
        print(f"jobs submitted           {len(job_ids)} (client retries {subs.retries})")
        print(f"accepted                 {len(job_ids) / accepted_s:8.1f} jobs/s")
        print(f"completed                {completed_per_s:8.1f} jobs/s   (endpoint ceiling {ceiling:.1f} jobs/s,"
              f" ratio {completed_per_s / ceiling:.2f})")
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(f"end-to-end latency       p50 {p50:.2f} s   p99 {p99:.2f} s"
              f"   mean {statistics.fmean(latencies):.2f} s (includes queueing behind the backlog)")
        print(f"lost                     {lost}   {'PASS' if lost == 0 else 'FAIL'}")
        print(f"duplicated               {duplicated}   {'PASS' if duplicated == 0 else 'FAIL'}")
        try:
            figures = cluster.assert_nothing_lost(subs, min_succeeded_ratio=0.0)
        except AssertionError as broken:
            print(f"invariants               FAIL: {broken}")
            return 1
        print(f"succeeded / failed       {figures['succeeded']} / {figures['failed']}")
        print(f"endpoint calls per job   {figures['endpoint_calls'] / len(job_ids):.3f}")
        return 0 if lost == 0 and duplicated == 0 else 1
    finally:
        cluster.stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
