"""The attacks and the input threat model: PGD (L-inf, L2) with restarts, FGSM, PGD-tau (friendly PGD), the
:class:`ThreatModel`; the input contract (:mod:`~lit_robust.attacks.input_contract`), the gradient-masking checks
(:mod:`~lit_robust.attacks.sanity`) and the clean, PGD and AutoAttack evaluation
(:mod:`~lit_robust.attacks.evaluation`)."""

from lit_robust.attacks.pgd import (
    FGSM,
    PAPER_EPSILON,
    PAPER_STEP_SIZE,
    PGD,
    AttackResult,
    BNMode,
    FriendlyPGD,
    Norm,
    Objective,
    ThreatModel,
    check_step_size,
    check_threat_model,
    per_example_loss,
    per_example_losses,
    restore_modes,
    threat_model_of,
)

__all__ = ["FGSM", "PAPER_EPSILON", "PAPER_STEP_SIZE", "PGD", "AttackResult", "BNMode", "FriendlyPGD", "Norm",
           "Objective", "ThreatModel", "check_step_size", "check_threat_model", "per_example_loss",
           "per_example_losses", "restore_modes", "threat_model_of"]
