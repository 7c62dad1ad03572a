"""Measure any set of models: every selected measure, clean and robust error and loss on the evaluation split
and on training examples, and the gaps, one row per model, then the statistics over the models.

    python -m lit_robust.study.measure --zoo zoo.yaml --out measured/zoo \\
        --data lit_robust.data.DigitsDataModule --data.eval_size 400 \\
        --evaluation.epsilon 0.2 --evaluation.step_size 0.05 --flatness.measures '[avg_rloss, worst_rloss]'
    python -m lit_robust.study.measure --runs study/digits/*/version_0 --out measured/digits --config measure.yaml
    lit-robust-measure --zoo zoo.csv --out measured/zoo --config measure.yaml --launcher.kind slurm \\
        --launcher.partition gpu --launcher.gpus_per_run 1

The models (``--zoo`` file or ``--runs`` directories, see :func:`load_zoo`) are measured on one data module
(``--data``, a LightningCLI data configuration), under one threat model and test protocol (``--evaluation.*``,
the test settings of :class:`~lit_robust.modules.AdversarialModule`: ``epsilon``, ``step_size``, ``norm``,
``test_steps``, ``test_restarts``, ``test_on_train``, ``autoattack``), with the measures and their cost of
:class:`~lit_robust.callbacks.FlatnessMonitor` (``--flatness.measures``, ``--flatness.test``, ...), on a
Lightning ``Trainer`` (``--trainer.*``): each model is tested exactly as ``train.py test`` tests a checkpoint,
so its numbers are those of ``train.py test --ckpt_path`` with the same settings.

Output in ``--out``: per model ``<name>/version_0/metrics.json`` (its row, written atomically once the model is
measured; with ``config.yaml``, the hyper-parameters that produced it) and ``<name>.log``; ``results.md`` /
``results.csv`` (one row per model); with at least three measured models ``measures.md`` / ``measures.csv`` and
``measures_ranking.png`` (:func:`lit_robust.study.report.write_measure_report`), also in TensorBoard. A model with
``metrics.json`` is skipped, so an interrupted measurement is started again with the same command and measures
the rest. The models go to the study's submitit launchers (``--launcher.kind local|slurm|debug``,
:class:`lit_robust.study.runner.Launcher`): a bad entry (a missing file, an unknown network, weights of another shape)
fails with one line and the others go on; the exit status is then 1. Bad settings or a bad zoo file end with
one ``error:`` line and exit status 2 before anything is written.
"""

import csv
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from pytorch_lightning import Trainer, seed_everything
from pytorch_lightning.cli import LightningArgumentParser
from torch import nn

from lit_robust.callbacks import FlatnessMonitor
from lit_robust.data.base import AdversarialDataModule
from lit_robust.errors import ConfigurationError, check
from lit_robust.modules.base import AdversarialModule
from lit_robust.study.report import (
    RunResults,
    measured_models,
    recorded_hyperparameters,
    run_label,
    write_measure_report,
    write_table,
)
from lit_robust.study.statistics import MINIMUM_MODELS
from lit_robust.study.runner import Launcher, Run, launch, log_path, run_directory

log = logging.getLogger(__name__)
KINDS = ("checkpoint", "network", "torchvision", "timm", "run")
"""The keys of a zoo entry that say what the model is; each entry has exactly one."""
ENTRY_KEYS = KINDS + ("name", "state_dict", "init_args", "hyperparameters")
PREFIXES = ("module.", "model.")
"""Prefixes of the weights' names that are stripped when the names do not fit the network as given (as
RobustBench does for ``module.`` of ``DataParallel`` and ``model.`` of a wrapper, e.g. this library's module)."""
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
NAME = re.compile(r"[A-Za-z0-9_.+=-]+")


@dataclass
class ZooModel:
    """One model of a zoo: what it is, where its weights are and the hyper-parameters that produced it.

    Args:
        name: how the tables name it (also its directory in the output).
        kind: ``"checkpoint"`` (of this library), ``"network"`` (``class_path`` / ``init_args``),
            ``"torchvision"`` or ``"timm"`` (a model by name).
        weights: the file with its weights (a checkpoint or a state dict); None: the network's initial weights.
        network: the network's ``class_path`` / ``init_args`` (kind ``network``; for a checkpoint, None: the one
            it records), or the model's name (``torchvision`` / ``timm``).
        init_args: keyword arguments of a model by name (e.g. ``num_classes``).
        hyperparameters: the settings that produced it (the axes of the granulated Kendall coefficient).
    """

    name: str
    kind: str
    weights: Optional[str] = None
    network: Any = None
    init_args: Dict[str, Any] = field(default_factory=dict)
    hyperparameters: Dict[str, Any] = field(default_factory=dict)


def _entry(raw: Any, where: str, folder: str) -> ZooModel:
    """A zoo entry as a :class:`ZooModel`; relative paths are relative to ``folder``."""
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{where} is not allowed: an entry must be a mapping with one of "
                                 f"{', '.join(KINDS)} (given: {raw!r})")
    raw = {key: value for key, value in raw.items() if value not in (None, "")}
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    check(not unknown, f"{where}: {', '.join(unknown)}", raw.get(unknown[0]) if unknown else None,
          "absent: an entry's keys are " + ", ".join(ENTRY_KEYS) + " (settings go under hyperparameters)")
    kinds = [kind for kind in KINDS if kind in raw]
    if len(kinds) != 1:
        raise ConfigurationError(f"{where}: {' and '.join(kinds) or 'none of ' + ', '.join(KINDS)} is not allowed: "
                                 f"an entry has exactly one of {', '.join(KINDS)} (given: {', '.join(sorted(raw))})")
    kind = kinds[0]

    def path(value: Any) -> str:
        check(isinstance(value, str), where, value, "a file name")
        return value if os.path.isabs(value) else os.path.join(folder, value)

    hyperparameters = raw.get("hyperparameters", {})
    check(isinstance(hyperparameters, dict), f"{where}.hyperparameters", hyperparameters, "a mapping")
    init_args = raw.get("init_args", {})
    check(isinstance(init_args, dict), f"{where}.init_args", init_args, "a mapping")
    weights = path(raw["state_dict"]) if "state_dict" in raw else None
    check(kind not in ("checkpoint", "run") or weights is None, f"{where}.state_dict", raw.get("state_dict"),
          f"absent for an entry of kind {kind} (its weights are the checkpoint's)")
    if kind == "run":
        directory = path(raw["run"])
        kind, weights = "checkpoint", os.path.join(directory, "checkpoints", "last.ckpt")
        hyperparameters = {**recorded_hyperparameters(directory), **hyperparameters}
        name = raw.get("name", run_label(directory))
    elif kind == "checkpoint":
        weights = path(raw["checkpoint"])
        name = raw.get("name", run_label(os.path.dirname(os.path.dirname(weights)))
                       if os.path.basename(os.path.dirname(weights)) == "checkpoints"
                       else os.path.splitext(os.path.basename(weights))[0])
    else:
        name = raw.get("name", raw[kind] if isinstance(raw[kind], str) else None)
    network = raw.get(kind) if kind in ("network", "torchvision", "timm") else None
    if kind == "network":
        check(isinstance(network, dict) and isinstance(network.get("class_path"), str), f"{where}.network",
              network, "a class_path (an importable nn.Module, e.g. lit_robust.models.SmallCNN) and its init_args")
    if kind in ("torchvision", "timm"):
        check(isinstance(network, str), f"{where}.{kind}", network, "a model name")
    check(isinstance(name, str) and NAME.fullmatch(name) is not None, f"{where}.name", name,
          "a name of letters, digits and _.+=- (it names the model's directory)")
    return ZooModel(name, kind, weights, network, init_args, hyperparameters)


def _csv_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_zoo(path: str) -> List[ZooModel]:
    """The models of a zoo file.

    YAML: a list ``models`` of entries, each with one of ``checkpoint: FILE`` (written by ``train.py``),
    ``network: {class_path, init_args}`` with ``state_dict: FILE``, ``torchvision: NAME`` or ``timm: NAME``
    (with ``init_args``, e.g. ``{num_classes: 10}``, and optionally ``state_dict``), or ``run: DIR`` (a run
    directory of a study: its ``checkpoints/last.ckpt`` and the settings its ``config.yaml`` records); and
    optionally ``name`` and ``hyperparameters`` (the settings that produced it). CSV: one row per model, the
    columns ``name``, ``checkpoint``, ``state_dict``, ``network`` (a class path), ``torchvision``, ``timm``,
    ``run`` and ``init_args`` (YAML / JSON text); every other column is a hyper-parameter. Relative file names
    are relative to the zoo file's folder.

    Raises:
        ConfigurationError: naming the file and the entry, when the file is missing or not a zoo.
    """
    check(os.path.isfile(path), "zoo", path, "an existing YAML or CSV file")
    folder = os.path.dirname(os.path.abspath(path))
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        raws = []
        for row in rows:
            raw = {key: _csv_value(value) for key, value in row.items() if key in ENTRY_KEYS and value}
            if isinstance(raw.get("network"), str):
                raw["network"] = {"class_path": raw["network"], "init_args": raw.pop("init_args", {})}
            if isinstance(raw.get("name"), (int, float)):
                raw["name"] = row["name"]
            raw["hyperparameters"] = {key: _csv_value(value) for key, value in row.items()
                                      if key not in ENTRY_KEYS and value not in (None, "")}
            raws.append(raw)
    else:
        try:
            with open(path) as f:
                zoo = yaml.safe_load(f)
        except yaml.YAMLError as error:
            raise ConfigurationError(f"zoo={path!r} is not allowed: it is not valid YAML "
                                     f"({one_line_of(error)}).") from None
        check(isinstance(zoo, dict) and isinstance(zoo.get("models"), list), "zoo", path,
              "a YAML file with a list 'models' (or a CSV file)")
        raws = zoo["models"]
    check(len(raws) > 0, "zoo", path, "a file with at least one model")
    return checked_names([_entry(raw, f"{path}: models[{i}]", folder) for i, raw in enumerate(raws)], path)


def one_line_of(error: BaseException) -> str:
    return " ".join(str(error).split())


def study_runs(directories: Sequence[str]) -> List[ZooModel]:
    """The run directories of a study (``OUT/<name>/version_0``) as models: their ``last.ckpt``, named after
    their run, with the settings their ``config.yaml`` records."""
    for directory in directories:
        check(os.path.isdir(directory), "runs", directory, "run directories (OUT/<name>/version_0 of a study)")
    return checked_names([_entry({"run": os.path.abspath(d)}, f"runs[{i}]", ".")
                          for i, d in enumerate(directories)], "runs")


def checked_names(models: List[ZooModel], where: str) -> List[ZooModel]:
    names = [model.name for model in models]
    twice = sorted({name for name in names if names.count(name) > 1})
    check(not twice, f"{where}: name", twice[0] if twice else None, "different for every model")
    return models


def read_weights(path: str, weights_only: bool = True) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint (its ``state_dict``) or of a state-dict file, read on the CPU with
    ``torch.load(weights_only=True)`` unless ``weights_only`` is False.

    Raises:
        ConfigurationError: when the file is missing, unreadable, holds more than tensors and plain data (naming
            ``--weights_only false``) or holds no tensors.
    """
    check(os.path.isfile(path), "state_dict", path, "an existing file of weights")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # whatever the reason, the file is not weights this measurement reads
        if weights_only and "weights_only" in str(error):
            raise ConfigurationError(
                f"state_dict={path!r} is not allowed: it holds objects other than tensors and plain data, which "
                f"torch.load(weights_only=True) refuses; pass --weights_only false if you trust the file.") from None
        raise ConfigurationError(f"state_dict={path!r} is not allowed: it cannot be read by torch.load "
                                 f"({type(error).__name__}: {one_line_of(error)}).") from None
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    check(isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()),
          "state_dict", path, "a file of weights (a state dict: names -> tensors, or a checkpoint with one)")
    return loaded


def fitted(weights: Dict[str, torch.Tensor], network: nn.Module) -> Dict[str, torch.Tensor]:
    """``weights`` named as ``network``'s tensors: as given when the names fit, else with the :data:`PREFIXES`
    stripped from every name."""
    expected = set(network.state_dict())
    if set(weights) == expected:
        return weights
    stripped = {}
    for name, value in weights.items():
        while name.startswith(PREFIXES):
            name = name[len(next(p for p in PREFIXES if name.startswith(p))):]
        stripped[name] = value
    return stripped


def instantiate_network(config: Any, setting: str) -> nn.Module:
    """The ``nn.Module`` of a ``class_path`` / ``init_args`` configuration, built by jsonargparse (its
    arguments checked against the class's signature); one :class:`ConfigurationError` naming ``setting``."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--network", type=nn.Module)
    try:
        return parser.instantiate(parser.parse_object({"network": config})).network
    except Exception as error:  # an unknown class, wrong arguments: the entry is bad, the message says why
        from lit_robust.cli.messages import one_line

        raise ConfigurationError(f"{setting}={config!r} is not allowed: {one_line(str(error))}") from None


def build_network(model: ZooModel, weights_only: bool = True) -> nn.Module:
    """The network of ``model`` with its weights (see :class:`ZooModel`)."""
    state = None
    if model.kind == "checkpoint":
        from lit_robust.cli.checkpoint_checks import read_checkpoint

        checkpoint = read_checkpoint(model.weights, weights_only)
        config = model.network or (checkpoint.get("hyper_parameters") or {}).get("model")
        check(isinstance(config, dict), "checkpoint", model.weights,
              "a checkpoint that records its network (written by train.py), or an entry with network")
        network, state = instantiate_network(config, "network"), checkpoint["state_dict"]
    elif model.kind == "network":
        network = instantiate_network(model.network, "network")
    elif model.kind == "torchvision":
        import torchvision

        try:
            network = torchvision.models.get_model(model.network, weights=None, **model.init_args)
        except (ValueError, TypeError) as error:
            raise ConfigurationError(f"torchvision={model.network!r} is not allowed: {one_line_of(error)} "
                                     f"(torchvision.models.list_models() names them).") from None
    else:
        try:
            import timm
        except ImportError:
            raise ConfigurationError(f"timm={model.network!r} is not allowed: timm is not installed "
                                     f"(pip install lit_robust[timm]).") from None
        check(model.network in timm.list_models(), "timm", model.network, "a model timm.list_models() names")
        network = timm.create_model(model.network, pretrained=False, **model.init_args)
    if model.weights is not None:
        from lit_robust.cli.checkpoint_checks import check_same_tensors

        state = fitted(state if state is not None else read_weights(model.weights, weights_only), network)
        check_same_tensors(network, model.weights, {name: tuple(value.shape) for name, value in state.items()})
        network.load_state_dict(state)
    return network


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
