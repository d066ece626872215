"""Print the bounce classifier's accuracy and speed on the labelled corpus (no Django needed).

Usage: .venv/bin/python bench/bounce_accuracy.py [--misses] [--repeat N]
The corpus is $EDM_BOUNCE_CORPUS, else ../shared/corpus/bounces beside the repository.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mailkit.bounces.evaluate import (  # noqa: E402
    evaluate,
    find_corpus,
    leave_one_source_out,
    load_corpus,
)
from mailkit.bounces.kinds import BounceKind  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list every label not matched")
    parser.add_argument("--worst", type=int, default=8, help="worst families to list")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs (best one is kept)")
    args = parser.parse_args()

    corpus = find_corpus(REPO_ROOT)
    if corpus is None:
        print("bounce corpus not found (set EDM_BOUNCE_CORPUS)", file=sys.stderr)
        return 2
    samples = load_corpus(corpus)
    figures = evaluate(samples)
    best = figures.seconds
    for _ in range(max(0, args.repeat - 1)):
        best = min(best, evaluate(samples).seconds)
    figures.seconds = best
    loso = leave_one_source_out(samples)

    print(f"corpus: {corpus}")
    print(f"messages: {figures.messages}   labelled recipients: {figures.labels}")
    print(
        f"recipients found exactly: {figures.recipient_rate:.1%} "
        f"({figures.recipients_found}/{figures.labels})   target >= 97%"
    )
    print(
        f"kind agreement:           {figures.kind_rate:.1%} "
        f"({figures.kind_agreed}/{figures.labels})   target >= 95%"
    )
    print(
        f"reason agreement (coarse, informational): {figures.reason_rate:.1%} "
        f"({figures.reason_agreed}/{figures.reason_labels})"
    )
    print(f"auto-replies counted as bounces: {figures.auto_replies_as_bounces}   must be 0")
    print(f"speed: {figures.messages_per_second:,.0f} messages/second (one core, best of runs)")
    print(
        f"\nleave-one-source-out ({len(loso.families)} families; each judged with the phrases "
        "found only in its own files left out)"
    )
    print(f"  kind agreement:    {loso.kind_rate:.1%}   target >= 95%, no family under 85%")
    print(f"  recipients found:  {loso.recipient_rate:.1%}   target >= 97%")
    print(f"  auto-replies counted as bounces: {loso.auto_replies_as_bounces}")
    print("  worst families:")
    for family in loso.worst(args.worst):
        f = family.figures
        print(
            f"    {family.family:<18} kind {f.kind_rate:6.1%} ({f.kind_agreed}/{f.labels})"
            f"   recipients {f.recipient_rate:6.1%}   phrases left out: {len(family.left_out)}"
        )
    kinds = [k.value for k in BounceKind]
    print("\nconfusion (rows: expected, columns: found)")
    print(" " * 14 + "".join(f"{k:>14}" for k in kinds))
    for want in kinds:
        row = "".join(f"{figures.confusion.get((want, got), 0):>14}" for got in kinds)
        print(f"{want:>14}{row}")
    own = REPO_ROOT / "tests" / "corpus" / "bounces"
    if (own / "expectations.json").is_file():
        own_samples = load_corpus(own)
        own_figures = evaluate(own_samples)
        own_loso = leave_one_source_out(own_samples)
        print(
            f"\nown corpus ({own.relative_to(REPO_ROOT)}: {own_figures.messages} messages, "
            "formats with their sources; written with these rules in view)"
        )
        print(
            f"  kind agreement {own_figures.kind_rate:.1%}   recipients "
            f"{own_figures.recipient_rate:.1%}   leave-one-source-out kinds {own_loso.kind_rate:.1%}"
        )
        for family in own_loso.worst(3):
            f = family.figures
            print(f"    {family.family:<18} kind {f.kind_rate:6.1%} ({f.kind_agreed}/{f.labels})")
    if args.misses:
        print("\nleave-one-source-out kind misses")
        for family in loso.families:
            for miss in family.figures.misses:
                if miss.found_kind != miss.expected_kind:
                    print(
                        f"{family.family}: {miss.file}: want {miss.expected_kind}/"
                        f"{miss.expected_reason}, got {miss.found_kind}/{miss.found_reason}"
                    )
        print("\nmisses")
        for miss in figures.misses:
            flag = "" if miss.recipient_ok else " RECIPIENT"
            print(
                f"{miss.file}: want {miss.expected_recipient} {miss.expected_kind}/"
                f"{miss.expected_reason}, got {list(miss.found_recipients)} "
                f"{miss.found_kind}/{miss.found_reason}{flag}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
