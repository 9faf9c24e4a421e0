"""Command line: the commands that train (train, cv, loso, resume, tune), and
one --option per TrainConfig setting for them (core.cli.main builds the parser)."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from core.cli.common import report, run_dir_for, shown


def intact_runs(run_ids: list[str]) -> list[Path]:
    """The folders of finished runs whose predictions a command scores: each checked (core.runs.checks)."""
    from core.runs import checks

    return [checks.require_intact(run_dir_for(run_id)) for run_id in run_ids]


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One --option per TrainConfig field, so the CLI can set every
    hyperparameter; its help is the field's (core.runs.train_config), with its choices
    or range and the project's default."""
    from core.runs.train_config import TrainConfig

    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        allowed = ", ".join(map(str, f.metadata["choices"])) if "choices" in f.metadata else f.metadata.get("range")
        default = getattr(defaults, f.name)
        help = f"{f.metadata['help']} ({f'{allowed}; ' if allowed else ''}default {default or repr(default)})"
        help = help.replace("%", "%%")  # argparse formats help with %
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help)


def given_settings(args) -> dict:
    """The TrainConfig settings given as options."""
    from core.runs.train_config import TrainConfig

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if getattr(args, f.name) is not None}


def config_from_args(args):
    """The default config (promoted from a search, if one was) with the options given."""
    from core.runs.promoted import load_default_config

    return dataclasses.replace(load_default_config(), **given_settings(args)).validate()


def cmd_train(args) -> int:
    from core.base import files
    from core.runs.train_config import TrainConfig
    from core.training.fit import train

    if args.run_dir:  # a folder prepared by launch_training (the app), or a run to resume
        config = TrainConfig.from_dict(files.read_json(Path(args.run_dir) / "config.json", {}), starting=True)
        run_dir = train(config, run_dir=Path(args.run_dir), report=report)
    else:
        run_dir = train(config_from_args(args), name=args.name, report=report)
    if args.deploy_when_fit:
        from core.jobs.first_model import deploy_when_fit

        deploy_when_fit(run_dir, report=report)
    return 0


def cmd_cv(args) -> int:
    from core.evaluation import folds
    from core.base import files
    from core.runs import storage
    from core.runs.train_config import TrainConfig
    from core.training.cross_validation import cross_validate
    from core.runs.recipes import averaged_folds, check_same_folds, fold_runs, paired_difference

    if args.score:  # fold runs trained earlier, e.g. one by one with train --cv-folds K --cv-fold F
        if given_settings(args):
            raise ValueError("--score trains nothing: it takes no training options")
        run_dirs = intact_runs(args.score)
        config = TrainConfig.from_dict(files.read_json(run_dirs[0] / "config.json", {}))
    else:
        if args.cv_folds is None:
            args.cv_folds = 5
        config = config_from_args(args)
        run_dirs = cross_validate(config, name=args.name, report=report)
    by_fold = fold_runs(run_dirs)
    names = {fold: run_dir.name for fold, run_dir in by_fold.items()}
    predictions = {fold: storage.read_predictions(run_dir) for fold, run_dir in by_fold.items()}
    if args.ensemble_with:  # each image's probability averaged over the two recipes' models of its fold
        partner = fold_runs(intact_runs(args.ensemble_with))
        predictions = averaged_folds([predictions, {fold: storage.read_predictions(d) for fold, d in partner.items()}])
        names = {fold: f"{name} + {partner[fold].name}" for fold, name in names.items()}
    summary = folds.cross_validation_summary(list(predictions.values()), seed=config.seed)

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    print(f"\n{config.cv_folds}-fold cross-validation over train + val (seed {config.seed}), "
          f"{len(run_dirs)} fold runs{' averaged with as many' if args.ensemble_with else ''}:")
    for name, auc in zip(names.values(), summary["fold_roc_auc"]):
        print(f"  {shown(name)}: validation ROC-AUC {fmt(auc)}")
    low, high = summary["pooled_ci"]
    print(f"mean {fmt(summary['mean_roc_auc'])} ± {fmt(summary['std_roc_auc'])}; pooled out-of-fold ROC-AUC "
          f"{fmt(summary['pooled_roc_auc'])} [{fmt(low)}, {fmt(high)}] over {summary['n_images']} images")
    if args.against:  # folds differ in difficulty more than recipes do: compare on the same folds
        baseline_runs = fold_runs(intact_runs(args.against))
        baseline = {fold: storage.read_predictions(d) for fold, d in baseline_runs.items()}
        check_same_folds(predictions, baseline)
        scored = folds.cross_validation_summary(list(baseline.values()), seed=config.seed)
        difference, standard_error = paired_difference(dict(zip(predictions, summary["fold_roc_auc"])),
                                                       dict(zip(baseline, scored["fold_roc_auc"])))
        print(f"against {' '.join(d.name for d in baseline_runs.values())} (mean {fmt(scored['mean_roc_auc'])}): "
              f"{'n/a' if difference is None else f'{difference:+.3f}'} ± {fmt(standard_error)} "
              "(mean difference fold by fold ± standard error)")
    return 0


def cmd_loso(args) -> int:
    from core.inference import external
    from core.training.cross_validation import leave_one_source_out

    config = config_from_args(args)
    folds = leave_one_source_out(config, name=args.name, report=report)
    print(f"\nleave-one-source-out over {len(folds)} sources:")
    for fold in folds:
        if fold.run_dir is None:
            print(f"  without {fold.source}: not trained: {fold.refused}")
            continue
        for found in external.list_external(fold.run_dir):
            if found["metrics"]:
                print(f"  {fold.run_dir.name}: {external.summary_line(found['metrics'])}")
    return 0


def cmd_resume(args) -> int:
    from core.jobs.background import resume

    resume(run_dir_for(args.run), report=report)
    return 0


def _space_changes(args) -> dict | None:
    """--space (a JSON file, or JSON itself) and --backbones, as changes to the default space."""
    changes = None
    if args.space:
        from core.base import files

        text = args.space if args.space.lstrip().startswith("{") else \
            files.read_regular(args.space, files.MAX_JSON_BYTES)
        try:
            changes = files.parse_json(text)
        except ValueError as error:
            raise ValueError(f"--space is not valid JSON ({error})") from None
        if not isinstance(changes, dict):
            raise ValueError('--space must be a JSON object such as {"backbone": ["resnet50"]}')
    if args.backbones:
        changes = {**(changes or {}), "backbone": args.backbones}
    return changes


def cmd_tune(args) -> int:
    from core.runs import promoted
    from core.base import paths
    from core.training import studies
    from core.training import tune

    if args.reset_default:
        print("defaults reset to the project's recipe" if promoted.reset_default() else "no promoted defaults to reset")
        return 0
    if not args.study:
        raise ValueError("give --study NAME")
    if args.trials is not None:
        study = tune.run_search(args.study, args.trials, base=given_settings(args), space=_space_changes(args),
                                timeout=args.timeout, storage=args.storage, report=report)
    elif args.show or args.promote:
        study = studies.load_study(args.study, args.storage)
    else:
        raise ValueError("give --trials N (finished trials wanted in the study), --show or --promote")

    table = studies.trials_table(study)
    print(table.to_string(index=False, float_format="%.4g", na_rep="") if len(table) else "no trials yet")
    best = studies.best_trial(study)
    print(f"best: {studies.describe(best)}" if best else "best: none yet (no completed trial)")
    if args.promote:
        studies.promote_best(args.study, args.storage)
        print(f"promoted trial {best.number}'s config to the defaults: {paths.default_config_path()}")
    return 0
