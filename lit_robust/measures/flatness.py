"""Average-case and worst-case flatness of the robust loss (Stutz et al. 2021, Eq. 1-2; supplement Sec. D).

With RLoss(x, y; w) = max_{||delta||_inf <= epsilon} L(f(x + delta; w + nu), y) (cross-entropy, PGD)
and B_xi(w) the per-layer relative neighbourhood of :mod:`lit_robust.weights`:

- average-case flatness in RLoss (Stutz et al. 2021, supplement Eq. 3): E_nu[RLoss(w + nu)] - RLoss(w), nu drawn on
  B_xi(w) with xi = 0.5, 10 fresh samples per batch, RLoss(w + nu) by PGD-20 with one restart and
  the reference RLoss(w) by PGD-20 with 10 restarts (worst case per example);
- worst-case flatness in RLoss (Eq. 5-7): max_{nu in B_xi(w)} RLoss(w + nu) - RLoss(w), xi = 0.003,
  by joint gradient ascent on nu and delta per batch (20 iterations, nu's step normalised per layer
  as in Eq. 2 with learning rate 0.001), the maximum over 10 restarts;
- both in clean Loss: the same without delta (Stutz et al. 2021, supplement Sec. D, "Flatness of Clean Loss Landscape").

Everything runs in eval mode on the first 1000 examples of a loader (Stutz et al. 2021, supplement Sec. F) and leaves
the model exactly as it was: weights restored bit for bit, train/eval modes restored, ``.grad``
never touched. Several weight perturbations can be evaluated in one pass (``parallel``): the
perturbed copies of the selected tensors are stacked and the network is ``vmap``-ed over them with
``torch.func.functional_call``; ``parallel=1`` evaluates one perturbation after another on the
model itself, perturbing and restoring its weights in place, which needs no extra memory.

Where the paper's public code differs from its text, the text is followed:

- the code draws one weight perturbation per attempt for the whole evaluation set; the text draws
  them per batch, "for comparability" with the worst case, and so does this module;
- the code's worst-case example keeps one nu for all batches and uses weight learning rate 0.01;
  the text optimises nu per batch with learning rate 0.001;
- the code's examples compute the reference RLoss with a single PGD-20 run; the text uses PGD-20
  with 10 restarts, worst case per example.
"""

from abc import abstractmethod
from typing import Any, Dict, Iterable, List, Literal, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lit_robust.attacks import PAPER_EPSILON, PAPER_STEP_SIZE, PGD, Norm, per_example_loss, restore_modes
from lit_robust.errors import check, check_choice
from lit_robust.inference_mode import require_gradients
from lit_robust.measures.base import (
    Examples,
    LossKind,
    Measure,
    MeasureResult,
    Reduce,
    first_examples,
    reduced,
)
from lit_robust.weights import (
    Neighbourhood,
    Selection,
    names_and_weights,
    normalize_direction,
    parameters_at,
    perturbed,
)

PaperMeasure = Literal["avg_rloss", "worst_rloss", "avg_loss", "worst_loss"]
MEASURES: Tuple[str, ...] = ("avg_rloss", "worst_rloss", "avg_loss", "worst_loss")


class StackedNetwork(nn.Module):
    """K copies of ``model`` at the weights w + nu_k, evaluated in one ``vmap``-ed call.

    Takes the K inputs concatenated along the batch dimension, (K * B, ...), and returns the logits
    the same way, so an attack written for one network (:class:`~lit_robust.attacks.PGD`) runs on
    all K at once. The model's own tensors are not changed; the tensors outside B_xi(w) (batch
    normalisation) and the buffers are shared by the K copies, so it is meant for eval mode.

    Args:
        model: the network.
        names: the names of the perturbed tensors, as in ``model.named_parameters()``.
        weights: the tensors w, in the same order.
        nus: per tensor, the K perturbations stacked along a new first dimension.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], weights: Sequence[Tensor],
                 nus: Sequence[Tensor]) -> None:
        super().__init__()
        self.model = model
        self.copies = nus[0].shape[0]
        self.stacked = parameters_at(names, [w.detach() for w in weights], nus)

    def forward(self, x: Tensor) -> Tensor:
        per_copy = x.reshape(self.copies, -1, *x.shape[1:])
        return vmap(self._one)(self.stacked, per_copy).flatten(0, 1)

    def _one(self, parameters: Dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.model, parameters, (x,))

    def repeat(self, t: Tensor) -> Tensor:
        """``t`` once per copy, concatenated along the batch dimension."""
        return t.repeat(self.copies, *([1] * (t.dim() - 1)))


def stack(nus: Sequence[Sequence[Tensor]]) -> List[Tensor]:
    """K perturbations (each one tensor per layer) -> one tensor per layer with K rows."""
    return [torch.stack(layer) for layer in zip(*nus)]


def loss_of(model: nn.Module, x: Tensor, y: Tensor, attack: Optional[PGD]) -> Tensor:
    """Per-example RLoss by ``attack`` (worst case over its restarts), or clean Loss when ``attack`` is None."""
    if attack is None:
        with torch.no_grad():
            return per_example_loss(model(x), y)
    return attack.run(model, x, y).loss


def losses_at(model: nn.Module, names: Sequence[str], weights: Sequence[Tensor], nus: Sequence[Sequence[Tensor]],
              x: Tensor, y: Tensor, attack: Optional[PGD], parallel: int) -> Tensor:
    """Per-example RLoss (or Loss) at each w + nu_k, shape (K, B) (Stutz et al. 2021, supplement Eq. 3, first term).

    Args:
        model: the network, in the mode to evaluate it in.
        names: names of the perturbed tensors.
        weights: the tensors w.
        nus: K perturbations, each one tensor per layer.
        x: inputs, (B, ...).
        y: labels, (B,).
        attack: input attack for RLoss (a fresh attack per perturbation), or None for clean Loss.
        parallel: perturbations per ``vmap``-ed pass; 1 evaluates them one by one on the model
            itself, perturbing its weights in place and restoring them (as is any single one).
    """
    rows = []
    for start in range(0, len(nus), parallel):
        chunk = nus[start:start + parallel]
        if len(chunk) == 1:
            with perturbed(weights, chunk[0]):
                rows.append(loss_of(model, x, y, attack).unsqueeze(0))
        else:
            network = StackedNetwork(model, names, weights, stack(chunk))
            rows.append(loss_of(network, network.repeat(x), network.repeat(y), attack).view(len(chunk), -1))
    return torch.cat(rows)


def joint_ascent(model: nn.Module, names: Sequence[str], weights: Sequence[Tensor], neighbourhood: Neighbourhood,
                 x: Tensor, y: Tensor, attack: Optional[PGD], iterations: int, lr: float, restarts: int,
                 parallel: int, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, List[List[Tensor]]]:
    """Worst-case weight perturbations by joint ascent on nu and delta (Stutz et al. 2021, supplement Eq. 5-7).

    Per restart: a random nu in B_xi(w) and a random delta in the epsilon-ball; then ``iterations``
    times the gradients of sum_b L(f(x_b + delta_b; w + nu), y_b) with respect to nu (Eq. 6) and
    delta (Eq. 7), nu += lr * (its gradient normalised per layer as in Eq. 2, i.e. to norm
    ||w_l||), delta += the attack's ascent step (signed gradient), and both projected, nu per layer
    onto B_xi(w) and delta onto the epsilon-ball and [0, 1]. The loss is then evaluated at the final
    (nu, delta).

    Args:
        model: the network, in the mode to evaluate it in.
        names: names of the perturbed tensors.
        weights: the tensors w.
        neighbourhood: B_xi(w) around ``weights``.
        x: inputs, (B, ...).
        y: labels, (B,).
        attack: gives epsilon, step size, norm and random start of delta; None for clean Loss (no delta).
        iterations: ascent iterations (20 in the paper).
        lr: learning rate of nu (0.001 in the paper).
        restarts: independent restarts (10 in the paper).
        parallel: restarts per ``vmap``-ed pass; 1 runs them one by one on the model itself.
        generator: random-number generator for the initial nu.

    Returns:
        The mean loss over the batch at the end of each restart, shape (restarts,), and the final
        nu of each restart.
    """
    means, found = [], []
    for start in range(0, restarts, parallel):
        count = min(parallel, restarts - start)
        nus = [neighbourhood.sample_inside(generator) for _ in range(count)]
        if count == 1:
            mean, nu = _ascent_in_place(model, weights, neighbourhood, nus[0], x, y, attack, iterations, lr)
            means.append(mean.unsqueeze(0))
            found.append(nu)
        else:
            mean, nu = _ascent_stacked(model, names, weights, neighbourhood, stack(nus), x, y, attack, iterations, lr)
            means.append(mean)
            found.extend([[layer[k] for layer in nu] for k in range(count)])
    return torch.cat(means), found


def _ascent_in_place(model, weights, neighbourhood, nu, x, y, attack, iterations, lr):
    delta = attack.initial_delta(x) if attack is not None else None
    weights = list(weights)
    for _ in range(iterations):
        with perturbed(weights, nu):
            inputs = x if delta is None else x + delta.requires_grad_(True)
            loss = per_example_loss(model(inputs), y).sum()
            # the gradient with respect to nu is the gradient with respect to the weights at w + nu
            grads = torch.autograd.grad(loss, weights + ([] if delta is None else [delta]))
        step = normalize_direction(grads[:len(weights)], weights, per="layer", scale=lr)
        nu = neighbourhood.project([n + s for n, s in zip(nu, step)])
        if delta is not None:
            delta = attack.project(x, attack.ascent(delta.detach(), grads[-1]))
    with perturbed(weights, nu), torch.no_grad():
        final = per_example_loss(model(x if delta is None else x + delta), y)
    return final.mean(), nu


def _ascent_stacked(model, names, weights, neighbourhood, nu, x, y, attack, iterations, lr):
    copies = nu[0].shape[0]
    xs = x.repeat(copies, *([1] * (x.dim() - 1)))
    ys = y.repeat(copies)
    delta = attack.initial_delta(xs) if attack is not None else None
    normalize = vmap(lambda g: normalize_direction(g, weights, per="layer", scale=lr))
    project = vmap(neighbourhood.project)
    for _ in range(iterations):
        nu = [n.detach().requires_grad_(True) for n in nu]
        inputs = xs if delta is None else xs + delta.requires_grad_(True)
        loss = per_example_loss(StackedNetwork(model, names, weights, nu)(inputs), ys).sum()
        grads = torch.autograd.grad(loss, nu + ([] if delta is None else [delta]))
        step = normalize(list(grads[:len(nu)]))
        nu = project([n.detach() + s for n, s in zip(nu, step)])
        if delta is not None:
            delta = attack.project(xs, attack.ascent(delta.detach(), grads[-1]))
    with torch.no_grad():
        final = per_example_loss(StackedNetwork(model, names, weights, nu)(xs if delta is None else xs + delta), ys)
    return final.view(copies, -1).mean(dim=1), nu


class FlatnessMeasures:
    """The settings of the four flatness measures; called with a model and a loader it measures them.

    Defaults are the paper's (Stutz et al. 2021, supplement Sec. D, F). The reference RLoss(w) is computed once per
    batch and shared by the average- and the worst-case measure.

    Args:
        epsilon: radius of the input threat model (8/255 on CIFAR-10).
        step_size: PGD step size (0.007), also delta's step in the worst-case ascent.
        norm: input threat model, ``"linf"`` or ``"l2"``.
        random_start: PGD and the worst-case ascent start at a random delta in the ball (the paper's
            setting); False starts at delta = 0, which makes results deterministic given the nu.
        reference_pgd_steps: PGD iterations of the reference RLoss(w) (20).
        reference_pgd_restarts: PGD restarts of the reference, worst case per example (10).
        average_xi: xi of average-case flatness (0.5).
        samples: random weight perturbations per batch (10).
        average_pgd_steps: PGD iterations on each perturbed network (20).
        average_pgd_restarts: PGD restarts on each perturbed network (1).
        worst_xi: xi of worst-case flatness (0.003).
        ascent_iterations: iterations of the joint ascent (20).
        ascent_restarts: restarts of the joint ascent, maximum taken per batch (10).
        worst_lr: learning rate of nu, after normalising its gradient per layer (0.001).
        max_examples: use at most this many examples from the start of the loader (1000).
        parallel: weight perturbations evaluated in one ``vmap``-ed pass; 1 for the sequential path.
        which: tensors that make up B_xi(w), see :func:`~lit_robust.weights.select_parameters`.
    """

    def __init__(self, epsilon: float = PAPER_EPSILON, step_size: float = PAPER_STEP_SIZE, norm: Norm = "linf",
                 random_start: bool = True, reference_pgd_steps: int = 20, reference_pgd_restarts: int = 10,
                 average_xi: float = 0.5, samples: int = 10, average_pgd_steps: int = 20,
                 average_pgd_restarts: int = 1,
                 worst_xi: float = 0.003, ascent_iterations: int = 20, ascent_restarts: int = 10,
                 worst_lr: float = 0.001, max_examples: Optional[int] = 1000, parallel: int = 10,
                 which: Selection = "all") -> None:
        for name, value in (("samples", samples), ("ascent_iterations", ascent_iterations),
                            ("ascent_restarts", ascent_restarts), ("parallel", parallel)):
            check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        check(average_xi > 0, "average_xi", average_xi, "a number > 0 (relative radius per layer)")
        check(worst_xi > 0, "worst_xi", worst_xi, "a number > 0 (relative radius per layer)")
        check(worst_lr > 0, "worst_lr", worst_lr, "a number > 0")
        check(max_examples is None or max_examples >= 1, "max_examples", max_examples, "None or an integer >= 1")
        check_choice(which, "which", ("all", "weights"))
        self.reference_attack = PGD(epsilon, step_size, reference_pgd_steps, restarts=reference_pgd_restarts,
                                    norm=norm, random_start=random_start)
        self.average_attack = PGD(epsilon, step_size, average_pgd_steps, restarts=average_pgd_restarts,
                                  norm=norm, random_start=random_start)
        self.average_xi, self.samples = average_xi, samples
        self.worst_xi, self.ascent_iterations, self.ascent_restarts, self.worst_lr = (
            worst_xi, ascent_iterations, ascent_restarts, worst_lr)
        self.max_examples, self.parallel, self.which = max_examples, parallel, which

    def __call__(self, model: nn.Module, loader: Iterable, measures: Sequence[PaperMeasure] = MEASURES,
                 reduce: Optional[Reduce] = None,
                 generator: Optional[torch.Generator] = None) -> Dict[str, MeasureResult]:
        """Measure ``measures`` of ``model`` on the examples of ``loader``.

        Args:
            model: the network, taking [0, 1] images and returning logits.
            loader: batches ``(x, y)``; the first ``max_examples`` examples are used.
            measures: any of ``"avg_rloss"``, ``"worst_rloss"``, ``"avg_loss"``, ``"worst_loss"``.
            reduce: sums a tensor over processes (e.g. ``trainer.strategy.reduce`` with ``"sum"``);
                each process passes its own share of the examples and all get the same result.
            generator: random-number generator for the weight perturbations (PGD's random starts
                use the global one).

        Returns:
            One :class:`MeasureResult` per measure.
        """
        for measure in measures:
            check_choice(measure, "measures", MEASURES)
        require_gradients("flatness")
        names, weights = names_and_weights(model, self.which)
        average = Neighbourhood(weights, self.average_xi)
        worst = Neighbourhood(weights, self.worst_xi)
        device = weights[0].device
        totals: Dict[str, Tensor] = {}

        def add(key: str, value: Tensor) -> None:
            totals[key] = totals.get(key, 0) + value.detach().double()

        kinds = {measure.split("_")[1] for measure in measures}
        with restore_modes(model, False), torch.enable_grad():
            for x, y in first_examples(loader, self.max_examples, device):
                add("count", torch.tensor(float(len(y)), device=device))
                references = {kind: loss_of(model, x, y, self.reference_attack if kind == "rloss" else None)
                              for kind in kinds}
                for measure in measures:
                    case, kind = measure.split("_")
                    attack = self.average_attack if kind == "rloss" else None
                    add(f"{measure}/reference", references[kind].sum())
                    if case == "avg":
                        nus = [average.sample(generator) for _ in range(self.samples)]
                        losses = losses_at(model, names, weights, nus, x, y, attack, self.parallel)
                        add(f"{measure}/samples", losses.sum(dim=1))
                    else:
                        means, _ = joint_ascent(model, names, weights, worst, x, y, attack, self.ascent_iterations,
                                                self.worst_lr, self.ascent_restarts, self.parallel, generator)
                        add(f"{measure}/samples", means * len(y))
                        add(f"{measure}/max", means.max() * len(y))
        return self._results(totals, measures, reduce, device)

    def _results(self, totals: Dict[str, Tensor], measures: Sequence[str], reduce: Optional[Reduce],
                 device: torch.device) -> Dict[str, MeasureResult]:
        layout = [("count", 1)]
        for measure in measures:
            samples = self.samples if measure.startswith("avg") else self.ascent_restarts
            layout += [(f"{measure}/reference", 1), (f"{measure}/samples", samples)]
            if measure.startswith("worst"):
                layout.append((f"{measure}/max", 1))
        # one flat vector so that a single collective sums every total over the processes
        flat = torch.cat([totals.get(key, torch.zeros(size, device=device, dtype=torch.float64)).reshape(size)
                          for key, size in layout])
        flat = reduced(flat, reduce, "flatness")
        values, offset = {}, 0
        for key, size in layout:
            values[key], offset = flat[offset:offset + size], offset + size
        count = float(values["count"])
        results = {}
        for measure in measures:
            reference = float(values[f"{measure}/reference"]) / count
            per_sample = values[f"{measure}/samples"] / count
            first = per_sample.mean() if measure.startswith("avg") else values[f"{measure}/max"][0] / count
            results[measure] = MeasureResult(flatness=float(first) - reference,
                                              std=float(per_sample.std(correction=0)),
                                              perturbed=float(first), reference=reference, examples=int(count))
        return results


class PaperFlatness(Measure):
    """What the paper's average- and worst-case flatness share: they are computed by :class:`FlatnessMeasures`
    from the settings each adds (:meth:`meter_settings`) to the threat model, the reference and ``parallel``."""

    prefix: str  # the measure's name is prefix_loss: avg_rloss, worst_loss, ...

    def __init__(self, *, loss: LossKind, reference_pgd_steps: int, reference_pgd_restarts: int, parallel: int,
                 **common: Any) -> None:
        """Args: ``loss``, the reference's PGD and ``parallel`` as the subclasses state them; ``common``, the
        threat model, ``max_examples`` and ``which`` of :class:`~lit_robust.measures.base.Measure`."""
        super().__init__(**common)
        check_choice(loss, "loss", ("rloss", "loss"))
        self.loss, self.parallel = loss, parallel
        self.reference_pgd_steps, self.reference_pgd_restarts = reference_pgd_steps, reference_pgd_restarts

    @property
    def name(self) -> str:
        return f"{self.prefix}_{self.loss}"

    @abstractmethod
    def meter_settings(self) -> Dict[str, object]:
        """The measure's own arguments of :class:`FlatnessMeasures`."""

    def meter(self) -> FlatnessMeasures:
        """The joint evaluator of the paper's measures with this measure's settings."""
        t = self.threat_model
        return FlatnessMeasures(epsilon=t.epsilon, step_size=t.step_size, norm=t.norm, random_start=self.random_start,
                                reference_pgd_steps=self.reference_pgd_steps,
                                reference_pgd_restarts=self.reference_pgd_restarts, max_examples=None,
                                parallel=self.parallel, which=self.which, **self.meter_settings())

    def measure(self, model: nn.Module, batches: Examples, reduce: Optional[Reduce],
                generator: Optional[torch.Generator]) -> MeasureResult:
        return self.meter()(model, batches, (self.name,), reduce, generator)[self.name]
