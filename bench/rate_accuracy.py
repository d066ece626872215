"""Does a configured send rate hold? A campaign through workers sharing one Redis limit.

    .venv/bin/python bench/rate_accuracy.py [--rate 200] [--seconds 60] [--processes 2]
        [--database-url postgres://postgres@127.0.0.1:5432/skylark_bench]

Sends rate x seconds recipients to Postfix's smtp-sink with EDM_SMTP_RATE set, through one
Celery worker with that many processes, and prints the achieved rate over the steady part
of the send (from the first to the last message, by the time each outcome was recorded),
its error against the configured rate, and the busiest and quietest whole seconds.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import send_throughput as st  # noqa: E402
from smtp_ceiling import free_port, start_smtp_sink  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    recipients = int(args.rate * args.seconds)

    var_dir = Path(tempfile.mkdtemp(prefix="skylark-rate-"))
    port = free_port()
    sink = start_smtp_sink(port)
    options = argparse.Namespace(
        recipients=recipients, dkim="none", database_url=args.database_url,
        pool_size=8, batch_size=None, cpu=False,
    )  # fmt: skip
    env = st.configure(options, var_dir, port)
    env["EDM_SMTP_RATE"] = str(args.rate)
    os.environ["EDM_SMTP_RATE"] = str(args.rate)
    redis_process = None
    try:
        st.prepare_database(options)
        from django.conf import settings

        from config import embedded_redis

        if settings.EDM_EMBEDDED_REDIS:
            redis_process = embedded_redis.start(var_dir)
        from campaigns.models import Campaign
        from delivery.models import Delivery

        started = time.perf_counter()
        st.end_to_end(options, env, args.processes, var_dir / "worker.log")
        wall = time.perf_counter() - started
        campaign = Campaign.objects.latest("id")
        stamps = sorted(
            Delivery.objects.filter(campaign=campaign).values_list("sent_at", flat=True)
        )
        span = (stamps[-1] - stamps[0]).total_seconds()
        achieved = (len(stamps) - 1) / span
        per_second = collections.Counter(int((s - stamps[0]).total_seconds()) for s in stamps)
        whole = [per_second[i] for i in range(1, int(span))]  # full seconds only
        print(
            f"configured {args.rate:.0f}/s, {args.processes} worker processes, "
            f"{len(stamps)} messages in {span:.1f} s (wall {wall:.1f} s)"
        )
        print(
            f"achieved {achieved:.1f}/s, error {100 * (achieved - args.rate) / args.rate:+.2f}%; "
            f"busiest second {max(whole)}, quietest {min(whole)}"
        )
    finally:
        sink.terminate()
        sink.wait(5)
        if redis_process is not None:
            embedded_redis.stop(redis_process)


if __name__ == "__main__":
    main()
