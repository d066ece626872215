"""Worker memory over a long send: RSS of every worker process at 10%, 50% and 100%.

    .venv/bin/python bench/worker_memory.py [--recipients 200000] [--processes 2]
        [--database-url postgres://postgres@127.0.0.1:5432/skylark_bench]

Sends a campaign of N recipients through one Celery worker (main process + --processes pool
children) to Postfix's smtp-sink (bench/smtp_ceiling.py), reads VmRSS from /proc/<pid>/status
for every process of the worker's process group once a second, and prints the RSS of each
process and their total when 10%, 50% and 100% of the deliveries are recorded, and the growth
from 10% to 100% (target: within 10%). Without --database-url a scratch SQLite file is used;
without REDIS_URL an embedded Redis.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from send_throughput import (  # noqa: E402
    FROM_EMAIL,
    HTML,
    SUBJECT,
    configure,
    prepare_database,
    start_worker,
)
from smtp_ceiling import free_port, start_smtp_sink  # noqa: E402


def group_rss(pgid: int) -> dict[int, int]:
    """VmRSS in KiB of every live process in the process group."""
    result = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        result[int(entry)] = int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue
    return result


class Sampler(threading.Thread):
    """Every `every` seconds: (elapsed, done fraction, {pid: rss KiB})."""

    def __init__(self, pgid: int, progress, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pgid, self.progress, self.every = pgid, progress, every
        self.samples: list[tuple[float, float, dict[int, int]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            fraction = self.progress()
            self.samples.append((time.monotonic() - started, fraction, group_rss(self.pgid)))
            self.stop.wait(self.every)

    def at(self, fraction: float) -> tuple[float, float, dict[int, int]]:
        """The first sample at or beyond `fraction` of the send."""
        for sample in self.samples:
            if sample[1] >= fraction:
                return sample
        return self.samples[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=200000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--pool-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    args.dkim = "none"

    var_dir = Path(tempfile.mkdtemp(prefix="skylark-memory-"))
    port = free_port()
    sink = start_smtp_sink(port)
    env = configure(args, var_dir, port)
    redis_process = None
    worker = None
    try:
        prepare_database(args)
        from django.conf import settings
        from django.db import close_old_connections, connection

        from campaigns.models import Campaign
        from campaigns.services import campaign_create, campaign_send
        from config import embedded_redis
        from config.celery import app
        from delivery.models import Delivery

        if settings.EDM_EMBEDDED_REDIS:
            redis_process = embedded_redis.start(var_dir)
        print(
            f"{args.recipients} recipients, database {connection.vendor}, one worker with "
            f"{args.processes} processes, pool {args.pool_size}/process, batch {args.batch_size}",
            flush=True,
        )
        campaign = campaign_create(
            name="Memory",
            list_names=["Bench"],
            subject=SUBJECT,
            html=HTML,
            from_email=FROM_EMAIL,
            from_name="Skylark Bench",
        )
        connection.close()
        log = var_dir / "worker.log"
        worker = start_worker(env, args.processes, log)
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > deadline or worker.poll() is not None:
                sys.exit(f"worker did not start; see {log}")

        def progress() -> float:
            close_old_connections()
            done = Delivery.objects.filter(campaign_id=campaign.pk, status="sent").count()
            connection.close()  # the sampler thread keeps no connection between samples
            return done / args.recipients

        sampler = Sampler(worker.pid, progress)
        started = time.perf_counter()
        campaign_send(campaign_id=campaign.pk)
        sampler.start()
        while Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk) != "sent":
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        time.sleep(1.5)  # one last sample at 100%
        sampler.stop.set()
        sampler.join()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        sink.terminate()
        sink.wait(5)
        if redis_process is not None:
            embedded_redis.stop(redis_process)

    print(f"sent in {elapsed:.0f} s ({args.recipients / elapsed:.0f} messages/s)")
    points = [(f"{int(f * 100)}%", sampler.at(f)) for f in (0.10, 0.50, 1.0)]
    pids = sorted(points[-1][1][2])
    main_pid = worker.pid
    names = {pid: "main" if pid == main_pid else f"child {pid}" for pid in pids}
    header = f"{'point':>6} {'t (s)':>6} {'done':>6}"
    header += "".join(f" {names[p]:>13}" for p in pids) + f" {'total':>9}"
    print(header + "   (RSS, MiB)")
    for label, (t, fraction, rss) in points:
        cells = "".join(f" {rss.get(p, 0) / 1024:>13.1f}" for p in pids)
        print(f"{label:>6} {t:>6.0f} {fraction:>6.1%}{cells} {sum(rss.values()) / 1024:>9.1f}")
    first, last = points[0][1][2], points[-1][1][2]
    for pid in pids:
        if first.get(pid):
            growth = last.get(pid, 0) / first[pid] - 1
            print(f"growth 10% -> 100% {names[pid]:>13}: {growth:+.1%}")
    total_growth = sum(last.values()) / sum(first.values()) - 1
    print(f"growth 10% -> 100% {'total':>13}: {total_growth:+.1%} (target: within 10%)")
    peak = max(sum(s[2].values()) for s in sampler.samples)
    print(f"peak total RSS {peak / 1024:.1f} MiB over {len(sampler.samples)} samples")
    changed = [p for p in pids if p not in first]
    if changed:
        print(f"note: processes not present at 10% (restarted children?): {changed}")


if __name__ == "__main__":
    main()
