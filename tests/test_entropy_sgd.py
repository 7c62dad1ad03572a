"""Entropy-SGD (Chaudhari et al. 2017, Algorithm 1): batches per update, the update itself, the noise, resuming in
the middle of a cycle, DDP, pass counts, training."""

import copy
import functools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback
from torch.func import functional_call

from lit_robust.attacks import PGD
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import EntropySGD
from tests.helpers import (
    SMALL_ATTACKS,
    SaveWeightsPerRank,
    count_passes,
    robust_error_after_training,
    small_network,
    trainer,
)


def flat(network):
    return torch.cat([p.detach().flatten() for p in network.parameters()])


def fixed_batches(count, batch_size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch_size, 1, 8, 8, generator=generator),
             torch.randint(0, 10, (batch_size,), generator=generator)) for _ in range(count)]


class Batches:
    """A fixed list of batches that remembers how far it got, so that Lightning resumes it mid-epoch."""

    def __init__(self, batches):
        self.batches, self.position, self.resume_at = batches, 0, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        start, self.resume_at = self.resume_at, 0
        for self.position in range(start + 1, len(self.batches) + 1):
            yield self.batches[self.position - 1]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.resume_at = state["position"]


class Record(Callback):
    """The network's weights after every training batch."""

    def __init__(self):
        self.weights = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(flat(pl_module.model))


def test_consumes_L_batches_per_update_and_moves_the_weights_only_then(tmp_path):
    torch.manual_seed(0)
    module = EntropySGD(small_network(), langevin_steps=3, train_steps=2, **SMALL_ATTACKS,
                        optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    record, initial = Record(), flat(module.model)
    run = trainer(tmp_path, callbacks=[record])
    run.fit(module, train_dataloaders=Batches(fixed_batches(8)))
    assert run.global_step == 2  # 8 batches: updates after batches 3 and 6, batches 7 and 8 start a third cycle
    weights = [initial] + record.weights
    moved = [not torch.equal(before, after) for before, after in zip(weights, weights[1:])]
    assert moved == [False, False, True, False, False, True, False, False]
    assert module.langevin_count == 2


def reference_updates(network, batches, updates, L, lr, gamma_0, gamma_1, eta_prime, alpha, attack):
    """Algorithm 1 of Chaudhari et al. (2017) without noise, written from the paper: for each update of x,
    x', mu <- x; L times: dx' = grad f(x') - gamma (x - x'), x' <- x' - eta' dx', mu <- (1 - alpha) mu + alpha x';
    then x <- x - eta gamma (x - mu), with gamma = gamma_0 (1 + gamma_1)^t and eta = lr / gamma_0."""
    names = [name for name, _ in network.named_parameters()]
    x = {name: p.detach().clone() for name, p in network.named_parameters()}
    eta = lr / gamma_0
    batches = iter(batches)
    for t in range(updates):
        gamma = gamma_0 * (1 + gamma_1) ** t
        x_prime = {n: v.clone() for n, v in x.items()}
        mu = {n: v.clone() for n, v in x.items()}
        for _ in range(L):
            images, labels = next(batches)
            at_x_prime = copy.deepcopy(network)
            at_x_prime.load_state_dict(x_prime)
            adversarial = attack(at_x_prime, images, labels)
            params = {n: v.clone().requires_grad_(True) for n, v in x_prime.items()}
            loss = F.cross_entropy(functional_call(network, params, (adversarial,)), labels)
            grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))
            for n in names:
                x_prime[n] = x_prime[n] - eta_prime * (grads[n] - gamma * (x[n] - x_prime[n]))
                mu[n] = (1 - alpha) * mu[n] + alpha * x_prime[n]
        x = {n: x[n] - eta * gamma * (x[n] - mu[n]) for n in names}
    return torch.cat([x[n].flatten() for n in names])


def test_two_updates_equal_algorithm_1(tmp_path):
    torch.manual_seed(0)
    network = small_network()
    initial = copy.deepcopy(network)
    settings = dict(langevin_steps=3, gamma=0.05, scoping=0.5, langevin_lr=0.2, alpha=0.4)
    module = EntropySGD(network, noise=0.0, train_steps=2, **settings, **SMALL_ATTACKS,
                        optimizer=lambda p: torch.optim.SGD(p, lr=0.3))
    attack = PGD(0.1, 0.025, 2, random_start=False, keep_best=False)
    module.train_attack = attack
    batches = fixed_batches(6)
    trainer(tmp_path).fit(module, train_dataloaders=Batches(batches))
    expected = reference_updates(initial, batches, 2, 3, 0.3, 0.05, 0.5, 0.2, 0.4, attack)
    assert torch.allclose(flat(module.model), expected, atol=1e-6)
    assert not torch.allclose(flat(initial), expected, atol=1e-3)


def test_langevin_noise_has_standard_deviation_sqrt_eta_prime_times_eps(tmp_path):
    torch.manual_seed(0)
    module = EntropySGD(small_network(), langevin_steps=2, langevin_lr=0.01, noise=1.0, train_steps=1,
                        **SMALL_ATTACKS)
    trainer(tmp_path).fit(module, train_dataloaders=Batches(fixed_batches(1)))
    step = torch.cat([(xp - w.detach()).flatten() for xp, w in zip(module.langevin, module.model.parameters())])
    assert step.std().item() == pytest.approx(0.1, rel=0.05)  # the gradient's part, 0.01 * grad, is far smaller
    assert abs(step.mean().item()) < 0.01


class KeepGlobalRandomState(Callback):
    """Saves the global random state in checkpoints: the attacks' random starts draw from it (not Entropy-SGD)."""

    def state_dict(self):
        return {"rng": torch.get_rng_state()}

    def load_state_dict(self, state):
        torch.set_rng_state(state["rng"])


class SaveAt(Callback):
    def __init__(self, path, epoch, batch_idx):
        self.path, self.epoch, self.batch_idx = path, epoch, batch_idx

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch_idx):
            trainer.save_checkpoint(self.path)


def test_resuming_in_the_middle_of_an_epoch_and_a_cycle_continues_identically(tmp_path):
    batches = fixed_batches(7)

    def fit(ckpt_path=None, callbacks=()):
        torch.manual_seed(0)
        module = EntropySGD(SmallCNN(width=4), langevin_steps=3, train_steps=2, noise=0.01, **SMALL_ATTACKS,
                            optimizer=lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
                            lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
        run = trainer(tmp_path, max_epochs=2, callbacks=[KeepGlobalRandomState(), *callbacks])
        run.fit(module, train_dataloaders=Batches(batches), ckpt_path=ckpt_path)
        return module, run

    path = str(tmp_path / "middle.ckpt")
    uninterrupted, run = fit(callbacks=[SaveAt(path, epoch=1, batch_idx=1)])  # 9 batches in: 3 updates + 0 steps
    assert run.global_step == 4 and uninterrupted.langevin_count == 2
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["entropy_sgd"]["langevin_count"] == 0 and checkpoint["global_step"] == 3
    path = str(tmp_path / "cycle.ckpt")
    fit(callbacks=[SaveAt(path, epoch=0, batch_idx=4)])  # 5 batches in: 1 update + 2 Langevin steps
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["entropy_sgd"]["langevin_count"] == 2 and checkpoint["global_step"] == 1
    assert all(key.startswith("model.") for key in checkpoint["state_dict"])  # x' and mu are not module state
    resumed, _ = fit(ckpt_path=path)
    assert torch.equal(flat(resumed.model), flat(uninterrupted.model))
    for resumed_x_prime, x_prime in zip(resumed.langevin, uninterrupted.langevin):
        assert torch.equal(resumed_x_prime, x_prime)


def test_two_process_ddp_keeps_weights_identical(digits, tmp_path):
    torch.manual_seed(0)
    module = EntropySGD(SmallCNN(width=4), langevin_steps=2, train_steps=2, noise=0.01, **SMALL_ATTACKS)
    run = trainer(tmp_path, devices=2, strategy="ddp_spawn", limit_train_batches=4,
                  callbacks=[SaveWeightsPerRank(str(tmp_path))])
    initial = torch.cat([p.detach().flatten() for p in module.parameters()])
    run.fit(module, datamodule=digits)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(rank0, rank1)
    assert not torch.equal(rank0, initial)


def test_pass_counts_with_pgd7(tmp_path):
    module = EntropySGD(SmallCNN(width=4), langevin_steps=2, train_steps=7, **SMALL_ATTACKS)

    def fit_four_batches(batch, batch_idx):
        trainer(tmp_path).fit(module, train_dataloaders=Batches(fixed_batches(4)))
        return {"loss": torch.zeros((), requires_grad=True)}  # the fit did its own backward passes

    counted = SimpleNamespace(model=module.model, training_step=fit_four_batches)
    assert count_passes(counted, None) == (4 * 8, 4 * 7, 4)  # 4 Langevin steps; the 2 updates need no pass


def test_trains_robust_on_digits(digits, tmp_path):
    torch.manual_seed(0)
    module = EntropySGD(small_network(), langevin_steps=2, train_steps=3, **SMALL_ATTACKS,
                        optimizer=lambda p: torch.optim.SGD(p, lr=2.0, momentum=0.9, nesterov=True))
    assert robust_error_after_training(module, digits, tmp_path, max_epochs=4) < 0.6  # chance is 0.9


@pytest.mark.parametrize("kwargs, setting", [
    (dict(langevin_steps=0), "langevin_steps"), (dict(gamma=0.0), "gamma"), (dict(scoping=-0.1), "scoping"),
    (dict(langevin_lr=0.0), "langevin_lr"), (dict(noise=-1.0), "noise"), (dict(alpha=1.5), "alpha"),
])
def test_bad_settings_fail_at_construction(kwargs, setting):
    with pytest.raises(ConfigurationError, match=f"^{setting}="):
        EntropySGD(SmallCNN(width=8), **kwargs)


def test_a_schedule_that_needs_a_metric_is_refused():
    module = EntropySGD(SmallCNN(width=8), lr_scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau))
    with pytest.raises(ConfigurationError, match="^lr_scheduler='ReduceLROnPlateau'"):
        module.configure_optimizers()
