"""`python -m pipeline.cache [--older-than 30d] [--max-size 5GB] [--sweep SWEEP/] [--dry-run]`:
what the export cache holds, per kind, and pruning it: entries unused for longer than an age, then
the least recently used until it fits a size; with --sweep, that sweep's cells its sweep.json no
longer references. Prints what it freed. Without a bound it only lists.

Exit codes: 0 done, 2 bad input (nothing removed).
"""

from pipeline import api
from pipeline.commands import cli
from pipeline.core import cache
from pipeline.stages import sweep

OPTIONS = cache.PRUNE_OPTIONS


def main(argv):
    settings = cli.settings(OPTIONS)
    if settings["sweep"]:
        sweep.prune_cells(settings["sweep"], dry_run=True)  # refused here, before anything goes
    result = api.cache(cache_dir=settings["cache-dir"], older_than=settings["older-than"],
                       max_size=settings["max-size"], dry_run=settings["dry-run"])
    root = settings["cache-dir"] or cache.default_dir()
    verb = "would free" if result.dry_run else "freed"
    print(f"{root}: {verb} {result.freed / 1e6:.1f} MB in {len(result.removed)} entries; "
          f"kept {sum(e.size for e in result.kept) / 1e6:.1f} MB in {len(result.kept)}")
    for kind, (count, size) in result.usage().items():
        print(f"  {kind:<16} {count:6d} entries  {size / 1e6:9.1f} MB")
    if settings["sweep"]:
        removed, kept = sweep.prune_cells(settings["sweep"], settings["dry-run"])
        print(f"{settings['sweep']}: {verb} {sum(s for _, s in removed) / 1e6:.1f} MB in "
              f"{len(removed)} cells not in its sweep.json; kept {len(kept)}")
        for folder, size in removed:
            print(f"  – {folder.name} ({size / 1e6:.1f} MB)")


def command():
    cli.define_options(OPTIONS)
    cli.run(main)
