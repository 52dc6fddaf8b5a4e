"""The command line: train, sweep, compare, diagnose, report. Bad input is one line on stderr
and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from minitrain.core import rundir
from minitrain.core.checkpoint import CheckpointError
from minitrain.core.config import ConfigError
from minitrain.core.corpus import CorpusError
from minitrain.core.rundir import RunDirError
from minitrain.reports.pages import fmt

USER_ERRORS = (ConfigError, CorpusError, RunDirError, CheckpointError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minitrain", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one run from a config")
    t.add_argument("config", nargs="?", help="YAML config file (not with --resume)")
    t.add_argument("--resume", metavar="RUN", help="go on from RUN's last checkpoint")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optimizer.grad_clip=inf")
    t.add_argument("--out", help="run directory (default: the config file's folder)")
    t.add_argument("--force", action="store_true", help="replace a run already in --out")
    t.add_argument("--quiet", action="store_true", help="no progress line")
    t.add_argument("--branch-from", metavar="RUN",
                   help="start from RUN's checkpoint when that provably trains the same steps "
                        "(only the guards, idle until then, or the arrival sampler differ); "
                        "else from scratch, saying why")
    c = sub.add_parser("compare", help="compare two run directories")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--out", help="folder for the PNG (default: RUN_B)")
    c.add_argument("--page", help="Markdown page whose '<!-- measured:A-vs-B -->' block to fill")
    from minitrain.labs import LABS

    r = sub.add_parser("report", help="draw a lab's pictures and fill its page from its runs",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="labs:\n" + _choices(LABS))
    r.add_argument("lab", help="the lab's name (a key of minitrain.labs.LABS, below)")
    r.add_argument("runs", help="the folder holding the lab's run directories")
    r.add_argument("--page", help="Markdown page whose measured blocks to fill")
    d = sub.add_parser("diagnose", help="find a run's spikes and what carried them")
    d.add_argument("run")
    d.add_argument("--json", action="store_true", help="print JSON instead of the report")
    d.add_argument("--out", help="also write the JSON to this file")
    d.add_argument("--window", type=int, help="steps in the rolling baseline "
                   "(default: the run config's diagnose.window)")
    d.add_argument("--z", type=float, help="robust z-score threshold (default: diagnose.z)")
    d.add_argument("--min-ratio", type=float,
                   help="ratio-to-median threshold (default: diagnose.min_ratio)")
    d.add_argument("--postmortem", metavar="FILE",
                   help="write the post-mortem template, filled for the largest spike")
    d.add_argument("--against", metavar="RUN_A", help="reference run for the post-mortem")
    d.add_argument("--moments-page", metavar="PAGE", help="fill PAGE's '<!-- measured:"
                   "moment-decay -->' block: m and v decay after the largest spike")
    d.add_argument("--label", help="what the moments block calls the run (default: its "
                   "folder's name)")
    s = sub.add_parser("sample", help="text from a run's checkpoint")
    s.add_argument("run")
    s.add_argument("--prompt", default="", help="text after BOS to go on from (default: none)")
    s.add_argument("--tokens", type=int, default=40, help="most pieces per sample (default 40)")
    s.add_argument("--temperature", type=float, default=0.8,
                   help="0: greedy; above 0: drawn from the softmax at T (default 0.8)")
    s.add_argument("--seed", type=int, default=0, help="seeds the draws (default 0)")
    s.add_argument("--n", type=int, default=5, help="how many samples (default 5)")
    s.add_argument("--json", action="store_true", help="print JSON instead of lines")
    b = sub.add_parser("dashboard", help="one self-contained HTML page of one or more runs")
    b.add_argument("runs", nargs="+", metavar="RUN", help="run directories, side by side")
    b.add_argument("--out", metavar="FILE", help="the HTML file (default: in the last RUN, "
                   "dashboard.html; for several runs dashboard-A-vs-B.html)")
    b.add_argument("--blind", action="store_true", help="leave out every config and summary "
                   "value (a blind round: diagnose from what the runs measured)")
    x = sub.add_parser("export", help="write a run's logs for another viewer")
    x.add_argument("run")
    x.add_argument("--tensorboard", metavar="DIR", required=True,
                   help="write TensorBoard event files into DIR: scalars and the per-token loss "
                   "histogram per step (pip install -e '.[tensorboard]')")
    e = sub.add_parser("exercise", help="the break/fix catalogue and its blind round")
    esub = e.add_subparsers(dest="action", required=True)
    esub.add_parser("list", help="one line per exercise: what it breaks, minutes it took")
    er = esub.add_parser("run", help="train an exercise's control, break and fix; fill its page")
    er.add_argument("name", help="an exercise of `minitrain exercise list`, or all")
    er.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a value in every run, e.g. --set seed=1")
    er.add_argument("--no-page", action="store_true", help="train only; leave the page as it is")
    er.add_argument("--force", action="store_true",
                    help="train again runs already there with the same config")
    eq = esub.add_parser("quiz", help="the exercise's check-yourself questions, in the terminal")
    eq.add_argument("name", help="an exercise or a theory page (minitrain.exercises.quiz)")
    eq.add_argument("--page", action="store_true",
                    help="do not ask: fill the page's quiz block with the answers")
    eb = esub.add_parser("blind", help="train breaks into shuffled numbered folders")
    eb.add_argument("--out", required=True, help="a new folder for the round")
    eb.add_argument("--seed", type=int, default=0, help="shuffles the order and seeds the runs")
    eb.add_argument("--breaks", help="comma-separated names, or all (default: the course's "
                    "three)")
    eb.add_argument("--steps", type=int, help="train.steps of every run (default: the "
                    "exercises'; fewer for a quick round)")
    eb.add_argument("--no-dashboard", action="store_true",
                    help="write no dashboard.html (minitrain dashboard FOLDER --blind later)")
    es = esub.add_parser("score", help="score DIR/diagnoses.yaml against the sealed answers")
    es.add_argument("dir")
    es.add_argument("--self", dest="self_answer", action="store_true",
                    help="first write diagnose's own causes as the answers")
    et = esub.add_parser("rounds", help="how diagnose plays finished blind rounds: a table")
    et.add_argument("dirs", nargs="+", help="blind-round folders")
    et.add_argument("--page", help="Markdown page whose '<!-- measured:rounds -->' block to fill")
    ev = esub.add_parser("reveal", help="print which break each folder holds")
    ev.add_argument("dir")
    ev.add_argument("--json", action="store_true", help="print JSON")
    w = sub.add_parser("sweep", help="run a grid of seeds x settings; table and picture")
    w.add_argument("spec", help="sweep file (YAML: base, seeds, set, cells, jobs)")
    w.add_argument("--jobs", type=int, help="processes in parallel (default: the spec's)")
    w.add_argument("--report-only", action="store_true",
                   help="do not train: run the spec's report on the runs already there")
    w.add_argument("--page", action="append", default=[],
                   help="Markdown page whose '<!-- measured:sweep -->' block to fill "
                   "(repeatable)")
    w.add_argument("--force", action="store_true", help="rerun runs that are already done")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            from minitrain.core import config
            from minitrain.core.train import train

            if args.resume:
                moves = [o for o in args.overrides if o.startswith("train.device=")]
                if args.config or args.out or args.branch_from or \
                        len(moves) != len(args.overrides):
                    raise ConfigError("--resume takes the run's own config: no CONFIG, --out "
                                      "or --set other than train.device")
                out = Path(args.resume)
                cfg = config.load(out / rundir.CONFIG, moves)  # a CUDA run may go on on CPU
            elif not args.config:
                raise ConfigError("train: give a CONFIG file or --resume RUN")
            else:
                cfg = config.load(args.config, args.overrides)
                out = Path(args.out) if args.out else Path(args.config).parent
            if args.branch_from:
                from minitrain.tools.branch import train_from

                summary, how = train_from(Path(args.branch_from), cfg, out, args.force,
                                          progress=not args.quiet)
                print(f"{out}: {how}", file=sys.stderr)
            else:
                summary = train(cfg, out, progress=not args.quiet, replace=args.force,
                                resume=bool(args.resume))
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
                print(f"{out}: {summary['status']} after {summary['steps_completed']} steps, "
                      f"whole-set loss {fmt(summary['final_train_loss'], '.3g', 'not evaluated')}, "
                      f"{summary['wall_s']:.1f} s")
            # a diverged run is a result of the experiment, not a failure of the command
            code = 130 if summary["status"] == "interrupted" else 0
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                # every file is closed and the process group destroyed; torch 2.13's gloo
                # can still abort now and then in interpreter teardown ("terminate called
                # without an active exception"), which torchrun reports as a failed run
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            return code
        if args.command == "compare":
            from minitrain.reports.compare import report

            report(args.run_a, args.run_b, args.out, args.page)
            return 0
        if args.command == "report":
            from minitrain.labs import LABS

            if args.lab not in LABS:
                raise ConfigError(f"report: unknown lab {args.lab!r} (expected one of: "
                                  f"{', '.join(LABS)})")
            LABS[args.lab].report(args.runs, args.page)
            return 0
        if args.command == "diagnose":
            from minitrain.exercises.causes import diagnose
            from minitrain.reports.diagnose import print_report, to_json

            result = diagnose(args.run, window=args.window, z=args.z, min_ratio=args.min_ratio)
            if args.out:
                Path(args.out).write_text(to_json(result) + "\n", encoding="utf-8")
            if args.moments_page and result["spikes"]:
                from minitrain.core.rundir import load_run
                from minitrain.reports.diagnose import moment_decay, moment_decay_markdown
                from minitrain.reports.pages import update_page

                step = max(result["spikes"], key=lambda x: x["ratio"])["step"]
                text = moment_decay_markdown(moment_decay(load_run(args.run), step), args.label)
                update_page(args.moments_page, "moment-decay", text)
            if args.postmortem:
                from minitrain.reports.postmortem import postmortem

                text = postmortem(result, args.against)
                Path(args.postmortem).write_text(text, encoding="utf-8")
            if args.json:
                print(to_json(result))
            else:
                print_report(result)
            return 0
        if args.command == "sample":
            from minitrain.reports.text import print_samples, sample

            print_samples(sample(args.run, args.prompt, args.tokens, args.temperature, args.n,
                                 args.seed), as_json=args.json)
            return 0
        if args.command == "dashboard":
            from minitrain.reports import dashboard

            path = dashboard.write([Path(r) for r in args.runs],
                                   Path(args.out) if args.out else None, blind=args.blind)
            print(f"dashboard: {path} ({path.stat().st_size / 1e6:.1f} MB)")
            return 0
        if args.command == "export":
            from minitrain.reports.export import tensorboard

            done = tensorboard(args.run, args.tensorboard)
            print(f"tensorboard: {done['dir']} ({done['scalars']} scalar series, "
                  f"{done['histograms']} histogram steps); view: tensorboard --logdir "
                  f"{done['dir']}")
            return 0
        if args.command == "exercise":
            return _exercise(args)
        if args.command == "sweep":
            from minitrain.tools import sweep

            spec = sweep.load_spec(args.spec)
            if args.jobs is not None:
                if args.jobs < 1:
                    raise ConfigError("--jobs: must be at least 1")
                spec.jobs = args.jobs
            if not args.report_only:
                sweep.run(spec, force=args.force)
            if spec.report:
                from minitrain.exercises import EXERCISES

                done = EXERCISES[spec.report].report(spec, args.page)
                print("\n".join(done["blocks"].values()))
                print("; ".join(f"{what}: {f}" for what, f in done.get("files", {}).items()))
            return 0
    except KeyboardInterrupt:
        return 130
    except USER_ERRORS as e:
        print(f"minitrain: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if not _out_of_memory(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"minitrain: error: out of memory ({first}): lower data.batch_size or the "
              "model's size (model.n_embd, model.n_layer)", file=sys.stderr)
        return 2
    return 2


def _choices(registry: dict) -> str:
    """A registry's members for --help, one each: its name and its docstring's first sentence."""
    import textwrap

    lines = []
    for name, member in registry.items():
        first = " ".join((member.__doc__ or "").split()).split(". ")[0].rstrip(".")
        lines += textwrap.wrap(first, 100, initial_indent=f"  {name:<20} ",
                               subsequent_indent=" " * 23)
    return "\n".join(lines)


def _exercise(args) -> int:
    from minitrain.tools import exercise

    root = Path.cwd()
    if args.action == "list":
        print("\n".join(exercise.listing(root)))
    elif args.action == "run":
        from minitrain.exercises.catalogue import BREAKS

        for name in (BREAKS if args.name == "all" else [args.name]):
            exercise.run(root, name, args.overrides, force=args.force)
            if not args.no_page:
                from minitrain.exercises import sheet

                print(f"{name}: filled {sheet.report(root, name)['page']}")
    elif args.action == "quiz":
        from minitrain.exercises import quiz

        if args.name not in quiz.QUIZZES:
            raise ConfigError(f"quiz: unknown exercise {args.name!r} (expected one of: "
                              f"{', '.join(quiz.QUIZZES)})")
        if args.page:
            from minitrain.reports.pages import update_page

            update_page(quiz.page(root, args.name), "quiz", quiz.block(args.name))
            return 0
        quiz.ask(args.name)
    elif args.action == "blind":
        done = exercise.blind(root, Path(args.out), args.seed, args.breaks, args.steps,
                              progress=True, dashboards=not args.no_dashboard)
        print(f"{args.out}: {len(done['mapping'])} folders and reference/; write your "
              f"diagnoses in {Path(args.out) / exercise.ANSWERS}, then: minitrain exercise "
              f"score {args.out} (do not open {exercise.SEALED})")
    elif args.action == "score":
        if args.self_answer:
            exercise.self_answer(Path(args.dir))
        exercise.print_score(exercise.score(Path(args.dir)))
    elif args.action == "rounds":
        from minitrain.exercises import sheet

        body = sheet.rounds_block(root, [Path(d) for d in args.dirs])
        if args.page:
            from minitrain.reports.pages import update_page

            update_page(args.page, "rounds", body)
        print(body)
    elif args.action == "reveal":
        mapping = exercise.reveal(Path(args.dir))
        if args.json:
            import json

            print(json.dumps(mapping))
        else:
            print("\n".join(f"{k}: {v}" for k, v in mapping.items()))
    return 0


def _out_of_memory(e: BaseException) -> bool:
    """An allocation that failed: the config asks for more than the machine has."""
    text = str(e)
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or \
        "can't allocate memory" in text or "out of memory" in text.lower()


if __name__ == "__main__":
    sys.exit(main())
