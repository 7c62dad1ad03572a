"""MART, misclassification-aware adversarial training (Wang et al. 2020; Stutz et al. 2021, supplement Eq. 14-15)."""


from lit_robust.modules.objectives import ObjectiveModule


class MART(ObjectiveModule):
    """min_w E[BCE(f(x_adv; w), y) + lambda * KL(f(x; w) || f(x_adv; w)) * (1 - f_y(x; w))] (Eq. 15).

    BCE is the binary cross-entropy of Eq. 14, -log f_y - log(1 - max_{y' != y} f_{y'}); x_adv
    maximises the plain cross-entropy (PGD), started at x + 0.001 * N(0, 1) with the model in eval
    mode, as in the official implementation the paper follows. The paper's text and the official
    code agree on the direction of the KL term (clean distribution first); the official code adds
    small constants inside the logarithms (1.0001, 1e-12) and to the weight (1.0000001), which this
    implementation leaves out (see :func:`~lit_robust.modules.losses.mart_binary_cross_entropy`).

    Per training step with PGD-K: K + 2 forward passes (K attack iterations, clean and adversarial
    for the update), K input-only backward passes, one full backward pass (PGD-7: 9 forward, 7
    input-only backward, 1 full backward).

    Args:
        lam: weight lambda of the KL term (1, 3, 6 or 9 in the paper; 6 in the official code).
        **kwargs: :class:`~lit_robust.modules.objectives.ObjectiveModule` arguments.
    """

    # ObjectiveModule.training_step runs the inner maximisation, PGD on cross-entropy from 0.001 * N(0, 1)
    # (last iterate, eval mode), then the outer loss of Eq. 15
    objective = "mart"
