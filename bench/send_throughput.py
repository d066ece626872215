"""End-to-end send throughput against Postfix's smtp-sink, beside the raw and bare ceilings.

    .venv/bin/python bench/send_throughput.py [--recipients 20000] [--workers 1,2]
        [--dkim none|rsa|ed25519] [--database-url postgres://postgres@127.0.0.1:5432/skylark_bench]
        [--repeat 5] [--cpu]

For each worker count it prints messages per second:
- end to end: a campaign sent by a real Celery worker with that many processes (claim, render,
  compose, sign, send, outcome committed), from "Send" until the campaign is marked sent;
- bare pipeline: the same rendering, composition, signing and pool in that many processes,
  with no database and no Celery;
- raw ceiling: an aiosmtplib pool sending pre-rendered bytes from that many processes;
and the ratios. smtp-sink is started on a free loopback port and stopped at the end (install
it with `apt-get install -y postfix`; the postfix daemon is never started). Without
--database-url a scratch SQLite file is used; without REDIS_URL an embedded Redis.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from smtp_ceiling import free_port, message, start_smtp_sink  # noqa: E402

HTML = (REPO / "demo" / "newsletter.html").read_text(encoding="utf-8")
SUBJECT = "{{ name | default('Friend') }}, 春季新品上市 – spring is here"
FROM_EMAIL = "news@bench.skylark.test"


class CpuMeter:
    """CPU seconds used by each group of processes (workers, PostgreSQL, sink, Redis, the
    bare/raw pool processes) while running: sampled from /proc every 0.1 s (Linux only)."""

    GROUPS = (
        ("celery", "worker"),
        ("postgres", "postgres"),
        ("smtp-sink", "smtp-sink"),
        ("redis", "redis"),
        ("multiprocessing", "bare/raw"),
        ("send_throughput", "bench"),
    )

    def __init__(self) -> None:
        import threading

        self._seen: dict[int, tuple[float, float, str]] = {}
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuMeter:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def _sample(self) -> None:
        ticks = os.sysconf("SC_CLK_TCK")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read()
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    command = handle.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            used = (int(fields[11]) + int(fields[12])) / ticks
            group = next((g for key, g in self.GROUPS if key in command), "")
            pid = int(entry)
            if pid in self._seen:
                first = self._seen[pid][0]
            else:  # counted from now if it ran before we started, else all of its CPU
                first = used if not self._started else 0.0
            self._seen[pid] = (first, used, group)
        self._started = True

    def per_group(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for first, used, group in self._seen.values():
            if group:
                totals[group] = totals.get(group, 0.0) + used - first
        return totals

    def describe(self, messages: int) -> str:
        parts = sorted(self.per_group().items(), key=lambda item: -item[1])
        return ", ".join(f"{g} {t * 1000 / messages:.3f}" for g, t in parts if t > 0.005)


def configure(args: argparse.Namespace, var_dir: Path, sink_port: int) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "EDM_VAR_DIR": str(var_dir),
        "EDM_CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "EDM_SMTP_URL": f"smtp://127.0.0.1:{sink_port}?security=none",
        "EDM_SMTP_POOL_SIZE": str(args.pool_size),
        "LOG_LEVEL": "WARNING",
    }
    if args.batch_size:
        env["EDM_BATCH_SIZE"] = str(args.batch_size)
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    else:
        env["EDM_SQLITE_PATH"] = str(var_dir / "bench.sqlite3")
    os.environ.update(env)
    return env


def contact_fields(i: int) -> tuple[str, str, dict]:
    """The i-th bench contact: email, name, attributes (the same in the database and in the
    bare pipeline's rows)."""
    cities = ["北京", "Paris", "上海", "Berlin", "深圳"]
    name = "张伟" if i % 3 == 0 else f"User {i}"
    return f"user{i}@example{i % 50}.org", name, {"city": cities[i % 5], "plan": "pro" if i % 2 else "free"}  # fmt: skip


def prepare_database(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    call_command("migrate", verbosity=0)
    from contacts.models import Contact, ContactList, Subscription
    from delivery.models import DkimKey
    from mailkit.dkim import generate_dkim_key

    contact_list = ContactList.objects.create(name="Bench")
    batch = 5000
    for start in range(0, args.recipients, batch):
        contacts = Contact.objects.bulk_create(
            Contact(email=email, name=name, attributes=attributes)
            for email, name, attributes in map(
                contact_fields, range(start, min(start + batch, args.recipients))
            )
        )
        Subscription.objects.bulk_create(
            Subscription(contact=c, contact_list=contact_list) for c in contacts
        )
    if args.dkim != "none":
        pem, public = generate_dkim_key(algorithm=args.dkim)
        key = DkimKey(domain="bench.skylark.test", selector="bench", algorithm=args.dkim)
        key.set_private_key(pem)
        key.public_key = public
        key.save()


def start_worker(env: dict[str, str], processes: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=WARNING"]
    queues = f"{env['EDM_CELERY_QUEUE']},{env['EDM_CELERY_QUEUE']}-control"
    argv += [f"--concurrency={processes}", "-Q", queues, "--without-gossip"]
    argv += ["--without-mingle", "-n", f"{env['EDM_CELERY_QUEUE']}-{processes}@%h"]
    return subprocess.Popen(
        argv, cwd=REPO, env={**os.environ, **env}, stdout=log.open("ab"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def end_to_end(
    args: argparse.Namespace, env: dict[str, str], processes: int, log: Path
) -> tuple[float, int]:
    """Messages per second end to end, and the campaign's id."""
    from campaigns.models import Campaign, CampaignStatus
    from campaigns.services import campaign_create, campaign_send
    from config.celery import app

    campaign = campaign_create(
        name=f"Bench {processes}",
        list_names=["Bench"],
        subject=SUBJECT,
        html=HTML,
        from_email=FROM_EMAIL,
        from_name="Skylark Bench",
    )
    worker = start_worker(env, processes, log)
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > deadline or worker.poll() is not None:
                sys.exit(f"worker did not start; see {log}")
        started = time.perf_counter()
        wall = time.time()
        campaign_send(campaign_id=campaign.pk)
        while True:
            status = Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)
            if status == CampaignStatus.SENT:
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        sent = campaign.deliveries.filter(status="sent").count()
        if sent != args.recipients:
            sys.exit(f"only {sent} of {args.recipients} sent; see {log}")
        if args.cpu:  # where the time went: start-up, sending, the end
            from django.db.models import Max, Min

            span = campaign.deliveries.aggregate(first=Min("sent_at"), last=Max("sent_at"))
            first, last = (span[k].timestamp() - wall for k in ("first", "last"))
            print(
                f"  timeline: first message sent at +{first:.2f} s, last at +{last:.2f} s, "
                f"campaign marked sent at +{elapsed:.2f} s; "
                f"{args.recipients / (last - first):.0f}/s between first and last"
            )
        return args.recipients / elapsed, campaign.pk
    finally:
        worker.terminate()
        worker.wait(30)


def _bare_part(job: tuple[int, int, int, int, int]) -> tuple[int, float, float]:
    """Render, compose, sign and send a share of the messages: no database, no Celery.

    The messages are the end-to-end run's, byte for byte but for the per-message ids: the
    campaign is prepared exactly as a worker prepares it (tracked links, open pixel, List-Id
    and List-Unsubscribe, its DKIM key), read from the database once during set-up.
    """
    start, count, port, campaign_id, pool_size = job
    import django

    django.setup()
    from campaigns.models import Campaign
    from campaigns.sending.claims import ClaimedDelivery
    from campaigns.sending.prepare import campaign_prepare
    from mailkit.runner import send_envelopes, shutdown
    from mailkit.smtp import SmtpConfig

    prepared = campaign_prepare(Campaign.objects.get(pk=campaign_id))
    from django.db import connection

    connection.close()
    smtp = SmtpConfig(host="127.0.0.1", port=port, security="none", pool_size=pool_size)
    rows = (
        ClaimedDelivery(i + 1, i + 1, *contact_fields(i), 0, None)
        for i in range(start, start + count)
    )
    started = time.time()  # after set-up: only the pipeline is measured
    sent = sum(1 for r in send_envelopes(smtp, map(prepared.envelope, rows)) if r.tag)
    ended = time.time()
    shutdown()
    return sent, started, ended


def _raw_part(job: tuple[int, int, int, int]) -> tuple[int, float, float]:
    start, count, port, pool_size = job
    from mailkit.runner import send_envelopes, shutdown
    from mailkit.smtp import Envelope, SmtpConfig

    config = SmtpConfig(host="127.0.0.1", port=port, security="none", pool_size=pool_size)
    data = message(0, 8000)
    envelopes = (
        Envelope(f"bounces+{i}@bench.skylark.test", (f"user{i}@example.org",), data, tag=i)
        for i in range(start, start + count)
    )
    started = time.time()
    sent = sum(1 for _ in send_envelopes(config, envelopes))
    ended = time.time()
    shutdown()
    return sent, started, ended


def in_processes(function, jobs: list[tuple]) -> float:
    count = sum(job[1] for job in jobs)
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(jobs)) as pool:
        parts = pool.map(function, jobs)
    sent = sum(part[0] for part in parts)
    if sent != count:
        sys.exit(f"only {sent} of {count} sent")
    # From the first process's start to the last one's end, process start-up excluded.
    return count / (max(part[2] for part in parts) - min(part[1] for part in parts))


def shares(total: int, parts: int) -> list[tuple[int, int]]:
    size = total // parts
    return [(i * size, size if i < parts - 1 else total - i * size) for i in range(parts)]


def measure(
    args: argparse.Namespace, env: dict[str, str], processes: int, port: int, var_dir: Path
) -> float:
    """One end-to-end run and the two ceilings beside it; prints them, returns e2e/bare."""
    from django.db import connection

    connection.close()
    with CpuMeter() as e2e_cpu:
        e2e, campaign_id = end_to_end(args, env, processes, var_dir / f"worker-{processes}.log")
    connection.close()
    with CpuMeter() as bare_cpu:
        bare = in_processes(
            _bare_part,
            [(s, n, port, campaign_id, args.pool_size) for s, n in shares(args.recipients, processes)],
        )  # fmt: skip
    raw = in_processes(
        _raw_part, [(s, n, port, args.pool_size) for s, n in shares(args.recipients, processes)]
    )
    print(
        f"{processes:>9} {e2e:>9.0f}/s {bare:>6.0f}/s {raw:>6.0f}/s "
        f"{e2e / bare:>9.2f} {e2e / raw:>8.2f}",
        flush=True,
    )
    if args.cpu:
        print(f"  CPU ms/message end to end: {e2e_cpu.describe(args.recipients)}")
        print(f"  CPU ms/message bare:       {bare_cpu.describe(args.recipients)}")
    return e2e / bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20000)
    parser.add_argument("--workers", default="1,2", help="worker process counts to measure")
    parser.add_argument("--dkim", choices=["none", "rsa", "ed25519"], default="none")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--pool-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, help="EDM_BATCH_SIZE (default: Skylark's)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each process count this many times (the host's speed drifts between "
        "phases: the median ratio of several runs is the figure to keep)",
    )
    parser.add_argument(
        "--cpu", action="store_true", help="print CPU ms per message of each process group"
    )
    args = parser.parse_args()

    var_dir = Path(tempfile.mkdtemp(prefix="skylark-bench-"))
    port = free_port()
    sink = start_smtp_sink(port)
    env = configure(args, var_dir, port)
    redis_process = None
    try:
        prepare_database(args)
        from django.conf import settings

        from config import embedded_redis

        if settings.EDM_EMBEDDED_REDIS:
            redis_process = embedded_redis.start(var_dir)
        from django.db import connection

        print(
            f"{args.recipients} recipients, DKIM {args.dkim}, database {connection.vendor}, "
            f"redis {'embedded' if settings.EDM_EMBEDDED_REDIS else settings.REDIS_URL}, "
            f"pool {args.pool_size}/process, batch {settings.EDM_BATCH_SIZE}"
        )
        print(
            f"{'processes':>9} {'end-to-end':>11} {'bare':>8} {'raw':>8} {'e2e/bare':>9} {'e2e/raw':>8}"
        )
        for processes in [int(p) for p in args.workers.split(",")]:
            ratios = []
            for _ in range(args.repeat):
                ratios.append(measure(args, env, processes, port, var_dir))
            if args.repeat > 1:
                ratios.sort()
                print(
                    f"  {processes} processes, {args.repeat} runs: e2e/bare median "
                    f"{statistics.median(ratios):.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f})",
                    flush=True,
                )
    finally:
        sink.terminate()
        sink.wait(5)
        if redis_process is not None:
            embedded_redis.stop(redis_process)


if __name__ == "__main__":
    main()
