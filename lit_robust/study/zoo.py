"""A zoo: the models ``lit-robust-measure`` measures, read from a zoo file (YAML or CSV) or from a study's run
directories, and each model's network built with its weights.

A model is a checkpoint of this library, a plain state dict with its network given as ``class_path`` /
``init_args``, a torchvision model by name or a timm model by name (see :func:`load_zoo`). Every file is read with
``torch.load(weights_only=True)`` unless the user opts out.
"""

import csv
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn

from lit_robust.errors import ConfigurationError, check
from lit_robust.study.runs import recorded_hyperparameters, run_label

KINDS = ("checkpoint", "network", "torchvision", "timm", "run")
"""The keys of a zoo entry that say what the model is; each entry has exactly one."""


ENTRY_KEYS = KINDS + ("name", "state_dict", "init_args", "hyperparameters")


PREFIXES = ("module.", "model.")
"""Prefixes of the weights' names that are stripped when the names do not fit the network as given (as
RobustBench does for ``module.`` of ``DataParallel`` and ``model.`` of a wrapper, e.g. this library's module)."""


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
