"""HParamsSession: one row of TensorBoard's HPARAMS tab per run, the configuration with the run's results."""

import math
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from typing_extensions import override

# the metrics of every run: the module's test protocol (AdversarialModule.test_step)
TEST_METRICS = ("test/err", "test/loss", "test/rerr_pgd", "test/rloss_pgd")


class HParamsSession(Callback):
    """Write the run's hyper-parameters and the names of its result metrics as TensorBoard's HParams session.

    TensorBoard's HPARAMS tab shows one row per run directory, from the first hparams summary in it:
    the session start names the hyper-parameters' values and the experiment summary the metrics'
    tags, whose values the tab reads from the ordinary scalars logged under those tags in the same
    run directory (their last value). This callback writes that summary once per run, at the start
    of fit (or of a test run without fit), so that the tab shows the run while it trains, and the
    session's end (success, or failure after an exception or an interruption) when that stage
    ends. ``train.py`` adds it to every run with the whole configuration; give the logger
    ``default_hp_metric=False`` so that Lightning writes no ``hp_metric`` summary of its own first
    (``train.py`` does so).

    The metrics named are the test results (``test/err``, ``test/loss``, ``test/rerr_pgd``,
    ``test/rloss_pgd``, ``test/rerr_aa`` with AutoAttack, the ``_train`` versions when the module tests
    training examples), ``metrics`` given here, and those the other callbacks declare in a
    ``test_metrics(pl_module)`` method (e.g. the rise and the held-out minimum's epoch of
    :class:`~lit_robust.callbacks.RobustOverfitting`, the flatness on test of
    :class:`~lit_robust.callbacks.FlatnessMonitor`).

    Args:
        hparams: the hyper-parameters, a nest of dicts flattened to ``a/b`` names; ``None``: the module's
            and the data module's ``hparams_initial``. Values other than numbers and strings (booleans,
            lists, ``None``, classes, functions) are shown as readable text.
        metrics: further metric tags to show beside the hyper-parameters.
    """

    def __init__(self, *, hparams: Optional[Dict[str, Any]] = None, metrics: Sequence[str] = ()) -> None:
        self.hparams = hparams
        self.metrics = tuple(metrics)
        self._started = False
        self._ended = False
        self._failed = False

    def declared_metrics(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> List[str]:
        """The metric tags of the session, in the order the tab shows them."""
        h = getattr(pl_module, "hparams", {})
        names = list(TEST_METRICS)
        if h.get("autoattack", False):
            names.append("test/rerr_aa")
        if h.get("test_on_train", False):
            names += ["test/rerr_pgd_train", "test/rloss_pgd_train"]
        for callback in trainer.callbacks:
            declare = getattr(callback, "test_metrics", None)
            if callable(declare):
                names += list(declare(pl_module))
        names += self.metrics
        return list(dict.fromkeys(names))

    def _start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._started:
            return
        self._started = True
        hparams = self.hparams
        if hparams is None:
            hparams = dict(pl_module.hparams_initial)
            if trainer.datamodule is not None:
                hparams.update(trainer.datamodule.hparams_initial)
        self._write_start(trainer, readable(flatten(hparams)), self.declared_metrics(trainer, pl_module))

    @rank_zero_only
    def _write_start(self, trainer: "pl.Trainer", hparams: Dict[str, Any], metrics: List[str]) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        experiment, start, _ = hparams_summary(hparams, {name: math.nan for name in metrics})
        for writer in self._writers(trainer):
            writer.add_summary(experiment)
            writer.add_summary(start)
            writer.flush()

    @rank_zero_only
    def _write_end(self, trainer: "pl.Trainer") -> None:
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        _, _, end = hparams_summary({}, {})  # a session end of status success
        if self._failed or trainer.interrupted:
            value = end.value[0]
            content = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
            content.session_end_info.status = api_pb2.STATUS_FAILURE
            value.metadata.plugin_data.content = content.SerializeToString()
        for writer in self._writers(trainer):
            writer.add_summary(end)
            writer.flush()

    @staticmethod
    def _writers(trainer: "pl.Trainer") -> List[Any]:
        return [logger.experiment._get_file_writer() for logger in trainer.loggers
                if isinstance(logger, TensorBoardLogger)]

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._start(trainer, pl_module)

    @override
    def on_test_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._start(trainer, pl_module)

    @override
    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._failed = True

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if self._started and not self._ended and stage in ("fit", "test"):
            self._ended = True
            self._write_end(trainer)


def flatten(nest: Dict[str, Any], prefix: str = "", separator: str = "/") -> Dict[str, Any]:
    """A nest of dicts (a LightningCLI configuration) as one dict of ``a/b`` names (``separator`` between the
    parts); ``{class_path: C, init_args: {...}}`` becomes ``name: C`` and ``name/argument: ...`` (the class, then
    its settings, without ``init_args`` in every name); lists stay one value."""
    flat: Dict[str, Any] = {}
    for key, value in nest.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "class_path" in value:
            flat[name] = value["class_path"]
            flat.update(flatten(dict(value.get("init_args") or {}), f"{name}{separator}", separator))
        elif isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}{separator}", separator))
        else:
            flat[name] = value
    return flat


def readable(flat: Dict[str, Any]) -> Dict[str, Any]:
    """Values the HParams plugin stores (numbers and strings) and a person reads: lists as ``[25, 124]``, ``None``
    and booleans as ``None``, ``True``, ``False``, classes and functions by their dotted name instead of
    ``<function ... at 0x...>``."""
    return {name: text(value) for name, value in flat.items()}


def text(value: Any) -> Any:
    """One value as the HParams plugin stores it (see :func:`readable`)."""
    if isinstance(value, bool):  # the HPARAMS tab shows a boolean as 0 or 1
        return str(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(text(item)) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {text(item)}" for key, item in value.items()) + "}"
    if value is None:
        return "None"
    if hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}".lstrip(".")
    if hasattr(value, "func") and hasattr(value, "keywords"):  # functools.partial
        args = ", ".join(f"{key}={text(item)}" for key, item in value.keywords.items())
        return f"{text(value.func)}({args})"
    return str(value)
