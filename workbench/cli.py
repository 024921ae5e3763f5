"""The `workbench` command: thin verbs that parse arguments and call one library function each.

Over 300 lines only because it holds the parser of all 14 verbs (their options and help) beside the verbs;
no verb does more than parse, call and print.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from carvana.dataset import KAGGLE_SIZE, format_size, parse_size
from carvana.errors import WorkbenchError
from carvana.interrupts import during_interrupt, relay_interrupts

if TYPE_CHECKING:
    from workbench.config import ExperimentConfig

KAGGLE_SIZE_TEXT = format_size(KAGGLE_SIZE)


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


COMPUTE_FLAGS = {  # compute: key -> (type, help); each is a flag --key-with-dashes overriding the config
    "engine": (str, "local (default: in this process) or ray (Ray core tasks)"),
    "address": (str, "ray: none = start Ray here; auto = join `ray start`; ray://HOST:10001"),
    "gpus_per_job": (int, "GPUs per fold or test-shard job (default 1 with a GPU, else 0)"),
    "cpus_per_job": (int, "CPUs per job (default zoo.train.num_workers + 1)"),
    "max_retries": (int, "retries of a job whose worker or node died (default 3)"),
    "test_shards": (int, "test-prediction shards per member (default 2 per job slot)"),
    "cpu_workers": (int, "stacker test-map shards at a time (default every core)"),
    "cache_dir": (Path, "node-local decode cache (default RUN/cache)"),
    "claim_grace_s": (float, "seconds after which a silent job claim is taken over (default 600)"),
    "threads": (int, "CPU threads of every job (default: every core; cpus_per_job on Ray); fixes the numbers"),
}


def _config(args: argparse.Namespace):
    from workbench.config import load_config

    compute = {key: getattr(args, key, None) for key in COMPUTE_FLAGS}
    return load_config(args.config, data=args.data, run_dir=args.run_dir, compute=compute)


def cmd_synth(args: argparse.Namespace) -> None:
    from carvana.atomic import refuse_overwrite
    from carvana.synth import generate, save_preview
    from workbench.runfolder import output_role

    refuse_overwrite("--out", args.out, None, output_role, "data/synthetic")
    if args.preview:
        refuse_overwrite("--preview", args.preview, None, output_role, "preview.png")
    if args.preview and (args.out / "train").is_dir():
        print(f"{args.out} already holds a dataset: only writing the preview")
    else:
        generate(args.out, args.cars, args.test_cars, size=args.size, seed=args.seed, variant=args.variant)
    if args.preview:
        print(f"wrote {save_preview(args.out, args.preview)}")


def cmd_check_data(args: argparse.Namespace) -> None:
    from carvana.validate import check_data

    print(check_data(args.dir, deep=not args.quick, progress=True))


def cmd_folds(args: argparse.Namespace) -> None:
    from workbench.steps import FOLDS_CSV, describe_folds, export_folds, make_folds

    config = _config(args)
    folds = make_folds(config, from_file=args.from_file)
    source = f" (from {args.from_file})" if args.from_file else ""
    print(f"{config.run_dir / FOLDS_CSV}: {folds.n_folds} car-grouped folds{source}\n{describe_folds(folds)}")
    if args.export:
        print(f"wrote {export_folds(config, args.export)} (id,fold: one row per car, for teammates to train on)")


def cmd_import_member(args: argparse.Namespace) -> None:
    from workbench.imports import import_member
    from workbench.runfolder import RunPaths

    config = _config(args)
    record = import_member(config, args.name, args.oof, args.test, folds_file=args.folds, logits=args.logits)
    print(
        f"imported {args.name} into {RunPaths(config.run_dir).members / args.name} ({record['n_files']} maps, "
        f"{record['format']}); `workbench stack` stacks it beside the zoo's members"
    )


def cmd_fold_train(args: argparse.Namespace) -> None:
    from workbench.fold_train import fold_train

    config = _config(args)
    for name in args.retrain or ():
        config.member(name)  # an unknown name is refused (listing the zoo's), not ignored
    fold_train(config, member=args.member, fold=args.fold, retrain=tuple(args.retrain or ()), job_index=args.job_index)


def cmd_pseudo_label(args: argparse.Namespace) -> None:
    from workbench.pseudo import pseudo_label

    pseudo_label(_config(args))


def cmd_jobs(args: argparse.Namespace) -> None:
    from workbench.fold_train import describe_jobs

    print(describe_jobs(_config(args)))


def cmd_stack(args: argparse.Namespace) -> None:
    from workbench.stack import stack

    stack(_config(args))


def cmd_tune(args: argparse.Namespace) -> None:
    from workbench.tune import tune_run

    tune_run(_config(args))


def cmd_dashboard(args: argparse.Namespace) -> None:
    from workbench.dashboard import serve_dashboard

    serve_dashboard(_config(args), host=args.host, port=args.port)


def cmd_submit(args: argparse.Namespace) -> None:
    from workbench.run import Run
    from workbench.submit import local_score, submit

    config = _config(args)
    run = Run.open(config)  # the data check, once for the verb
    path = submit(config, entry=args.entry, out_path=args.out, run=run)
    print(f"wrote {path}")
    score = local_score(config, path, run=run)
    if score is not None:
        print(f"local score against {config.data / 'test_masks.csv'}: mean Dice {score.mean_dice:.6f}")


def cmd_blend(args: argparse.Namespace) -> None:
    from carvana.submission import blend_submissions
    from workbench.runfolder import output_role

    config = _config(args) if args.config else None
    size = args.size or _data_size(config) or KAGGLE_SIZE
    run_dir = config.run_dir if config else None
    path = blend_submissions(
        args.files,
        args.out,
        weights=args.weights,
        min_votes=args.min_votes,
        image_size=size,
        taken=lambda p: output_role(p, run_dir),  # the config's run folder, or any run folder the path is in
    )
    print(f"wrote {path} (inputs and weights recorded in {path.with_name(path.name + '.json')})")


def _data_size(config: ExperimentConfig | None) -> tuple[int, int] | None:
    """The image size of the config's data, when a config is given and its data exists."""
    if config is None:
        return None
    from carvana.validate import check_data

    return check_data(config.data).size if config.data.exists() else None


def cmd_score(args: argparse.Namespace) -> None:
    from carvana.submission import score_submission

    result = score_submission(args.submission, args.truth, image_size=args.size or KAGGLE_SIZE)
    print(f"{args.submission}: mean Dice {result.mean_dice:.6f} over {result.n_images} images\n")
    print(result.to_markdown())


def cmd_demo(args: argparse.Namespace) -> None:
    from workbench.demo import run_demo

    run_demo(_config(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Carvana segmentation ensembling workbench")
    verbs = parser.add_subparsers(dest="verb", required=True)

    synth = verbs.add_parser("synth", help="generate the synthetic studio-car dataset in the Kaggle layout")
    synth.add_argument("--out", type=Path, required=True, help="data folder to create")
    synth.add_argument("--cars", type=int, default=24, help="training cars (16 photos each)")
    synth.add_argument("--test-cars", type=int, default=8, help="test cars")
    synth.add_argument("--size", type=_size, default=(480, 320), help=f"image size WxH (up to {KAGGLE_SIZE_TEXT})")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--variant",
        default="default",
        help="studio variant: car size in the frame, paint mix, "
        "annotation habits (the names are in carvana/synth/variants.py)",
    )
    synth.add_argument(
        "--preview",
        type=Path,
        help="also save a grid PNG of cars x 16 angles here "
        "(when --out already holds a dataset, only the preview is made)",
    )
    synth.set_defaults(func=cmd_synth)

    check = verbs.add_parser("check-data", help="validate a data folder in the Kaggle layout")
    check.add_argument("dir", type=Path)
    check.add_argument("--quick", action="store_true", help="skip decoding every image and mask")
    check.set_defaults(func=cmd_check_data)

    blend = verbs.add_parser("blend", help="weighted vote of submission files (decode, vote, re-encode)")
    blend.add_argument("files", type=Path, nargs="+", help="submission files (.csv or .csv.gz)")
    blend.add_argument("--out", type=Path, required=True, help="output file (.csv.gz)")
    blend.add_argument("--weights", type=float, nargs="+", help="one weight per file (default: equal)")
    blend.add_argument("--min-votes", type=float, help="weighted votes a pixel needs (default: strict majority)")
    blend.add_argument(
        "--size", type=_size, help=f"image size WxH (default: the config's data, else {KAGGLE_SIZE_TEXT})"
    )
    blend.add_argument("--config", type=Path, help="experiment YAML, for the image size of its data")
    blend.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    blend.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    blend.set_defaults(func=cmd_blend)

    score = verbs.add_parser("score", help="mean Dice of a submission against a truth file (rows matched by id)")
    score.add_argument("submission", type=Path)
    score.add_argument("--truth", type=Path, required=True, help="truth in the submission format (e.g. test_masks.csv)")
    score.add_argument("--size", type=_size, help=f"image size WxH (default {KAGGLE_SIZE_TEXT})")
    score.set_defaults(func=cmd_score)

    for name, func, text in [
        ("folds", cmd_folds, "write RUN/folds.csv: car-grouped, stratified folds"),
        ("import-member", cmd_import_member, "import a member's OOF and test maps made elsewhere (PNG, .npy)"),
        ("fold-train", cmd_fold_train, "train every member x fold not finished; write OOF and test maps"),
        ("stack", cmd_stack, "blends and stackers over the OOF maps, tuning, leaderboard, submission"),
        ("tune", cmd_tune, "nested Optuna tuning of the blend's thresholds and weights; writes RUN/tune.json"),
        ("dashboard", cmd_dashboard, "serve optuna-dashboard on the run's tuning storage"),
        ("pseudo-label", cmd_pseudo_label, "label unscored test photos per fold with models that never saw that fold"),
        ("jobs", cmd_jobs, "list every member x fold job (index, state) for a SLURM array or manual fan-out"),
        ("submit", cmd_submit, "write RUN/submission.csv.gz from an entry's test maps (default: the best)"),
        ("demo", cmd_demo, "run the whole pipeline (synthetic data when missing)"),
    ]:
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("--config", type=Path, required=True, help="experiment YAML (see configs/)")
        verb.add_argument("--data", type=Path, help="data folder (overrides the config)")
        verb.add_argument("--run-dir", type=Path, help="run folder (overrides the config)")
        verb.set_defaults(func=func)
        for key, (kind, text) in COMPUTE_FLAGS.items():
            verb.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, help=f"compute.{key}: {text}")
        if name == "folds":
            verb.add_argument("--export", type=Path, metavar="FILE", help="also write the folds as id,fold (per car)")
            verb.add_argument(
                "--from",
                dest="from_file",
                type=Path,
                metavar="FILE",
                help="adopt a teammate's id,fold or img,fold file",
            )
        if name == "import-member":
            verb.add_argument("name", help="the member's name in this run (letters, digits, _ . -)")
            verb.add_argument(
                "--oof", type=Path, required=True, help="OOF maps: DIR/<img>.<ext> or DIR/fold<k>/<img>.<ext>"
            )
            verb.add_argument("--test", type=Path, required=True, help="fold-averaged test maps: DIR/<img>.<ext>")
            verb.add_argument(
                "--folds", type=Path, metavar="FILE", help="the id,fold or img,fold file the maps were made with"
            )
            verb.add_argument("--logits", action="store_true", help="float maps hold logits (a sigmoid is applied)")
        if name == "fold-train":
            verb.add_argument("--member", help="train only this member (one job of a fan-out)")
            verb.add_argument("--fold", type=int, help="train only this fold")
            verb.add_argument("--job-index", type=int, help="run only job I of `workbench jobs` (a SLURM array index)")
            verb.add_argument(
                "--retrain",
                nargs="+",
                metavar="MEMBER",
                help="discard these members' results (e.g. after changing their spec)",
            )
        if name == "submit":
            verb.add_argument("--entry", help="leaderboard entry (default: the best by honest OOF mean Dice)")
            verb.add_argument("--out", type=Path, help="output path (default RUN/submission.csv.gz)")
        if name == "dashboard":
            verb.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
            verb.add_argument("--port", type=int, default=8080)
    return parser


def run() -> int:
    """The `workbench` program: `main` with Ctrl-C relayed, so that no worker process sees it
    (carvana.interrupts)."""
    relay_interrupts()
    return main()


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except WorkbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # an OS-level failure (disk full, read-only...) is one line too; a bug is not
        if during_interrupt(error):
            return _interrupted()
        message = _explain(error, args)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    return 0


def _interrupted() -> int:
    print("interrupted", file=sys.stderr)
    return 130


def _explain(error: Exception, args: argparse.Namespace | None) -> str | None:
    """workbench.failures.explain with the verb's run folder and tuning storage, when its config loads."""
    from workbench.failures import explain

    run_dir, storage = getattr(args, "run_dir", None), None
    if args is not None and getattr(args, "config", None):
        try:
            from workbench.tune import storage_url

            config = _config(args)
            run_dir, storage = config.run_dir, storage_url(config)
        except (WorkbenchError, OSError, ValueError):  # the config is not what failed here: explain without it
            pass
    return explain(error, run_dir, storage)


if __name__ == "__main__":
    sys.exit(run())
