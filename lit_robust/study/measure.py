"""Measure any set of models: every selected measure, clean and robust error and loss on the evaluation split
and on training examples, and the gaps, one row per model, then the statistics over the models.

    python -m lit_robust.study.measure --zoo zoo.yaml --out measured/zoo \\
        --data lit_robust.data.DigitsDataModule --data.eval_size 400 \\
        --evaluation.epsilon 0.2 --evaluation.step_size 0.05 --flatness.measures '[avg_rloss, worst_rloss]'
    python -m lit_robust.study.measure --runs study/digits/*/version_0 --out measured/digits --config measure.yaml
    lit-robust-measure --zoo zoo.csv --out measured/zoo --config measure.yaml --launcher.kind slurm \\
        --launcher.partition gpu --launcher.gpus_per_run 1

The models (``--zoo`` file or ``--runs`` directories, see :func:`lit_robust.study.zoo.load_zoo`) are measured on one
data module (``--data``, a LightningCLI data configuration), under one threat model and test protocol
(``--evaluation.*``, the test settings of :class:`~lit_robust.modules.AdversarialModule`: ``epsilon``,
``step_size``, ``norm``, ``test_steps``, ``test_restarts``, ``test_on_train``, ``autoattack``), with the measures
and their cost of :class:`~lit_robust.callbacks.FlatnessMonitor` (``--flatness.measures``, ``--flatness.test``,
...), on a Lightning ``Trainer`` (``--trainer.*``): each model is tested exactly as ``train.py test`` tests a
checkpoint, so its numbers are those of ``train.py test --ckpt_path`` with the same settings.

Output in ``--out``: per model ``<name>/version_0/metrics.json`` (its row, written atomically once the model is
measured; with ``config.yaml``, the hyper-parameters that produced it) and ``<name>.log``; ``results.md`` /
``results.csv`` (one row per model); with at least three measured models ``measures.md`` / ``measures.csv`` and
``measures_ranking.png`` (:func:`lit_robust.study.measures_report.write_measure_report`), also in TensorBoard. A
model with ``metrics.json`` is skipped, so an interrupted measurement is started again with the same command and
measures the rest. The models go to the study's submitit launchers (``--launcher.kind local|slurm|debug``,
:class:`lit_robust.study.jobs.Launcher`): a bad entry (a missing file, an unknown network, weights of another shape)
fails with one line and the others go on; the exit status is then 1. Bad settings or a bad zoo file end with one
``error:`` line and exit status 2 before anything is written.
"""

import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import yaml
from jsonargparse import ActionConfigFile
from pytorch_lightning import Trainer, seed_everything
from pytorch_lightning.cli import LightningArgumentParser
from torch import nn

from lit_robust.callbacks import FlatnessMonitor
from lit_robust.data.base import AdversarialDataModule
from lit_robust.errors import ConfigurationError, check
from lit_robust.modules.base import AdversarialModule
from lit_robust.study.jobs import Launcher, Run, launch, log_path, run_directory
from lit_robust.study.measures_report import measured_models, write_measure_report
from lit_robust.study.runs import RunResults
from lit_robust.study.statistics import MINIMUM_MODELS
from lit_robust.study.tables import write_table
from lit_robust.study.zoo import ZooModel, build_network, load_zoo, one_line_of, study_runs

log = logging.getLogger(__name__)
# the settings of AdversarialModule that are not its test protocol
NOT_EVALUATION = {"model", "optimizer", "lr_scheduler", "lr_scheduler_interval", "train_steps", "val_steps",
                  "val_restarts", "train_epsilon", "l1_penalty", "predict_adversarial", "compile"}
# FlatnessMonitor's settings that a measurement does not have: it tests once, on the module's threat model
NOT_FLATNESS = {"every_n_epochs", "on_test", "fit", "fit_splits", "network", "epsilon", "step_size", "norm"}
GAPS = {"test/err_gap": ("test/err", "test/err_train"), "test/loss_gap": ("test/loss", "test/loss_train"),
        "test/rerr_pgd_gap": ("test/rerr_pgd", "test/rerr_pgd_train"),
        "test/rloss_pgd_gap": ("test/rloss_pgd", "test/rloss_pgd_train")}
COLUMNS = [("Err", "test/err"), ("Loss", "test/loss"), ("RErr PGD", "test/rerr_pgd"), ("RLoss PGD", "test/rloss_pgd"),
           ("RErr AA", "test/rerr_aa"), ("Err (train)", "test/err_train"), ("Loss (train)", "test/loss_train"),
           ("RErr PGD (train)", "test/rerr_pgd_train"), ("RLoss PGD (train)", "test/rloss_pgd_train"),
           ("Err gap", "test/err_gap"), ("Loss gap", "test/loss_gap"), ("RErr gap", "test/rerr_pgd_gap"),
           ("RLoss gap", "test/rloss_pgd_gap")]


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: an interrupted write leaves no file."""
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


def measure_model(model: ZooModel, config: Any, out: str) -> Dict[str, float]:
    """Measure ``model`` on the data module and with the monitor, module settings and trainer of ``config``
    (:func:`parser`'s, instantiated); write its ``metrics.json`` and ``config.yaml``; return its metrics."""
    seed_everything(config.seed_everything)
    network = build_network(model, config.weights_only)
    module = AdversarialModule(model=network, **vars(config.evaluation))
    settings = vars(config.trainer)
    trainer = Trainer(**{**settings, "callbacks": list(settings.get("callbacks") or []) + [config.flatness]})
    trainer.test(module, datamodule=config.data, verbose=False)
    if trainer.global_rank != 0:
        return {}
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
               if name.startswith(("test/", "flatness/"))}
    for gap, (test, train) in GAPS.items():
        if test in metrics and train in metrics:
            metrics[gap] = metrics[test] - metrics[train]
    directory = run_directory(out, model.name)
    os.makedirs(directory, exist_ok=True)
    write_atomically(os.path.join(directory, "config.yaml"), yaml.safe_dump(model.hyperparameters))
    record = {**metrics, "model": model.name, "kind": model.kind, "weights": model.weights}
    write_atomically(os.path.join(directory, "metrics.json"), json.dumps(record, indent=2, sort_keys=True))
    return metrics


def result_rows(results: Sequence[RunResults]) -> List[List[str]]:
    """Header and one row per model: the model, its kind, the :data:`COLUMNS` measured, every measure."""
    columns = [(title, key) for title, key in COLUMNS if any(key in r.metrics for r in results)]
    measures = sorted({key for r in results for key in r.metrics if key.startswith("flatness/")})
    rows = [["Model", "Kind"] + [title for title, _ in columns] + [key[len("flatness/"):] for key in measures]]
    keys = [key for _, key in columns] + measures
    for r in results:
        rows.append([r.name, str(r.metrics.get("kind", ""))]
                    + [f"{r.get(key):.4f}" if key in r.metrics else "" for key in keys])
    return rows


def parser() -> LightningArgumentParser:
    """The command line of :func:`main` (jsonargparse: every setting also from ``--config FILE``)."""
    p = LightningArgumentParser(prog="python -m lit_robust.study.measure", description=__doc__.split("\n\n")[0],
                                exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file of the settings below")
    p.add_argument("--zoo", type=Optional[str], default=None, help="the zoo file (YAML or CSV) of the models")
    p.add_argument("--runs", type=List[str], default=[], help="run directories of a study, instead of a zoo")
    p.add_argument("--out", type=str, required=True, help="the output folder")
    p.add_argument("--seed_everything", type=int, default=0, help="seed set before each model is built and tested")
    p.add_argument("--weights_only", type=bool, default=True,
                   help="read every file with torch.load(weights_only=True); false: any pickle (trusted files only)")
    p.add_argument("--model", type=Optional[str], default=None,
                   help="measure only this model of the zoo, in this process (what each launched job runs)")
    p.add_argument("--axes", type=Optional[List[str]], default=None,
                   help="hyper-parameters of the granulated Kendall coefficient (default: those that vary)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per interval")
    p.add_argument("--confidence", type=float, default=0.95, help="coverage of the bootstrap intervals")
    p.add_lightning_class_args(AdversarialDataModule, "data", subclass_mode=True, required=True)
    p.add_class_arguments(AdversarialModule, "evaluation", skip=NOT_EVALUATION, instantiate=False)
    p.add_class_arguments(FlatnessMonitor, "flatness", skip=NOT_FLATNESS)
    p.add_lightning_class_args(Trainer, "trainer")
    p.set_defaults({"trainer.logger": False, "trainer.enable_checkpointing": False, "trainer.inference_mode": False,
                    "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False})
    p.add_class_arguments(Launcher, "launcher", instantiate=False)
    return p


def models_of(config: Any) -> List[ZooModel]:
    check((config.zoo is None) != (not config.runs), "zoo", config.zoo, "given, or else runs (not both, not neither)")
    return load_zoo(config.zoo) if config.zoo is not None else study_runs(config.runs)


def run(argv: Sequence[str]) -> int:
    """Parse, check and measure; the exit status (1 when a model failed)."""
    p = parser()
    config = p.parse_args(list(argv))
    models = models_of(config)
    check(config.model is None or config.model in [m.name for m in models], "model", config.model,
          "the name of a model of the zoo")
    check(config.resamples >= 1, "resamples", config.resamples, "an integer >= 1")
    check(0 < config.confidence < 1, "confidence", config.confidence, "a number between 0 and 1")
    AdversarialModule(model=nn.Identity(), **vars(config.evaluation))  # the test protocol's settings, checked
    launcher = Launcher(**vars(config.launcher))
    try:
        launcher.check()
    except ValueError as error:
        raise ConfigurationError(str(error).replace("--", "launcher.").replace("-", "_")) from None
    instantiated = p.instantiate(config)
    if config.model is not None:  # one model, in this process
        model = next(m for m in models if m.name == config.model)
        try:
            measure_model(model, instantiated, config.out)
        except ConfigurationError as error:
            sys.stderr.write(f"error: model {model.name}: {error}\n")
            return 1
        except Exception as error:  # the model does not run on this data (input shape, classes): its log says why
            log.exception(f"model {model.name} failed")
            sys.stderr.write(f"error: model {model.name}: {type(error).__name__}: {one_line_of(error)}\n")
            return 1
        return 0
    os.makedirs(config.out, exist_ok=True)
    done = [m for m in models if os.path.isfile(os.path.join(run_directory(config.out, m.name), "metrics.json"))]
    for model in done:
        log.info(f"{model.name}: finished before, skipped")
    todo = [m for m in models if m not in done]
    failed: List[str] = []
    if todo:
        runs = [Run(m.name, m.name, list(argv) + ["--model", m.name], "lit_robust.study.measure:main")
                for m in todo]
        failed = launch(runs, config.out, launcher).failed
    measured = [m for m in models if m.name not in failed
                and os.path.isfile(os.path.join(run_directory(config.out, m.name), "metrics.json"))]
    results = []
    for m in measured:
        with open(os.path.join(run_directory(config.out, m.name), "metrics.json")) as f:
            results.append(RunResults(m.name, run_directory(config.out, m.name), json.load(f)))
    if results:
        md_path, _ = write_table(result_rows(results), config.out, "results")
        log.info(f"Results of {len(results)} models: {md_path}")
    if len(results) >= MINIMUM_MODELS:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        report = write_measure_report(measured_models(results), config.out, config.axes, config.resamples,
                                      config.confidence)
        from torch.utils.tensorboard import SummaryWriter

        report["figure"].savefig(os.path.join(config.out, "measures_ranking.png"), dpi=120)
        writer = SummaryWriter(config.out)
        with open(report["measures_md"]) as f:
            writer.add_text("report/measures", f.read())
        writer.add_figure("report/measures_ranking", report["figure"])
        writer.close()
        plt.close(report["figure"])
        log.info(f"Statistics over {len(results)} models: {report['measures_md']}")
    else:
        log.info(f"No statistics: {len(results)} models measured, they need at least {MINIMUM_MODELS}")
    if failed:
        log.error(f"{len(failed)} models failed: "
                  + ", ".join(f"{name} (see {log_path(config.out, name)})" for name in failed))
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``python -m lit_robust.study.measure`` and ``lit-robust-measure``; bad settings end with one
    ``error:`` line and exit status 2, a failed model with exit status 1."""
    from lit_robust.cli.messages import configuration_error, one_line

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        status = run(list(sys.argv[1:] if argv is None else argv))
    except Exception as error:  # bad settings: one line, nothing written
        cause = configuration_error(error)
        import argparse

        if cause is None and not isinstance(error, argparse.ArgumentError):
            raise
        sys.stderr.write(f"error: {cause or one_line(str(error))}\n")
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    main()
