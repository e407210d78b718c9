"""Proximal operators ``prox_{s·g}(x) = argmin_y ½‖y − x‖² + s·g(y)`` for the proximal-gradient
fixed point (:func:`optlayers.optimality.prox_grad_fixed_point`).

Convention (as in jaxopt.prox): ``prox(x, hyperparams, scaling)``; elementwise, any shape.
The projection onto a set ``C`` is the prox of its indicator (and ignores ``scaling``).
"""

from __future__ import annotations

import torch

from optlayers._src.projection.projections import _check_sign, _check_x

Tensorish = torch.Tensor | float


def prox_none(x: torch.Tensor, hyperparams=None, scaling: Tensorish = 1.0) -> torch.Tensor:
    """Prox of ``g = 0``: the identity."""
    del hyperparams, scaling
    return x


def prox_lasso(x: torch.Tensor, l1reg: Tensorish, scaling: Tensorish = 1.0) -> torch.Tensor:
    """Prox of ``g(y) = Σ_i l1reg_i |y_i|`` (soft thresholding): ``sign(x) max(|x| − s·l1reg, 0)``.

    ``l1reg ≥ 0``: float or tensor broadcastable to ``x``. Jacobian w.r.t. ``x``:
    ``diag(1[|x| > s·l1reg])``; w.r.t. ``l1reg``: ``−s·sign(x)`` on that support.
    """
    _check_x(x)
    _check_sign(l1reg, "prox_lasso: l1reg", strict=False)
    return torch.sign(x) * torch.relu(x.abs() - scaling * l1reg)


def prox_ridge(x: torch.Tensor, l2reg: Tensorish, scaling: Tensorish = 1.0) -> torch.Tensor:
    """Prox of ``g(y) = ½ Σ_i l2reg_i y_i²``: ``x / (1 + s·l2reg)``."""
    _check_x(x)
    _check_sign(l2reg, "prox_ridge: l2reg", strict=False)
    return x / (1 + scaling * l2reg)


def prox_elastic_net(x: torch.Tensor, hyperparams, scaling: Tensorish = 1.0) -> torch.Tensor:
    """Prox of ``g(y) = l1reg ‖y‖₁ + ½ l2reg ‖y‖²`` with ``hyperparams = (l1reg, l2reg)``:
    ``prox_lasso(x, l1reg, s) / (1 + s·l2reg)``."""
    l1reg, l2reg = hyperparams
    return prox_lasso(x, l1reg, scaling) / (1 + scaling * l2reg)
