"""Write demo/sample_contacts.csv deterministically (python demo/make_sample.py).

Expected when imported into an empty database (any mode that adds contacts):
    1,000 data rows (lines 2-1001; UTF-8, comma separated, columns email,name,city,plan)
    983 valid, distinct addresses  -> created = 983
    12 invalid addresses           -> rejected invalid_email = 12
    5 duplicates in another case   -> rejected duplicate_in_file = 5
    rejected = 17, total = 1,000. Re-importing: created 0, unchanged 983, rejected 17.
Invalid rows are on lines 101, 181, ..., 981 (every 80th line from 101: 12 lines); duplicates
on lines 150, 350, 550, 750, 950, each the upper-cased address of the line 100 lines earlier
(so each is reported as "same address as line N-100").
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

ROWS = 1000
INVALID = [
    "not-an-email",
    "missing-at.example.com",
    "two@@example.com",
    "trailing-dot@example.com.",
    "space in@example.com",
    "@no-local-part.com",
    "no-domain@",
    "dots..twice@example.com",
    "bad@-hyphen.com",
    "bad@localhost",
    "unicode@exa mple.com",
    "comma,inside@example.com",
]
DUPLICATE_LINES = [150, 350, 550, 750, 950]
SURNAMES = "王李张刘陈杨黄赵吴周"
GIVEN = ["伟", "娜", "芳", "敏", "静", "磊", "洋", "艳", "勇", "军"]
LATIN = ["Alice Martin", "Bob Smith", "Chloé Dubois", "David Müller", "Emma Rossi", "Frank O'Neil"]
CITIES = [
    "北京",
    "上海",
    "广州",
    "深圳",
    "杭州",
    "成都",
    "Paris",
    "Berlin",
    "New York",
    "São Paulo",
]
PLANS = ["free", "pro", "team"]


def build() -> list[list[str]]:
    rng = random.Random(20240601)
    rows: list[list[str]] = []
    invalid = iter(INVALID)
    emails_by_line: dict[int, str] = {}
    for index in range(ROWS):
        line = index + 2
        city = rng.choice(CITIES)
        plan = rng.choice(PLANS)
        if line >= 101 and (line - 101) % 80 == 0 and line <= 981:
            rows.append([next(invalid), "Invalid Row", city, plan])
            continue
        if line in DUPLICATE_LINES:
            original = emails_by_line[line - 100]
            rows.append([original.upper(), "Duplicate Row", city, plan])
            continue
        if index % 3 == 0:
            name = rng.choice(SURNAMES) + rng.choice(GIVEN)
        else:
            name = rng.choice(LATIN)
        email = f"user{index:04d}@example.com" if index % 2 else f"Member.{index:04d}@Example.org"
        emails_by_line[line] = email
        rows.append([email, name, city, plan])
    return rows


def main() -> None:
    rows = build()
    path = Path(__file__).with_name("sample_contacts.csv")
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["email", "name", "city", "plan"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
