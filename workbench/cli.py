"""The `workbench` command: thin verbs that parse arguments and call one library function each."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carvana.errors import WorkbenchError


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 480x320 (W x H)") from None
    return width, height


def _config(args: argparse.Namespace):
    from workbench.config import load_config

    return load_config(args.config, data=args.data, run_dir=args.run_dir)


def cmd_synth(args: argparse.Namespace) -> None:
    from carvana.synth import generate, save_preview

    if args.preview and (args.out / "train").is_dir():
        print(f"{args.out} already holds a dataset: only writing the preview")
    else:
        generate(args.out, args.cars, args.test_cars, args.size, args.seed)
    if args.preview:
        print(f"wrote {save_preview(args.out, args.preview)}")


def cmd_check_data(args: argparse.Namespace) -> None:
    from carvana.validate import check_data

    print(check_data(args.dir, deep=not args.quick, progress=True))


def cmd_folds(args: argparse.Namespace) -> None:
    from workbench.steps import FOLDS_CSV, describe_folds, make_folds

    config = _config(args)
    folds = make_folds(config)
    print(f"{config.run_dir / FOLDS_CSV}: {folds.n_folds} car-grouped folds\n{describe_folds(folds)}")


def cmd_fold_train(args: argparse.Namespace) -> None:
    from workbench.fold_train import fold_train

    fold_train(_config(args), member=args.member, fold=args.fold, retrain=tuple(args.retrain or ()))


def cmd_tune(args: argparse.Namespace) -> None:
    from workbench.tune import tune_run

    tune_run(_config(args))


def cmd_dashboard(args: argparse.Namespace) -> None:
    from workbench.dashboard import serve_dashboard

    serve_dashboard(_config(args), host=args.host, port=args.port)


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
    synth.add_argument("--size", type=_size, default=(480, 320), help="image size WxH (up to 1918x1280)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--preview", type=Path, help="also save a grid PNG of cars x 16 angles here "
                       "(when --out already holds a dataset, only the preview is made)")
    synth.set_defaults(func=cmd_synth)

    check = verbs.add_parser("check-data", help="validate a data folder in the Kaggle layout")
    check.add_argument("dir", type=Path)
    check.add_argument("--quick", action="store_true", help="skip decoding every image and mask")
    check.set_defaults(func=cmd_check_data)

    for name, func, text in [
        ("folds", cmd_folds, "write RUN/folds.csv: car-grouped, stratified folds"),
        ("fold-train", cmd_fold_train, "train every member x fold not finished; write OOF and test maps"),
        ("tune", cmd_tune, "nested Optuna tuning of the blend's thresholds and weights; writes RUN/tune.json"),
        ("dashboard", cmd_dashboard, "serve optuna-dashboard on the run's tuning storage"),
        ("demo", cmd_demo, "run the whole pipeline (synthetic data when missing)"),
    ]:
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("--config", type=Path, required=True, help="experiment YAML (see configs/)")
        verb.add_argument("--data", type=Path, help="data folder (overrides the config)")
        verb.add_argument("--run-dir", type=Path, help="run folder (overrides the config)")
        verb.set_defaults(func=func)
        if name == "fold-train":
            verb.add_argument("--member", help="train only this member (one job of a fan-out)")
            verb.add_argument("--fold", type=int, help="train only this fold")
            verb.add_argument("--retrain", nargs="*", metavar="MEMBER",
                              help="discard these members' results (e.g. after changing their spec)")
        if name == "dashboard":
            verb.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
            verb.add_argument("--port", type=int, default=8080)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except WorkbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
