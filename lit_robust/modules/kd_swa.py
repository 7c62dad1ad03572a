"""Adversarial training with knowledge distillation from a robust and a standard teacher (Chen et al. ICLR 2021)."""

import copy
import os
import warnings
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_robust.errors import check
from lit_robust.modules.base import AdversarialModule, step_output

Teacher = Union[str, nn.Module]


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton et al. 2015)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return temperature ** 2 * (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1).mean()


class KDSWA(AdversarialModule):
    """PGD-AT whose outer loss distils a robust and a standard teacher; with
    :class:`~lit_robust.callbacks.swa.StochasticWeightAveraging` it is "KD+SWA" of Chen et al. (ICLR 2021, "Robust
    overfitting may be mitigated by properly learned smoothening"), whose distillation objective is

    min_w E[(1 - lambda_R - lambda_S) CE(f(x'; w), y) + lambda_R T^2 KL(f_R(x') / T || f(x'; w) / T)
            + lambda_S T^2 KL(f_S(x') / T || f(x'; w) / T)],

    with x' the PGD adversarial example of the student f (the inner maximisation of PGD-AT, on
    cross-entropy), f_R a robust (adversarially trained) and f_S a standard (clean) teacher evaluated
    on the same x', and KL(p / T || q / T) the divergence between the softmaxes at temperature T.
    The defaults are the official code's (VITA-Group/Alleviate-Robust-Overfitting): T = 2,
    lambda_R = 0.6, lambda_S = 0.1, so CE has weight 0.3; its teachers are the best-robust-accuracy
    snapshot of a PGD-AT run and the best-accuracy snapshot of standard training, trained beforehand
    (no self-teacher), and the student's SWA is the callback's.

    The paper's text is not among the project's papers: the objective and its defaults are those of
    the paper's method description as the official code implements them.

    Differences from the official code: it writes the distillation term as the cross-entropy
    against the teacher's softened distribution, which is this KL plus the teacher's entropy, a
    constant in w (same gradient, logged loss higher by that constant); its attack runs with
    batch normalisation in train mode, here in eval mode as every attack of the project.

    The teachers are frozen (``requires_grad`` off, eval mode, no gradients) and kept out of the
    registered module tree (as the weight-perturbing variants' extra state), so ``parameters()``,
    ``state_dict()``, checkpoints and weight averaging see only the student (weight averaging's copy of
    the module holds a copy of the teachers, which it never averages or swaps).

    Per training step with PGD-K: K forward and K input-only backward passes of the student for
    the attack, one forward and one full backward pass for the update, plus one forward pass of
    each teacher without gradients (PGD-7: 8 + 2 forward, 7 input-only backward, 1 full backward).

    Args:
        robust_teacher: f_R: a checkpoint of this library (its ``state_dict``, i.e. the averaged
            weights when the run used weight averaging or SWA) loaded into a copy of the student's
            network, or a network.
        standard_teacher: f_S, the same way (e.g. a ``StandardTraining`` checkpoint).
        temperature: T of the distillation terms (2).
        robust_weight: lambda_R, weight of the robust teacher's term (0.6).
        standard_weight: lambda_S, weight of the standard teacher's term (0.1).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, robust_teacher: Optional[Teacher] = None,
                 standard_teacher: Optional[Teacher] = None, temperature: float = 2.0, robust_weight: float = 0.6,
                 standard_weight: float = 0.1, **kwargs: Any) -> None:
        for name, teacher in (("robust_teacher", robust_teacher), ("standard_teacher", standard_teacher)):
            check(isinstance(teacher, nn.Module) or (isinstance(teacher, str) and os.path.isfile(teacher)), name,
                  teacher, "an existing checkpoint file of this library or an nn.Module")
        check(temperature > 0, "temperature", temperature, "a number > 0 (the paper: 2)")
        check(robust_weight >= 0, "robust_weight", robust_weight, "a number >= 0 (the paper: 0.6)")
        check(standard_weight >= 0, "standard_weight", standard_weight, "a number >= 0 (the paper: 0.1)")
        check(robust_weight + standard_weight <= 1, "standard_weight", standard_weight,
              f"at most 1 - robust_weight = {1 - robust_weight} (the cross-entropy's weight is "
              "1 - robust_weight - standard_weight)")
        with warnings.catch_warnings():
            # Lightning suggests ignoring a network argument because "it is saved during checkpointing";
            # the teachers are not (see below), and their hyper-parameter entry is removed instead
            warnings.filterwarnings("ignore", message="Attribute '(robust|standard)_teacher' is an instance")
            super().__init__(*args, **kwargs)
        # a network given in Python is no hyper-parameter; a path is
        for name in ("robust_teacher", "standard_teacher"):
            if name in self.hparams and not isinstance(self.hparams[name], str):
                self.hparams.pop(name)
        # a tuple, so that nn.Module does not register the teachers as submodules
        self._teachers: Tuple[nn.Module, nn.Module] = (self.frozen(robust_teacher), self.frozen(standard_teacher))

    @property
    def teachers(self) -> Tuple[nn.Module, nn.Module]:
        """(f_R, f_S) on the student's device."""
        device = next(self.model.parameters()).device
        if next(self._teachers[0].parameters()).device != device:
            self._teachers = tuple(teacher.to(device) for teacher in self._teachers)
        return self._teachers

    def frozen(self, teacher: Teacher) -> nn.Module:
        """``teacher`` (a network, or a checkpoint loaded into a copy of the student's network), frozen."""
        if isinstance(teacher, str):
            state = torch.load(teacher, map_location="cpu", weights_only=True)["state_dict"]
            network = copy.deepcopy(self.model)
            network.load_state_dict({name[len("model."):]: value for name, value in state.items()
                                     if name.startswith("model.")})
            teacher = network
        return teacher.requires_grad_(False).eval()

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        h = self.hparams
        # inner maximisation: PGD-AT's, on the student
        x_adv = self.train_attack(self.model, x, y)
        # outer minimisation: CE and the distillation of both teachers on the adversarial examples
        logits = self.model(x_adv)
        robust_teacher, standard_teacher = self.teachers
        with torch.no_grad():
            robust_logits, standard_logits = robust_teacher.eval()(x_adv), standard_teacher.eval()(x_adv)
        loss = ((1 - h.robust_weight - h.standard_weight) * F.cross_entropy(logits, y)
                + h.robust_weight * distillation_loss(logits, robust_logits, h.temperature)
                + h.standard_weight * distillation_loss(logits, standard_logits, h.temperature))
        return step_output(loss, logits, y)
