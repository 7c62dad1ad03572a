"""Entropy-SGD on the robust loss (Chaudhari et al. 2017; Stutz et al. 2021, supplement Sec. G)."""

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lit_robust.errors import check
from lit_robust.modules.base import AdversarialModule, step_output
from lit_robust.weights import perturbed


class EntropySGD(AdversarialModule):
    """Adversarial training with Entropy-SGD (Chaudhari et al. 2017, "Entropy-SGD: biasing gradient
    descent into wide valleys", Algorithm 1; Stutz et al. 2021, supplement Sec. G) on the robust loss
    f(x) = CE(network(x_adv; x), y), x being the weights and x_adv from PGD at the weights in use.

    Algorithm 1 with L Langevin iterations: x', mu <- x; then, for l = 1..L, on a fresh training
    batch with fresh adversarial examples computed at x',

        dx' = grad f(x') - gamma (x - x'),   x' <- x' - eta' dx' + sqrt(eta') eps N(0, I),
        mu <- (1 - alpha) mu + alpha x';

    finally x <- x - eta gamma (x - mu), with the scope gamma = gamma_0 (1 + gamma_1)^t after t
    updates of x ("scoping"). Each training step is one Langevin iteration on one batch, so an
    update of x consumes L batches, and an epoch, one pass over the data, makes 1/L as many updates
    as an epoch of AT. Stutz et al. 2021 train 150/L epochs of as many updates as AT makes per epoch, that
    is 150 passes over the data: 150 epochs here. A cycle that an epoch leaves unfinished goes on in
    the next epoch; one left unfinished when training ends does not change x.

    The update of x is the configured optimizer's step with the gradient (gamma / gamma_0) (x - mu),
    so its learning rate is eta * gamma_0: with plain SGD this is Algorithm 1's update; momentum and
    weight decay of the optimizer act on it as in the official code, and the learning-rate
    schedule steps per epoch or per update of x. Lightning's global step (``max_steps``, checkpoints
    every n steps, weight averaging, weight clipping) counts updates of x.

    The network holds x between steps (validation, checkpoints and weight averaging see x); x' and
    mu, the position in the cycle and the noise generator are not part of the module tree and are
    saved in and restored from checkpoints, so a run resumes in the middle of a cycle. The noise
    generator is seeded identically on every process, so DDP replicas stay identical.

    Differences from the official code (ucla-vision/entropy-sgd), which Stutz et al. 2021 follow: it
    evaluates one more batch per update whose gradient it discards (here exactly L batches); its
    Langevin step uses Nesterov momentum and weight decay, and noise eps * sqrt(2 eta'); its update
    of x uses the gradient x - mu without gamma (here gamma / gamma_0, so equal when gamma_1 = 0);
    its PyTorch version never advances t, so gamma_1 has no effect there (the recipes set ``scoping=0``).

    Per training step with PGD-K: K + 1 forward, K input-only backward, 1 full backward pass (PGD-7:
    8 forward, 7 input-only backward, 1 full backward); the update of x every L steps needs no pass.
    Training metrics are those at the Langevin iterate x'.

    Args:
        langevin_steps: L, Langevin iterations (batches) per update of x (1, 2, 3 or 5 in Stutz et al. 2021).
        gamma: gamma_0, the scope coupling x' to x.
        scoping: gamma_1, the growth of the scope per update of x.
        langevin_lr: eta', the Langevin step size (0.1 in the official code).
        noise: eps, the thermal noise of the Langevin dynamics.
        alpha: weight of the newest iterate in the average mu (0.25 in the official code).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, langevin_steps: int = 1, gamma: float = 0.03, scoping: float = 0.0,
                 langevin_lr: float = 0.1, noise: float = 1e-4, alpha: float = 0.25, **kwargs: Any) -> None:
        check(isinstance(langevin_steps, int) and langevin_steps >= 1, "langevin_steps", langevin_steps,
              "an integer >= 1 (1, 2, 3 or 5 in the paper)")
        check(gamma > 0, "gamma", gamma, "a number > 0")
        check(scoping >= 0, "scoping", scoping, "a number >= 0")
        check(langevin_lr > 0, "langevin_lr", langevin_lr, "a number > 0")
        check(noise >= 0, "noise", noise, "a number >= 0")
        check(0 < alpha <= 1, "alpha", alpha, "a number in (0, 1]")
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self.langevin: List[Tensor] = []
        self.average: List[Tensor] = []
        self.langevin_count = 0
        self.generator: Optional[torch.Generator] = None
        self._restored: Optional[Dict[str, Any]] = None

    def weights(self) -> List[Tensor]:
        """The tensors Entropy-SGD updates: every trainable parameter of the network."""
        return [w for w in self.model.parameters() if w.requires_grad]

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        weights = self.weights()
        if self.langevin_count == 0:
            self.langevin = [w.detach().clone() for w in weights]
            self.average = [w.detach().clone() for w in weights]
        with perturbed(weights, [xp - w.detach() for xp, w in zip(self.langevin, weights)]):
            # inner maximisation at the Langevin iterate x'
            x_adv = self.train_attack(self.model, x, y)
            # the robust loss at x' and its gradient
            logits = self.model(x_adv)
            loss = F.cross_entropy(logits, y)
            self.manual_backward(loss)
        self.langevin_step(weights)
        if self.langevin_count >= self.hparams.langevin_steps:
            self.local_entropy_step(weights)
        return step_output(loss, logits, y)

    def scope(self) -> float:
        """gamma = gamma_0 (1 + gamma_1)^t after t updates of x."""
        return self.hparams.gamma * (1 + self.hparams.scoping) ** self.global_step

    @torch.no_grad()
    def langevin_step(self, weights: List[Tensor]) -> None:
        """x' <- x' - eta' (grad f(x') - gamma (x - x')) + sqrt(eta') eps N(0, I); mu <- (1 - alpha) mu + alpha x'."""
        h = self.hparams
        gamma = self.scope()
        for w, xp, mu in zip(weights, self.langevin, self.average):
            grad = w.grad if w.grad is not None else torch.zeros_like(w)
            xp.sub_(h.langevin_lr * (grad - gamma * (w - xp)))
            if h.noise > 0:
                xp.add_(torch.randn(xp.shape, generator=self.generator, device=xp.device, dtype=xp.dtype),
                        alpha=math.sqrt(h.langevin_lr) * h.noise)
            mu.mul_(1 - h.alpha).add_(xp, alpha=h.alpha)
        self.optimizers().zero_grad()
        self.langevin_count += 1

    def local_entropy_step(self, weights: List[Tensor]) -> None:
        """x <- x - eta gamma (x - mu): the optimizer's step with the gradient (gamma / gamma_0) (x - mu)."""
        optimizer = self.optimizers()
        relative_scope = self.scope() / self.hparams.gamma
        for w, mu in zip(weights, self.average):
            w.grad = relative_scope * (w.detach() - mu)
        optimizer.step()
        optimizer.zero_grad()
        self.langevin_count = 0
        self.langevin, self.average = [], []
        if self.hparams.lr_scheduler_interval == "step":
            self.step_scheduler()

    @override
    def on_train_epoch_end(self) -> None:
        if self.hparams.lr_scheduler_interval == "epoch":
            self.step_scheduler()

    def step_scheduler(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    @override
    def configure_optimizers(self):
        configured = super().configure_optimizers()
        scheduler = configured["lr_scheduler"]["scheduler"] if isinstance(configured, dict) else None
        check(not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau), "lr_scheduler",
              type(scheduler).__name__, "a schedule that steps without a metric (e.g. MultiStepLR) for EntropySGD")
        return configured

    @override
    def on_fit_start(self) -> None:
        check(getattr(self.trainer.precision_plugin, "scaler", None) is None, "trainer.precision",
              self.trainer.precision, "one that leaves gradients unscaled (32 or bf16-mixed) for the Langevin steps")
        restored, self._restored = self._restored, None
        self.generator = torch.Generator(device=self.device)
        if restored is None:
            # one seed for every process, so that the Langevin noise keeps DDP replicas identical
            self.generator.manual_seed(self.trainer.strategy.broadcast(int(torch.randint(2 ** 62, ()).item())))
            return
        self.generator.set_state(restored["generator"])
        self.langevin_count = restored["langevin_count"]
        self.langevin = [t.to(self.device) for t in restored["langevin"]]
        self.average = [t.to(self.device) for t in restored["average"]]

    @override
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["entropy_sgd"] = {
            "langevin_count": self.langevin_count,
            "langevin": [t.cpu() for t in self.langevin],
            "average": [t.cpu() for t in self.average],
            "generator": self.generator.get_state() if self.generator is not None else None,
        }

    @override
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("entropy_sgd")
        self._restored = state if state is not None and state["generator"] is not None else None
