"""``python -m lit_robust.study.measure``: a zoo of models of every kind (this library's checkpoint, a state dict
with its network's class, torchvision and timm models by name) measured on one data module; its numbers are those of
``train.py test --ckpt_path``; a measure defined here used by name; an interrupted measurement measures only the
rest; bad entries fail alone with one line, bad settings with one ``error:`` line and nothing written."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

from lit_robust.cli import main as cli_main
from lit_robust.measures import Measure, MeasureResult, register_measure
from lit_robust.measures.base import reduced
from lit_robust.models import SmallCNN
from lit_robust.study.measure import GAPS
from lit_robust.study.measure import main as measure_main
from tests.fakedata import write_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORK = {"class_path": "lit_robust.models.SmallCNN", "init_args": {"in_channels": 3, "width": 4}}
FLATNESS = {"measures": ["avg_rloss", "test_logit_norm"], "batch_size": 8,
            "test": {"examples": 8, "samples": 1, "pgd_steps": 2, "pgd_restarts": 1}}
EVALUATION = {"epsilon": 0.1, "step_size": 0.05, "test_steps": 2, "test_restarts": 1}


@register_measure("test_logit_norm")
class LogitNorm(Measure):
    """Mean over examples of the L2 norm of the logits (clean): a measure defined outside the library."""

    loss = "loss"

    @property
    def name(self) -> str:
        return "test_logit_norm"

    def measure(self, model, batches, reduce, generator) -> MeasureResult:
        totals = torch.zeros(2, dtype=torch.float64)
        for x, y in batches:
            with torch.no_grad():
                totals += torch.stack([torch.tensor(float(len(y))), model(x).norm(dim=1).sum().double()])
        totals = reduced(totals, reduce, self.name)
        value = float(totals[1] / totals[0])
        return MeasureResult(flatness=value, std=0.0, perturbed=value, reference=0.0, examples=int(totals[0]))


def cifar_data(root) -> dict:
    return {"class_path": "lit_robust.data.CIFAR10DataModule",
            "init_args": {"data_dir": root, "held_out_size": 8, "eval_size": 16, "train_eval_size": 16,
                          "batch_size": 16, "eval_batch_size": 16, "flip": False, "crop_padding": 0}}


def write_yaml(path, content) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(content, f)
    return str(path)


def measure(argv, capsys=None):
    """``measure_main(argv)``'s exit status (and its stderr when ``capsys`` is given)."""
    with pytest.raises(SystemExit) as exit_:
        measure_main([str(a) for a in argv])
    return exit_.value.code if capsys is None else (exit_.value.code, capsys.readouterr().err)


def rows(out) -> dict:
    with open(os.path.join(out, "results.csv"), newline="") as f:
        return {row["Model"]: row for row in csv.DictReader(f)}


def metrics(out, name) -> dict:
    with open(os.path.join(out, name, "version_0", "metrics.json")) as f:
        return json.load(f)


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A tiny train.py fit on fake CIFAR-10 (this library's checkpoint) and train.py test of it with the
    settings the measurement uses (its metrics.json)."""
    root = write_cifar10(tmp_path / "cifar", monkeypatch)
    recipe = write_yaml(tmp_path / "recipe.yaml", {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "accelerator": "cpu",
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "logs"), "name": "fit"}},
                    "callbacks": [{"class_path": "lit_robust.callbacks.FlatnessMonitor",
                                   "init_args": {"every_n_epochs": 0, **FLATNESS}}]},
        "model": {"class_path": "lit_robust.modules.PGDAT",
                  "init_args": {"model": NETWORK, "train_steps": 1, "val_steps": 1, "val_restarts": 1, **EVALUATION}},
        "data": cifar_data(root)})
    cli_main(["fit", "--config", recipe, "--test_after_fit", "false"])
    checkpoint = str(tmp_path / "logs" / "fit" / "version_0" / "checkpoints" / "last.ckpt")
    cli_main(["test", "--config", recipe, "--ckpt_path", checkpoint,
              "--trainer.logger.init_args.name", "test"])
    with open(tmp_path / "logs" / "test" / "version_0" / "metrics.json") as f:
        return root, checkpoint, json.load(f)


def settings(tmp_path, root, **more) -> str:
    """The measurement's settings file: the data, test protocol and measures of the recipe."""
    return write_yaml(tmp_path / "measure.yaml", {"data": cifar_data(root), "evaluation": EVALUATION,
                                                  "flatness": FLATNESS, "trainer": {"accelerator": "cpu"}, **more})


def test_zoo_of_every_kind_equals_train_py_test(trained, tmp_path):
    root, checkpoint, tested = trained
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    network = {name[len("model."):]: value for name, value in state.items() if name.startswith("model.")}
    torch.save(network, tmp_path / "exported.pt")
    torch.save({f"module.{name}": value for name, value in network.items()}, tmp_path / "data_parallel.pt")
    torch.manual_seed(1)
    torch.save(SmallCNN(in_channels=3, width=4).state_dict(), tmp_path / "other.pt")
    zoo = write_yaml(tmp_path / "zoo.yaml", {"models": [
        {"name": "library", "checkpoint": checkpoint, "hyperparameters": {"width": 4, "source": "trained"}},
        {"name": "exported", "network": NETWORK, "state_dict": "exported.pt",
         "hyperparameters": {"width": 4, "source": "exported"}},
        {"name": "data_parallel", "network": NETWORK, "state_dict": "data_parallel.pt",
         "hyperparameters": {"width": 4, "source": "data_parallel"}},
        {"name": "other", "network": NETWORK, "state_dict": "other.pt",
         "hyperparameters": {"width": 4, "source": "other"}},
        {"name": "squeezenet", "torchvision": "squeezenet1_1", "init_args": {"num_classes": 10},
         "hyperparameters": {"width": 64, "source": "torchvision"}},
        {"name": "timm_resnet", "timm": "test_resnet", "init_args": {"num_classes": 10},
         "hyperparameters": {"width": 8, "source": "timm"}},
        {"run": os.path.dirname(os.path.dirname(checkpoint))}]})
    out = tmp_path / "out"
    assert measure(["--zoo", zoo, "--out", out, "--config", settings(tmp_path, root), "--launcher.kind", "debug"]) == 0
    table = rows(out)
    assert list(table) == ["library", "exported", "data_parallel", "other", "squeezenet", "timm_resnet", "fit"]
    assert [table[name]["Kind"] for name in table] == ["checkpoint", "network", "network", "network", "torchvision",
                                                       "timm", "checkpoint"]
    keys = ["test/err", "test/loss", "test/rerr_pgd", "test/rloss_pgd", "test/err_train", "test/loss_train",
            "test/rerr_pgd_train", "test/rloss_pgd_train", "flatness/avg_rloss", "flatness/avg_rloss_train",
            "flatness/test_logit_norm", "flatness/test_logit_norm_train"]
    for name in ("library", "exported", "data_parallel", "fit"):  # the same weights: train.py test's numbers
        measured = metrics(out, name)
        assert {key: measured[key] for key in keys} == pytest.approx({key: tested[key] for key in keys}, abs=1e-6)
        for gap, (test, train) in GAPS.items():
            assert measured[gap] == pytest.approx(tested[test] - tested[train])
    assert metrics(out, "other")["flatness/test_logit_norm"] != pytest.approx(tested["flatness/test_logit_norm"])
    for name in table:  # every row has every column
        assert all(table[name][column] != "" for column in ("RErr PGD", "RLoss gap", "avg_rloss", "test_logit_norm"))
    with open(out / "measures.csv", newline="") as f:
        statistics = {row["Measure"]: row for row in csv.DictReader(f)}
    assert statistics["flatness/test_logit_norm"]["Models"] == "7"
    with open(out / "library" / "version_0" / "config.yaml") as f:
        assert yaml.safe_load(f) == {"width": 4, "source": "trained"}
    with open(out / "fit" / "version_0" / "config.yaml") as f:  # a study's run: the settings it records
        recorded = yaml.safe_load(f)
    assert recorded["model"] == "lit_robust.modules.PGDAT" and recorded["model.model.width"] == 4


def _zoo_of_state_dicts(tmp_path, count):
    entries = []
    for index in range(count):
        torch.manual_seed(index)
        torch.save(SmallCNN(width=2).state_dict(), tmp_path / f"w{index}.pt")
        entries.append({"name": f"m{index}", "network": {"class_path": "lit_robust.models.SmallCNN",
                                                         "init_args": {"width": 2}},
                        "state_dict": f"w{index}.pt", "hyperparameters": {"seed": index}})
    return entries


DIGITS = ["--data", "lit_robust.data.DigitsDataModule", "--data.held_out_size", "16", "--data.eval_size", "16",
          "--data.train_eval_size", "16", "--evaluation.epsilon", "0.1", "--evaluation.step_size", "0.05",
          "--evaluation.test_steps", "1", "--evaluation.test_restarts", "1", "--flatness.measures", "[avg_loss]",
          "--flatness.test", "{examples: 8, samples: 1, pgd_steps: 1, pgd_restarts: 1}", "--trainer.accelerator", "cpu",
          "--launcher.kind", "debug"]


def test_interrupted_measurement_measures_only_the_rest(tmp_path):
    zoo = write_yaml(tmp_path / "zoo.yaml", {"models": _zoo_of_state_dicts(tmp_path, 5)})
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "lit_robust.study.measure", "--zoo", zoo, "--out", str(out), *DIGITS]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    results = [out / f"m{index}" / "version_0" / "metrics.json" for index in range(5)]
    process = subprocess.Popen(argv, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while sum(path.exists() for path in results) < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.kill()  # killed once two models are measured, while the third is
    process.wait()
    finished = [path.exists() for path in results]
    assert finished[:2] == [True, True] and not any(finished[3:])
    before = {index: results[index].stat().st_mtime_ns for index in range(5) if finished[index]}
    done = subprocess.run(argv, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for index in range(5):
        skipped = f"m{index}: finished before, skipped" in done.stderr
        measured = f"m{index}: finished in" in done.stderr
        assert (skipped, measured) == ((True, False) if index in before else (False, True)), done.stderr[-2000:]
    assert all(results[index].stat().st_mtime_ns == mtime for index, mtime in before.items())
    assert list(rows(out)) == [f"m{index}" for index in range(5)]


def test_bad_entries_fail_alone_with_one_line(tmp_path, caplog):
    entries = _zoo_of_state_dicts(tmp_path, 3)
    torch.manual_seed(0)
    torch.save(SmallCNN(width=2), tmp_path / "pickled.pt")  # the whole module: more than tensors
    entries += [
        {"name": "missing", "network": {"class_path": "lit_robust.models.SmallCNN"}, "state_dict": "nothere.pt"},
        {"name": "unknown_network", "network": {"class_path": "lit_robust.models.NoSuchNet"}, "state_dict": "w0.pt"},
        {"name": "other_shape", "network": {"class_path": "lit_robust.models.SmallCNN", "init_args": {"width": 4}},
         "state_dict": "w0.pt"},
        {"name": "pickled", "network": {"class_path": "lit_robust.models.SmallCNN", "init_args": {"width": 2}},
         "state_dict": "pickled.pt"},
        {"name": "unknown_torchvision", "torchvision": "no_such_model"},
        {"name": "wrong_input", "torchvision": "squeezenet1_1", "init_args": {"num_classes": 10}}]
    zoo = write_yaml(tmp_path / "zoo.yaml", {"models": entries})
    out = tmp_path / "out"
    caplog.set_level("INFO")
    assert measure(["--zoo", zoo, "--out", out, *DIGITS]) == 1
    assert list(rows(out)) == ["m0", "m1", "m2"]
    failed = {record.message.split(":")[0]: record.message for record in caplog.records
              if "FAILED" in record.message}
    assert set(failed) == {"missing", "unknown_network", "other_shape", "pickled", "unknown_torchvision",
                           "wrong_input"}
    assert "nothere.pt" in failed["missing"] and "must be an existing file" in failed["missing"]
    assert "NoSuchNet" in failed["unknown_network"]
    assert "shape" in failed["other_shape"]
    assert "--weights_only false" in failed["pickled"]
    assert "no_such_model" in failed["unknown_torchvision"]
    assert "in_channels" in failed["wrong_input"]  # 3-channel network, 1-channel digits: refused in one line
    assert all("\n" not in message for message in failed.values())
    caplog.clear()  # the opt-in reads the pickled file; the measured models are skipped, the other bad ones fail
    assert measure(["--zoo", zoo, "--out", out, *DIGITS, "--weights_only", "false"]) == 1
    assert list(rows(out)) == ["m0", "m1", "m2", "pickled"]
    assert metrics(out, "pickled")["test/loss"] == pytest.approx(metrics(out, "m0")["test/loss"])
    assert {record.message.split(":")[0] for record in caplog.records if "FAILED" in record.message} == {
        "missing", "unknown_network", "other_shape", "unknown_torchvision", "wrong_input"}


@pytest.mark.parametrize("change, named", [
    (["--zoo", "nothere.yaml"], "zoo='nothere.yaml'"),
    (["--zoo", "bad_zoo.yaml"], "models[0]: checkpoint"),
    (["--zoo", "twice.yaml"], "name"),
    (["--flatness.measures", "[no_such_measure]"], "no_such_measure"),
    (["--evaluation.epsilon", "-1"], "epsilon"),
    (["--launcher.jobs", "0"], "jobs"),
    (["--data.eval_size", "0"], "eval_size"),
])
def test_bad_settings_end_with_one_line_and_nothing_written(tmp_path, monkeypatch, capsys, change, named):
    monkeypatch.chdir(tmp_path)
    entries = _zoo_of_state_dicts(tmp_path, 1)
    write_yaml(tmp_path / "zoo.yaml", {"models": entries})
    write_yaml(tmp_path / "bad_zoo.yaml", {"models": [{"checkpoint": "a.ckpt", "network": NETWORK}]})
    write_yaml(tmp_path / "twice.yaml", {"models": entries + entries})
    argv = ["--zoo", "zoo.yaml", "--out", "out", *DIGITS]
    for index in range(0, len(change), 2):  # the later setting wins
        argv += change[index:index + 2]
    status, err = measure(argv, capsys)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "out").exists()


def test_csv_zoo_and_study_runs(tmp_path):
    from lit_robust.study.zoo import load_zoo, study_runs

    with open(tmp_path / "zoo.csv", "w") as f:
        f.write("name,network,init_args,state_dict,torchvision,lr,method\n"
                "a,lit_robust.models.SmallCNN,\"{width: 2}\",w0.pt,,0.05,at\n"
                "b,,\"{num_classes: 10}\",,squeezenet1_1,0.1,trades\n")
    a, b = load_zoo(str(tmp_path / "zoo.csv"))
    assert (a.name, a.kind, a.network, a.weights, a.hyperparameters) == (
        "a", "network", {"class_path": "lit_robust.models.SmallCNN", "init_args": {"width": 2}},
        str(tmp_path / "w0.pt"), {"lr": 0.05, "method": "at"})
    assert (b.kind, b.network, b.init_args, b.weights, b.hyperparameters) == (
        "torchvision", "squeezenet1_1", {"num_classes": 10}, None, {"lr": 0.1, "method": "trades"})
    run = tmp_path / "study" / "at_seed0" / "version_0"
    run.mkdir(parents=True)
    write_yaml(run / "config.yaml", {"optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}})
    model, = study_runs([str(run)])
    assert (model.name, model.kind, model.weights) == ("at_seed0", "checkpoint",
                                                       str(run / "checkpoints" / "last.ckpt"))
    assert model.hyperparameters == {"optimizer": "torch.optim.SGD", "optimizer.lr": 0.05}
