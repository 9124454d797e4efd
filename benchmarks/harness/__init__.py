"""The benchmark harness: what every study under benchmarks/ shares.

A study declares its grid of units (`grid.Unit`: one run, its result one JSON file), how to run one
unit and how its results aggregate into tables; the harness does the rest:

- `queue`: the claim-based work queue (each unit once across worker processes, after the units it
  needs; a dead worker's claim is taken over) and the `--jobs N` fan-out of worker processes;
- `grid`: units, their result files (written at once with their provenance, skipped when present)
  and the queue over them;
- `sittings`: the wall time of every invocation that ran units;
- `provenance`: commit, command and machine of every unit and aggregate, the commits an aggregate mixes;
- `aggregate`: means and paired confidence intervals (`ktransfer.stats`), and the aggregation's context
  (command, machine, versions), taken from a committed aggregate when reproducing it;
- `report`: the JSON, Markdown and plot files, written atomically;
- `stores`: a store unit's result (the whole store's size, and how much of it the timed build computed);
- `cli`: the flags every study shares and the run-then-aggregate driver (`cli.main`);
- `reproduce`: re-aggregates the committed unit results of the studies and compares them with their
  committed tables and aggregates (`python benchmarks/reproduce.py`).

benchmarks/ is not an installed package: a study puts its folder's parent on `sys.path` and imports
`harness`.
"""
