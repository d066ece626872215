"""PostgreSQL server CPU per message of the send path's statements, without SMTP or Celery.

Materializes a campaign of N recipients, takes them for sending a chunk at a time (a range
lease and reads, as a batch task does; or, with --per-row, the per-row claims of the
sweeper's open-ended tasks) and records an outcome for each, 250 at a time. Prints the CPU
the database backend spent on each step, per message, read from /proc (the server must run
on this machine), and the client's own CPU. It drops and re-creates the schema of the
database it is given (use one of its own), and empties the deliveries before each run.

    .venv/bin/python bench/db_cost.py --database-url postgres://postgres@127.0.0.1:5432/skylark_bench
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

STEPS = ("materialize", "take", "record")


def backend_cpu() -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prepare(recipients: int) -> None:
    """The bench's contacts, as bench/send_throughput.py creates them, with statistics."""
    from django.db import connection
    from send_throughput import prepare_database

    prepare_database(argparse.Namespace(recipients=recipients, dkim="none"))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def one_run(recipients: int, per_row: bool) -> dict[str, tuple[float, float]]:
    from django.db import connection
    from django.utils import timezone
    from send_throughput import FROM_EMAIL, HTML, SUBJECT

    from campaigns.models import Campaign
    from campaigns.sending import claims
    from campaigns.services import campaign_create
    from delivery import services
    from delivery.models import DeliveryStatus
    from mailkit.outcomes import Outcome

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE delivery_deliveryevent, delivery_delivery CASCADE")
    campaign = campaign_create(
        name="Cost", list_names=["Bench"], subject=SUBJECT, html=HTML, from_email=FROM_EMAIL
    )
    Campaign.objects.filter(pk=campaign.pk).update(status="sending")
    lists = list(campaign.lists.values_list("id", flat=True))
    spent: dict[str, tuple[float, float]] = {}
    mark = (backend_cpu(), time.process_time())

    def step(name: str) -> None:
        nonlocal mark
        now = (backend_cpu(), time.process_time())
        spent[name] = (now[0] - mark[0], now[1] - mark[1])
        mark = (backend_cpu(), time.process_time())

    for low in range(1, recipients + 1, 5000):
        claims.deliveries_materialize(
            campaign_id=campaign.pk, list_ids=lists, contact_ids=(low, low + 4999)
        )
    step("materialize")
    ids = list(campaign.deliveries.order_by("id").values_list("id", flat=True))
    ranges = [(ids[i], ids[min(i + 999, len(ids) - 1)]) for i in range(0, len(ids), 1000)]
    mark = (backend_cpu(), time.process_time())  # the ranges are the dispatch's work
    taken = []
    if per_row:
        while rows := claims.deliveries_claim(
            campaign_id=campaign.pk, limit=800, list_ids=lists, only_if_sending=True
        ):
            taken += rows
    else:
        for low, high in ranges:  # one lease per batch task's range
            lease = claims.deliveries_lease(
                campaign_id=campaign.pk, id_from=low, id_to=high, holder=f"bench-{low}"
            )
            after, limit = low - 1, 800
            while rows := claims.deliveries_read(
                lease=lease, after=after, limit=limit, list_ids=lists
            ):
                taken += rows
                after = rows[-1].id
                if len(rows) < limit:  # the range is read (as a batch task stops)
                    break
            claims.deliveries_lease_end(lease)
    step("take")
    now = timezone.now()
    outcomes = [
        Outcome(row.id, DeliveryStatus.SENT, "", 250, "2.0.0", "250 2.0.0 Ok: queued as 4F2A9",
                now, message_id=f"<{row.id}.bench@bench.skylark.test>")
        for row in taken
    ]  # fmt: skip
    for start in range(0, len(outcomes), 250):
        services.deliveries_record(outcomes[start : start + 250])
    step("record")
    assert len(taken) == recipients, (len(taken), recipients)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--recipients", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--per-row", action="store_true", help="per-row claims, not leases")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="both ways, alternating run by run (the host's speed drifts between runs)",
    )
    args = parser.parse_args()
    os.environ.update(DJANGO_SETTINGS_MODULE="config.settings", DATABASE_URL=args.database_url)
    import django

    django.setup()
    prepare(args.recipients)
    ways = [False, True] if args.compare else [args.per_row]
    per_step = {way: {name: [] for name in (*STEPS, "client", "total")} for way in ways}
    for _ in range(args.runs):
        for way in ways:
            spent = one_run(args.recipients, way)
            values = per_step[way]
            for name in STEPS:
                values[name].append(spent[name][0] * 1000 / args.recipients)
            values["client"].append(sum(c for _, c in spent.values()) * 1000 / args.recipients)
            values["total"].append(sum(b for b, _ in spent.values()) * 1000 / args.recipients)
    for way, values in per_step.items():
        how = "per-row claims" if way else "range leases"
        print(f"{args.recipients} recipients, {how}, {args.runs} runs; median ms per message:")
        for name in (*STEPS, "client"):
            label = "client (all steps)" if name == "client" else f"server, {name}"
            print(f"  {label:<22} {statistics.median(values[name]):.4f}")
        totals = values["total"]
        print(
            f"  {'server, total':<22} {statistics.median(totals):.4f} "
            f"(runs: {', '.join(f'{t:.4f}' for t in sorted(totals))})"
        )


if __name__ == "__main__":
    main()
