"""RLoss landscapes in weight space, largest Hessian eigenvalues.

Stutz et al. 2021, supplement Sec. C, E and Table A; Singla et al. 2021, Fig. 3.

- 1-D landscapes (Stutz et al. 2021, supplement Sec. C): RLoss at w + alpha d for 51 evenly spaced alpha in [-1, 1]
  on one batch, along 10 random directions (their mean is plotted) rescaled to per-layer length
  0.5, and along 10 adversarial directions (their maximum is plotted) rescaled to length 0.025.
  Directions are normalised per layer (Eq. 2, d_l / ||d_l|| * ||w_l||, biases included,
  normalisation layers excluded) or per filter as Li et al. (Eq. 1).
- 2-D landscapes: the same on a grid spanned by two directions.
- lambda_max of the Hessian of the clean loss in weight space by power iteration on
  Hessian-vector products (Stutz et al. 2021, supplement Table A, following Li et al.), not scale-invariant
  (Stutz et al. 2021, supplement Sec. E); the direction of its eigenvector can be plotted as well (supplement
  Fig. A).
- lambda_max of the Hessian of the loss with respect to the input, per example (Singla et al. 2021, Fig. 3).

"Length 0.5" is read as the per-layer relative length ||d_l|| = 0.5 ||w_l|| ("multiplied by 0.5",
Stutz et al. 2021, supplement Fig. A): at alpha = +-1 a random direction lies on the sphere of B_0.5(w) that
average-case flatness samples from. An adversarial direction is the weight perturbation found by
the joint ascent on weights and inputs of worst-case flatness (Stutz et al. 2021, supplement Eq. 5-7), one per
restart; the paper's text does not say how its adversarial directions are found, and its public
code instead ascends the weights on adversarial examples fixed beforehand.
"""

from dataclasses import dataclass
from typing import List, Literal, Optional, Sequence, Tuple

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from lit_robust.attacks import PGD, per_example_loss, restore_modes
from lit_robust.attacks.sanity import check_input_range
from lit_robust.errors import check, check_choice
from lit_robust.measures.flatness import joint_ascent, losses_at
from lit_robust.measures.hessian_max_eigenvalue import Eigenpair, power_iteration
from lit_robust.weights import Neighbourhood, Selection, gaussian_direction, names_and_weights, normalize_direction

Direction = List[Tensor]
DirectionKind = Literal["random", "adversarial", "hessian"]
Normalization = Literal["layer", "filter"]


@dataclass
class Landscape:
    """The loss along directions in weight space.

    Attributes:
        alphas: the step sizes, shape (S,).
        losses: mean loss over the batch at w + alpha d, shape (directions, S).
        kind: ``"random"``, ``"adversarial"`` or ``"hessian"``.
    """

    alphas: Tensor
    losses: Tensor
    kind: str

    @property
    def curve(self) -> Tensor:
        """What the paper plots: the mean over random directions, the maximum over adversarial ones."""
        return self.losses.amax(dim=0) if self.kind == "adversarial" else self.losses.mean(dim=0)


def random_directions(weights: Sequence[Tensor], count: int = 10, length: float = 0.5,
                      normalization: Normalization = "layer",
                      generator: Optional[torch.Generator] = None) -> List[Direction]:
    """Gaussian directions normalised per layer (Eq. 2) or filter (Eq. 1), times ``length``.

    Stutz et al. 2021, supplement Sec. C.

    Args:
        weights: the tensors that make up the weight space (see :func:`~lit_robust.weights.select_parameters`).
        count: number of directions (10).
        length: relative length per layer (or filter), 0.5.
        normalization: ``"layer"`` (the paper) or ``"filter"`` (Li et al.).
        generator: random-number generator.
    """
    check_choice(normalization, "normalization", ("layer", "filter"))
    return [normalize_direction(gaussian_direction(weights, generator), weights, per=normalization, scale=length)
            for _ in range(count)]


def adversarial_directions(model: nn.Module, x: Tensor, y: Tensor, attack: Optional[PGD], count: int = 10,
                           length: float = 0.025, xi: float = 0.003, iterations: int = 20, lr: float = 0.001,
                           normalization: Normalization = "layer", which: Selection = "all", parallel: int = 10,
                           generator: Optional[torch.Generator] = None) -> List[Direction]:
    """Directions of adversarial weight perturbations, normalised and multiplied by ``length``.

    Stutz et al. 2021, supplement Sec. C.

    Each is the nu found by one restart of the joint ascent of worst-case flatness (Stutz et al. 2021, supplement Eq.
    5-7) on the batch, in eval mode, then normalised per layer or filter.

    Args:
        model: the network; left as it was.
        x: the batch's inputs.
        y: the batch's labels.
        attack: input attack giving epsilon and step size of delta; None ascends the clean loss.
        count: number of directions (10).
        length: relative length per layer (or filter), 0.025.
        xi: neighbourhood of the ascent (0.003, as worst-case flatness).
        iterations: ascent iterations (20).
        lr: learning rate of the weights (0.001).
        normalization: ``"layer"`` or ``"filter"``.
        which: tensors that make up the weight space.
        parallel: restarts per vectorised pass; 1 one by one.
        generator: random-number generator for the initial weight perturbations.
    """
    if attack is not None:  # PGD clamps to [0, 1]
        check_input_range(x)
    check_choice(normalization, "normalization", ("layer", "filter"))
    names, weights = names_and_weights(model, which)
    with restore_modes(model, False), torch.enable_grad():
        _, found = joint_ascent(model, names, weights, Neighbourhood(weights, xi), x, y, attack, iterations, lr,
                                count, parallel, generator)
    return [normalize_direction([n.detach() for n in nu], weights, per=normalization, scale=length) for nu in found]


def _checked_weights(model: nn.Module, x: Tensor, attack: Optional[PGD], steps: int,
                     which: Selection) -> Tuple[List[str], List[Tensor]]:
    """The checks of a landscape's settings, then the names and tensors its directions are over."""
    if attack is not None:  # PGD clamps to [0, 1]
        check_input_range(x)
    check(steps >= 2, "steps", steps, "an integer >= 2")
    return names_and_weights(model, which)


def landscape_1d(model: nn.Module, x: Tensor, y: Tensor, directions: Sequence[Direction], attack: Optional[PGD],
                 kind: str = "random", steps: int = 51, which: Selection = "all", parallel: int = 10) -> Landscape:
    """RLoss (or Loss) at w + alpha d for ``steps`` evenly spaced alpha in [-1, 1], per direction.

    Stutz et al. 2021, supplement Sec. C.

    Args:
        model: the network, evaluated in eval mode; left as it was.
        x: one batch of inputs (the paper: 128 test examples).
        y: its labels.
        directions: directions over the tensors of :func:`~lit_robust.weights.select_parameters` (``which``).
        attack: PGD for RLoss at every point, or None for the clean loss.
        kind: ``"random"``, ``"adversarial"`` or ``"hessian"``, how the curve aggregates directions.
        steps: number of points (51).
        which: tensors the directions are over.
        parallel: perturbations per vectorised pass; 1 one by one.
    """
    names, weights = _checked_weights(model, x, attack, steps, which)
    alphas = torch.linspace(-1.0, 1.0, steps)
    rows = [_mean_losses(model, names, weights, [direction], alphas[:, None], x, y, attack, parallel)
            for direction in directions]
    return Landscape(alphas=alphas, losses=torch.stack(rows), kind=kind)


def landscape_2d(model: nn.Module, x: Tensor, y: Tensor, direction_x: Direction, direction_y: Direction,
                 attack: Optional[PGD], steps: int = 51, which: Selection = "all", parallel: int = 10) -> Tensor:
    """RLoss (or Loss) at w + alpha d_x + beta d_y on a ``steps`` x ``steps`` grid of [-1, 1]^2, shape (alpha, beta).

    Args:
        model: the network, evaluated in eval mode; left as it was.
        x: one batch of inputs.
        y: its labels.
        direction_x: first direction.
        direction_y: second direction.
        attack: PGD for RLoss at every point, or None for the clean loss.
        steps: points per axis.
        which: tensors the directions are over.
        parallel: perturbations per vectorised pass; 1 one by one.
    """
    names, weights = _checked_weights(model, x, attack, steps, which)
    grid = torch.linspace(-1.0, 1.0, steps)
    points = torch.cartesian_prod(grid, grid)  # alpha-major, as the returned (alpha, beta) array
    return _mean_losses(model, names, weights, [direction_x, direction_y], points, x, y, attack,
                        parallel).view(steps, steps)


def hessian_max_eigenvalue(model: nn.Module, x: Tensor, y: Tensor, which: Selection = "all", iterations: int = 100,
                           tol: float = 1e-4, generator: Optional[torch.Generator] = None) -> Eigenpair:
    """lambda_max of the Hessian of the clean cross-entropy in weight space (Stutz et al. 2021, supplement Table A).

    Power iteration v <- Hv / ||Hv|| with Hessian-vector products by double backpropagation, in
    eval mode, on the batch's mean loss, over the tensors of B_xi(w); it stops when lambda changes
    by less than ``tol`` relative. Power iteration finds the eigenvalue of largest magnitude, which
    at a minimum is the largest. ``.grad`` of the weights is not touched.

    Args:
        model: the network; left as it was.
        x: inputs.
        y: labels.
        which: tensors of the weight space.
        iterations: at most this many iterations.
        tol: relative change of lambda at which to stop.
        generator: random-number generator of the starting vector.
    """
    _, weights = names_and_weights(model, which)
    with restore_modes(model, False), torch.enable_grad():
        loss = per_example_loss(model(x), y).mean()
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        return power_iteration(lambda v: torch.autograd.grad(grads, weights, grad_outputs=v, retain_graph=True),
                               gaussian_direction(weights, generator), iterations, tol)


def input_hessian_max_eigenvalue(model: nn.Module, x: Tensor, y: Tensor, iterations: int = 100, tol: float = 1e-4,
                                 generator: Optional[torch.Generator] = None) -> Tensor:
    """lambda_max of the Hessian of the cross-entropy with respect to the input, per example.

    Singla et al. 2021, Fig. 3.

    In eval mode the loss of one example depends on its own input only, so the Hessian of the
    summed loss is block-diagonal and one power iteration runs for all examples at once, each
    normalised on its own. The lemma of Singla et al. 2021 takes the Hessian of the logit of a binary
    classifier; for K classes this takes that of the cross-entropy.

    Args:
        model: the network; left as it was.
        x: inputs, (B, ...).
        y: labels, (B,).
        iterations: at most this many iterations.
        tol: relative change of every example's lambda at which to stop.
        generator: random-number generator of the starting vectors.

    Returns:
        The eigenvalue of largest magnitude per example, shape (B,).
    """
    x = x.detach().clone().requires_grad_(True)
    with restore_modes(model, False), torch.enable_grad():
        (grad,) = torch.autograd.grad(per_example_loss(model(x), y).sum(), x, create_graph=True)
        (vector,) = gaussian_direction([x], generator)
        value = torch.zeros(len(x), device=x.device)
        for _ in range(iterations):
            vector = vector / _per_example_norm(vector)
            (product,) = torch.autograd.grad(grad, x, grad_outputs=vector, retain_graph=True)
            previous, value = value, (vector * product).flatten(1).sum(dim=1).detach()
            vector = product.detach()
            if ((value - previous).abs() <= tol * value.abs()).all():
                break
    return value


def plot_landscapes(landscapes: Sequence[Landscape], ylabel: str = "RLoss") -> Figure:
    """One panel per landscape: every direction in a thin line, the paper's curve (mean or max) in a thick one."""
    figure = Figure(figsize=(4.0 * max(1, len(landscapes)), 3.2), layout="constrained")
    axes = figure.subplots(1, max(1, len(landscapes)), squeeze=False)[0]
    for axis, landscape in zip(axes, landscapes):
        alphas = landscape.alphas.cpu().numpy()
        for row in landscape.losses.cpu().numpy():
            axis.plot(alphas, row, color="tab:blue", alpha=0.25, linewidth=0.8)
        label = "max" if landscape.kind == "adversarial" else "mean"
        axis.plot(alphas, landscape.curve.cpu().numpy(), color="tab:blue", linewidth=2.0, label=label)
        axis.set_title(f"{landscape.kind} directions")
        axis.set_xlabel("step size")
        axis.set_ylabel(ylabel)
        axis.legend(loc="upper center")
    return figure


def plot_surface(surface: Tensor, ylabel: str = "RLoss") -> Figure:
    """A filled contour plot of a :func:`landscape_2d` surface over [-1, 1]^2."""
    steps = surface.shape[0]
    grid = torch.linspace(-1.0, 1.0, steps).numpy()
    figure = Figure(figsize=(4.5, 3.8), layout="constrained")
    axis = figure.subplots()
    contour = axis.contourf(grid, grid, surface.cpu().numpy().T, levels=20, cmap="viridis")
    figure.colorbar(contour, ax=axis, label=ylabel)
    axis.set_xlabel("first direction")
    axis.set_ylabel("second direction")
    return figure


def _mean_losses(model: nn.Module, names: Sequence[str], weights: Sequence[Tensor], directions: Sequence[Direction],
                 points: Tensor, x: Tensor, y: Tensor, attack: Optional[PGD], parallel: int) -> Tensor:
    """Mean loss over the batch at w + sum_i c_i d_i for every row c of ``points``, shape (P,)."""
    means = []
    with restore_modes(model, False), torch.enable_grad():
        # only ``parallel`` perturbed copies of the weights exist at a time, however many points
        for start in range(0, len(points), parallel):
            nus = [[sum(float(c) * d[layer] for c, d in zip(point, directions)) for layer in range(len(weights))]
                   for point in points[start:start + parallel]]
            means.append(losses_at(model, names, weights, nus, x, y, attack, parallel).mean(dim=1).detach().cpu())
    return torch.cat(means)


def _per_example_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view((-1,) + (1,) * (t.dim() - 1))
