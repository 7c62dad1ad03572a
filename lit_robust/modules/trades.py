"""TRADES (Zhang et al. 2019; papers/001 Eq. 13)."""

from typing import Any, Dict

from torch import Tensor

from lit_robust.errors import check
from lit_robust.modules.base import step_output
from lit_robust.modules.objectives import ObjectiveModule


class TRADES(ObjectiveModule):
    """min_w E[CE(f(x; w), y) + lambda * max_{||delta|| <= epsilon} KL(f(x; w) || f(x + delta; w))] (Eq. 13).

    The inner maximisation is PGD on the KL divergence, started at x + 0.001 * N(0, 1) and run with
    the model in eval mode, as in the official implementation the paper follows; the outer loss is
    averaged over the batch. The official code recomputes f(x) in every attack iteration and twice in
    the outer loss; here the attack's target f(x) is computed once (the model is in eval mode, so it
    is the same) and the outer loss reuses its clean logits, which changes nothing but batch
    normalisation's running statistics, updated twice per step instead of three times.

    Per training step with PGD-K: K + 3 forward passes (one clean pass without gradients in eval mode
    as the attack's target distribution, K attack iterations, clean and adversarial for the update),
    K input-only backward passes, one full backward pass (PGD-7: 10 forward, 7 input-only backward,
    1 full backward).

    Args:
        lam: weight lambda of the KL term (1, 3, 6 or 9 in the paper; 6 is the common choice).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, lam: float = 6.0, **kwargs: Any) -> None:
        check(lam >= 0, "lam", lam, "a number >= 0 (the paper uses 1, 3, 6 or 9)")
        super().__init__(*args, **kwargs)

    # the training attack: PGD on KL(f(x) || f(x + delta)) from 0.001 * N(0, 1), last iterate, eval mode
    objective = "trades"

    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        # inner maximisation: max_delta KL(f(x) || f(x + delta))
        x_adv = self.train_attack(self.model, x, y)
        # outer minimisation (Eq. 13): CE(f(x), y) + lambda * KL(f(x) || f(x_adv))
        loss, adversarial_logits = self.robust_loss(self.model, x, x_adv, y)
        return step_output(loss, adversarial_logits, y)
