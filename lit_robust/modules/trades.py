"""TRADES (Zhang et al. 2019; Stutz et al. 2021, supplement Eq. 13)."""


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
        **kwargs: :class:`~lit_robust.modules.objectives.ObjectiveModule` arguments.
    """

    # ObjectiveModule.training_step runs the inner maximisation, PGD on KL(f(x) || f(x + delta)) from
    # 0.001 * N(0, 1) (last iterate, eval mode), then the outer loss of Eq. 13
    objective = "trades"
