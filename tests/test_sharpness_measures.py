"""Measures beyond the paper's: adaptive sharpness (invariance to rescaling neurons), Hutchinson's trace and
relative flatness against exact Hessians, PAC-Bayes sigma' under sharpening, the model left as it was,
bad settings, the monitor's names, and one process against two (DDP, gloo)."""

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from pytorch_lightning import Trainer
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from lit_robust.callbacks.flatness_monitor import EXTRA_MEASURES, FlatnessMonitor, FlatnessSettings
from lit_robust.errors import ConfigurationError
from lit_robust.measures import adaptive_sharpness, hessian_trace, pac_bayes_flatness, relative_flatness, sharpness
from lit_robust.models import SmallCNN
from tests import helpers
from tests.helpers import RandomImages, free_port, small_pgdat

EPSILON, STEP = 0.1, 0.025


def mlp(bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16, bias=bias), nn.ReLU(), nn.Linear(16, 10, bias=bias))


@pytest.fixture(scope="module")
def data():
    from lit_robust.data import DigitsDataModule

    x, y = DigitsDataModule.load()
    return x[:128], y[:128]


def trained(model: nn.Module, x, y) -> nn.Module:
    torch.manual_seed(0)
    return helpers.trained(model, x, y, steps=60, lr=0.2)


def rescaled(model: nn.Sequential, alpha: torch.Tensor) -> nn.Sequential:
    """Hidden neuron i's incoming weights and bias times alpha_i, its outgoing ones over alpha_i: the same function."""
    copy = mlp()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy[1].weight.mul_(alpha[:, None])
        copy[1].bias.mul_(alpha)
        copy[3].weight.div_(alpha[None, :])
    return copy.eval()


def test_adaptive_sharpness_is_invariant_to_rescaling_neurons_plain_sharpness_is_not(data):
    x, y = data
    torch.manual_seed(0)
    model = trained(mlp(), x, y)
    other = rescaled(model, torch.rand(16, generator=torch.Generator().manual_seed(1)) * 4.8 + 0.2)
    with torch.no_grad():
        assert torch.allclose(model(x), other(x), atol=1e-4)
    batches = [(x, y)]

    def measure(network, **kwargs):
        return sharpness(network, batches, loss="loss", generator=torch.Generator().manual_seed(0),
                         **kwargs).flatness

    for kwargs in (dict(case="average", rho=0.3, samples=4), dict(case="worst", p="2", rho=0.5, iterations=8),
                   dict(case="worst", p="inf", rho=0.05, iterations=8)):
        a, b = measure(model, **kwargs), measure(other, **kwargs)
        assert a > 1e-3, kwargs
        assert b == pytest.approx(a, rel=1e-3, abs=1e-5), kwargs
        plain_a, plain_b = measure(model, adaptive=False, **kwargs), measure(other, adaptive=False, **kwargs)
        assert abs(plain_b - plain_a) > 0.1 * max(abs(plain_a), abs(plain_b)), kwargs


def exact_hessian(model: nn.Module, x, y, names):
    """The Hessian of the mean loss with respect to the named tensors, flattened, by torch.autograd.functional."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def loss(flat):
        pieces = dict(zip(names, [t.view(s) for t, s in zip(flat.split(sizes), shapes)]))
        return F.cross_entropy(functional_call(model, {**params, **pieces}, (x,)), y)

    flat = torch.cat([params[n].detach().flatten() for n in names]).double()
    return torch.autograd.functional.hessian(loss, flat.float()).double()


def tiny(x):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Tanh(), nn.Linear(4, 3)).eval()


def test_hutchinson_trace_matches_the_exact_trace(data):
    x, y = data
    x, y = x[:32], y[:32] % 3
    model = tiny(x)
    names = [n for n, _ in model.named_parameters()]
    hessian = exact_hessian(model, x, y, names)
    samples = 1500
    result = hessian_trace(model, DataLoader(TensorDataset(x, y), batch_size=32), loss="loss", samples=samples,
                           generator=torch.Generator().manual_seed(0))
    # the Rademacher estimator's standard deviation: sqrt(2 sum_{i != j} H_ij^2 / K)
    off_diagonal = hessian - torch.diag(torch.diag(hessian))
    noise = math.sqrt(2 * float((off_diagonal ** 2).sum()) / samples)
    assert result.examples == 32
    assert abs(result.flatness - float(torch.trace(hessian))) < 4 * noise + 1e-4


def test_relative_flatness_matches_the_exact_hessian_blocks(data):
    x, y = data
    x, y = x[:32], y[:32] % 3
    model = tiny(x)
    w = model[3].weight.detach().double()
    h = exact_hessian(model, x, y, ["3.weight"]).view(3, 4, 3, 4)
    # Petzka et al. Def. 3: sum_{s, s'} <w_s, w_s'> Tr(H_{s,s'})
    kappa = sum(float(w[s] @ w[t]) * float(torch.diagonal(h[s, :, t, :]).sum()) for s in range(3) for t in range(3))
    samples = 1500
    result = relative_flatness(model, [(x, y)], loss="loss", samples=samples,
                               generator=torch.Generator().manual_seed(0))
    assert abs(result.flatness - kappa) < 4 * result.std / math.sqrt(samples) + 1e-5
    assert abs(kappa) > 10 * result.std / math.sqrt(samples)  # the comparison is not trivially met


def test_pac_bayes_sigma_shrinks_when_the_loss_surface_is_sharpened(data):
    x, y = data
    model = trained(mlp(bias=False), x, y)
    sharper = mlp(bias=False)
    sharper.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})  # same argmax, 1/0.5 sharper
    sharper.eval()

    def sigma(network, magnitude_aware):
        return pac_bayes_flatness(network, [(x, y)], error="err", magnitude_aware=magnitude_aware, samples=2,
                                  search_depth=10, magnitude_epsilon=0.0,
                                  generator=torch.Generator().manual_seed(0)).details["sigma"]

    plain, plain_sharper = sigma(model, False), sigma(sharper, False)
    assert plain_sharper < 0.75 * plain
    assert plain_sharper == pytest.approx(0.5 * plain, rel=0.25)
    # the magnitude-aware noise scales with the weights: unchanged
    assert sigma(sharper, True) == pytest.approx(sigma(model, True), rel=1e-6)


def test_model_is_left_exactly_as_it_was(data):
    x, y = data
    torch.manual_seed(0)
    model = SmallCNN(width=4)
    model.train()
    model.features[0][1].eval()
    F.cross_entropy(model(x[:16]), y[:16]).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    batches = [(x[:16], y[:16])]
    attack = dict(epsilon=EPSILON, step_size=STEP, steps=2)
    adaptive_sharpness(model, batches, "average", samples=2, reference_steps=1, reference_restarts=1, **attack)
    adaptive_sharpness(model, batches, "worst", p="inf", iterations=3, reference_steps=1, reference_restarts=1,
                       **attack)
    relative_flatness(model, batches, samples=2, **attack)
    hessian_trace(model, batches, samples=2, **attack)
    pac_bayes_flatness(model, batches, search_depth=2, samples=1, **attack)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_bad_settings():
    batches = [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    model = SmallCNN(width=2)
    for kwargs, name in ((dict(rho=0.0), "rho"), (dict(p="1"), "p"), (dict(samples=0), "samples"),
                         (dict(case="best"), "case")):
        with pytest.raises(ConfigurationError, match=name):
            adaptive_sharpness(model, batches, **kwargs)
    with pytest.raises(ConfigurationError, match="samples"):
        hessian_trace(model, batches, samples=0)
    with pytest.raises(ConfigurationError, match="target"):
        pac_bayes_flatness(model, batches, target=0.0)
    with pytest.raises(ConfigurationError, match="adaptive_worst_rloss_linf"):  # the message lists every name
        FlatnessMonitor(measures=("adaptive_worst_rloss_l3",))
    for kwargs, name in ((dict(adaptive_rho=0.0), "adaptive_rho"), (dict(adaptive_rho_linf=-1.0), "adaptive_rho_linf"),
                         (dict(test=FlatnessSettings(hutchinson_samples=0)), "test.hutchinson_samples"),
                         (dict(fit=FlatnessSettings(adaptive_samples=0)), "fit.adaptive_samples"),
                         (dict(pac_bayes_samples=0), "pac_bayes_samples")):
        with pytest.raises(ConfigurationError, match=f"^{name}="):
            FlatnessMonitor(**kwargs)


def monitored(devices: int):
    """The test of a fixed (seeded) module with every measure beyond the paper's; the monitor's results."""
    monitor = FlatnessMonitor(measures=EXTRA_MEASURES, test_splits=("eval",), batch_size=16,
                              test=FlatnessSettings(examples=32, samples=2, pgd_steps=2, pgd_restarts=1,
                                                    ascent_iterations=2, ascent_restarts=1, hutchinson_samples=3),
                              pac_bayes_search_depth=3, pac_bayes_samples=1, parallel=1)
    trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      inference_mode=False, callbacks=[monitor], limit_test_batches=1)
    trainer.test(small_pgdat(), datamodule=RandomImages(batch_size=32, eval_batch_size=32), verbose=False)
    return trainer, monitor


def test_monitor_logs_every_measure_by_name():
    trainer, monitor = monitored(1)
    for name in EXTRA_MEASURES:
        assert math.isfinite(float(trainer.callback_metrics[f"flatness/{name}"])), name
        assert monitor.results[f"flatness/{name}"].examples == 32


def ddp_worker(rank: int, world_size: int, port: int, directory: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    _, monitor = monitored(world_size)
    torch.save({k: v.flatness for k, v in monitor.results.items()}, os.path.join(directory, f"rank{rank}.pt"))


def test_one_and_two_processes_agree(tmp_path):
    _, monitor = monitored(1)
    single = {k: v.flatness for k, v in monitor.results.items()}
    mp.spawn(ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    two = torch.load(tmp_path / "rank0.pt")
    assert two == torch.load(tmp_path / "rank1.pt")
    for name, one in single.items():
        if name.endswith(("relative_loss", "hessian_trace_loss", "_err")):
            # the same probe vectors / noise draws on every process, clean examples: equal but for rounding
            assert two[name] == pytest.approx(one, rel=1e-4, abs=1e-6), name
        elif "pac_bayes" in name:
            # sigma' = flatness^(-1/2) from a 3-step bisection of [0, 2] on PGD's noisy errors: within two steps
            assert two[name] ** -0.5 == pytest.approx(one ** -0.5, abs=0.5), name
        else:
            # PGD's random starts and per-batch draws differ with the split of the examples
            assert two[name] == pytest.approx(one, rel=0.5, abs=0.05), name


def test_report_correlates_every_measure(tmp_path):
    import csv
    import json

    from scipy.stats import kendalltau, pearsonr

    from lit_robust.study.measures_report import measured_models, write_measure_report
    from lit_robust.study.runs import load_run

    runs, values = [], {"rloss": [1.6, 1.2, 1.0, 1.4, 1.1], "rloss_train": [0.3, 0.6, 0.7, 0.5, 0.6],
                        "rerr": [0.4, 0.3, 0.25, 0.35, 0.3], "rerr_train": [0.1, 0.2, 0.2, 0.15, 0.1],
                        "hessian_trace_rloss": [9.0, 5.0, 2.0, 7.0, 5.0],
                        "adaptive_avg_rloss": [0.1, 0.3, 0.2, 0.4, 0.5]}
    for i in range(5):
        run = tmp_path / f"run{i}"
        run.mkdir()
        metrics = {"test/rloss_pgd": values["rloss"][i], "test/rloss_pgd_train": values["rloss_train"][i],
                   "test/rerr_pgd": values["rerr"][i], "test/rerr_pgd_train": values["rerr_train"][i],
                   "flatness/hessian_trace_rloss": values["hessian_trace_rloss"][i],
                   "flatness/adaptive_avg_rloss": values["adaptive_avg_rloss"][i]}
        (run / "metrics.json").write_text(json.dumps(metrics))
        runs.append(str(run))
    written = write_measure_report(measured_models([load_run(run) for run in runs]), str(tmp_path), resamples=50)
    md_path, csv_path = written["measures_md"], written["measures_csv"]
    table = list(csv.reader(open(csv_path)))
    rows = {row[0]: dict(zip(table[0], row)) for row in table[1:]}
    assert set(rows) == {"flatness/hessian_trace_rloss", "flatness/adaptive_avg_rloss"}
    trace = values["hessian_trace_rloss"]
    gap = [a - b for a, b in zip(values["rloss"], values["rloss_train"])]
    for target, ys in (("RLoss (test)", values["rloss"]), ("RLoss gap", gap)):
        row = rows["flatness/hessian_trace_rloss"]
        assert float(row[f"Pearson {target}"]) == pytest.approx(pearsonr(trace, ys).statistic, abs=1e-3)
        assert float(row[f"Kendall {target}"]) == pytest.approx(kendalltau(trace, ys).statistic, abs=1e-3)
    assert "| flatness/adaptive_avg_rloss | 5 |" in open(md_path).read()


def test_measures_config_runs_every_measure_from_the_command_line(tmp_path):
    import json

    from tests.conftest import ROOT, run_train

    at = os.path.join(ROOT, "configs", "digits", "at.yaml")
    config = os.path.join(ROOT, "configs", "callbacks", "measures.yaml")
    code = run_train(["test", "--config", at, "--config", config, "--allow_untrained", "true",
                      "--trainer.limit_test_batches", "1",
                      "--trainer.enable_progress_bar", "false", "--model.init_args.model.init_args.width", "2",
                      "--model.init_args.test_steps", "1", "--model.init_args.test_restarts", "1",
                      "--model.init_args.test_on_train", "false", "--trainer.callbacks.test_splits", "[eval]",
                      "--trainer.callbacks.test", "{examples: 8, samples: 1, pgd_steps: 1, pgd_restarts: 1, "
                      "ascent_iterations: 1, ascent_restarts: 1, hutchinson_samples: 1, adaptive_samples: 1}",
                      "--trainer.callbacks.pac_bayes_search_depth", "1"], cwd=str(tmp_path))
    assert code == 0
    (path,) = tmp_path.glob("logs/*/version_0/metrics.json")
    metrics = json.loads(path.read_text())
    for name in EXTRA_MEASURES:
        assert math.isfinite(metrics[f"flatness/{name}"]), name
