"""MART, misclassification-aware adversarial training (Wang et al. 2020; papers/001 Eq. 14-15)."""

from typing import Any, Dict

from torch import Tensor

from lit_robust.errors import check
from lit_robust.modules.base import step_output
from lit_robust.modules.objectives import ObjectiveModule


class MART(ObjectiveModule):
    """min_w E[BCE(f(x_adv; w), y) + lambda * KL(f(x; w) || f(x_adv; w)) * (1 - f_y(x; w))] (Eq. 15).

    BCE is the binary cross-entropy of Eq. 14, -log f_y - log(1 - max_{y' != y} f_{y'}); x_adv
    maximises the plain cross-entropy (PGD), started at x + 0.001 * N(0, 1) with the model in eval
    mode, as in the official implementation the paper follows. The paper's text and the official
    code agree on the direction of the KL term (clean distribution first); the official code adds
    small constants inside the logarithms (1.0001, 1e-12) and to the weight (1.0000001), which this
    implementation leaves out (see :func:`~lit_robust.losses.mart_binary_cross_entropy`).

    Per training step with PGD-K: K + 2 forward passes (K attack iterations, clean and adversarial
    for the update), K input-only backward passes, one full backward pass (PGD-7: 9 forward, 7
    input-only backward, 1 full backward).

    Args:
        lam: weight lambda of the KL term (1, 3, 6 or 9 in the paper; 6 in the official code).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, lam: float = 6.0, **kwargs: Any) -> None:
        check(lam >= 0, "lam", lam, "a number >= 0 (the paper uses 1, 3, 6 or 9)")
        super().__init__(*args, **kwargs)

    # the training attack: PGD on cross-entropy from 0.001 * N(0, 1), last iterate, eval mode
    objective = "mart"

    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        # inner maximisation: max_delta CE(f(x + delta), y)
        x_adv = self.train_attack(self.model, x, y)
        # outer minimisation (Eq. 15): BCE(f(x_adv), y) + lambda * KL(f(x) || f(x_adv)) * (1 - f_y(x))
        loss, adversarial_logits = self.robust_loss(self.model, x, x_adv, y)
        return step_output(loss, adversarial_logits, y)
