"""``replay``: old objects or dead letters through the live path, exactly once (:mod:`handlers.entry.replay`)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from handlers.entry.cli.args import EXIT_FAILURE, EXIT_OK, UsageError, _load, _runtime
from handlers.entry.cli.output import Output, Progress, bar, clean

if TYPE_CHECKING:
    from handlers.entry.replay import Item, ReplaySpec, Summary

SHOWN_ITEMS = 20  # items listed per outcome in the human summary (--json lists all)


def add_parser(sub: Any, common: argparse.ArgumentParser, time_arg: Any) -> None:
    p = sub.add_parser(
        "replay",
        parents=[common],
        help="replay old objects or dead letters through a trigger, exactly once (backfill)",
        description="Feed objects under a bucket prefix or glob, or the messages of a dead-letter "
        "subscription, through TRIGGER as live deliveries. What already ran is skipped by its run key; "
        "an interrupted replay continues where it stopped when run again with the same options.",
    )
    p.add_argument("--trigger", required=True, help="the trigger the events are delivered to")
    src = p.add_argument_group("source (one of)")
    src.add_argument("--bucket", help="objects of this bucket")
    src.add_argument(
        "--subscription", metavar="projects/P/subscriptions/S", help="a dead-letter subscription"
    )
    obj = p.add_argument_group("objects")
    obj.add_argument("--prefix", help="only names starting with this")
    obj.add_argument("--glob", help="only names matching this glob (** crosses /)")
    obj.add_argument("--since", type=time_arg, help="only objects updated at or after (RFC 3339)")
    obj.add_argument("--until", type=time_arg, help="only objects updated before (RFC 3339)")
    p.add_argument(
        "--dry-run", action="store_true", help="show what would launch and be skipped; launch nothing"
    )
    p.add_argument("--rerun", action="store_true", help="start a new generation of runs even where one ran")
    p.add_argument("--rate", metavar="N/s", help="at most N launches a second (also N/m, N/h)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace, out: Output) -> int:
    # The launch stack loads only for this command (validate, explain, graph stay light).
    from handlers.entry.replay import Item, Replay, ReplayError, ReplaySpec, parse_rate

    config = _load(args)
    spec = ReplaySpec(
        trigger=args.trigger,
        bucket=args.bucket,
        prefix=args.prefix,
        glob=args.glob,
        since=args.since,
        until=args.until,
        subscription=args.subscription,
        rerun=args.rerun,
    )
    try:
        rate = parse_rate(args.rate) if args.rate else None
        spec.validate(config.triggers)
    except ReplayError as exc:
        raise UsageError(exc.message) from None
    progress = Progress(out.stderr, enabled=True)
    started = time.monotonic()

    def show(item: Item, summary: Summary, *, force: bool = False) -> None:
        c = summary.counts()
        elapsed = max(time.monotonic() - started, 1e-6)
        verb = "would launch" if summary.dry_run else "launched"
        done = (
            bar(summary.seen, summary.expected, elapsed)
            if summary.expected is not None
            else f"{summary.seen} ({summary.seen / elapsed:.0f}/s)"
        )
        progress.update(
            f"replayed {done}: {verb} {c['launched']}, "
            + (f"joined {c['joined']}, " if c["joined"] else "")
            + f"skipped {c['skipped']}, failed {c['failed']}, unmatched {c['unmatched']}",
            force=force,
        )

    replay = Replay(_runtime(config), spec, dry_run=args.dry_run, rate=rate, on_item=show, count_first=True)
    try:
        summary = replay.run()
    except KeyboardInterrupt:
        progress.done()
        out.note("interrupted: run the same command again to continue where it stopped")
        raise
    if summary.seen:
        show(summary.launched[-1] if summary.launched else Item("", ""), summary, force=True)
    progress.done()
    if out.json:
        out.emit(summary.to_json())
    else:
        print_summary(out, spec, summary)
    return EXIT_FAILURE if summary.failed else EXIT_OK


def print_summary(out: Output, spec: ReplaySpec, summary: Summary) -> None:
    source = (
        f"gs://{spec.bucket}/{spec.glob or spec.prefix or ''}" if spec.bucket else spec.subscription or ""
    )
    flags = [
        "dry run: nothing launched" if summary.dry_run else "",
        f"rerun generation {summary.generation}" if summary.generation else "",
        "resumed" if summary.resumed else "",
    ]
    out.line(f"replay {summary.replay_id}  trigger {summary.trigger}  {clean(source)}")
    if any(flags):
        out.line("  " + "; ".join(f for f in flags if f))
    if spec.rerun and summary.dry_run:
        out.line(f"  --rerun: a real replay would start generation {summary.generation}")
    verb = "would launch" if summary.dry_run else "launched"
    for label, items, colour in (
        (verb, summary.launched, "green"),
        ("would join" if summary.dry_run else "joined", summary.joined, "green"),
        ("skipped", summary.skipped, "dim"),
        ("failed", summary.failed, "red"),
        ("unmatched", summary.unmatched, "dim"),
    ):
        if label in ("joined", "would join") and not items:
            continue  # only batched triggers join windows
        out.line(f"{out.paint(label.ljust(12), colour)}  {len(items)}")
        for item in items[:SHOWN_ITEMS]:
            why = f"  ({item.reason})" if item.reason else ""
            out.line(f"  {item.run_key or '-':<32}  {clean(item.source)}{clean(why)}")
        if len(items) > SHOWN_ITEMS:
            out.line(f"  ... {len(items) - SHOWN_ITEMS} more (--json lists all)")
