"""Two bilevel problems with an exact answer: per-feature L2 strengths on breast_cancer.

scikit-learn's breast_cancer data (569 examples, 30 features; bundled in its wheel, no
download), standardised, labels y ∈ {−1, +1}, split 2/3 train, 1/3 validation with a fixed
permutation. Hyperparameters λ (30,): per-feature log L2 strengths.

* ridge:    L_train(θ, λ) = mean((Xθ − y)²) + Σ_j exp(λ_j) θ_j², L_val = mean((X_vθ − y_v)²)
* logistic: L_train(θ, λ) = mean(softplus(−y·Xθ)) + Σ_j exp(λ_j) θ_j², L_val the same
  log-loss on validation

θ*(λ) is exact (a linear solve for ridge, Newton's method for logistic) and the reference
hypergradient is the dense implicit-function-theorem solve −Mᵀ H⁻¹ ∇_θ L_val with H and
M = ∂∇_θL_train/∂λ materialised. Used by ``benchmarks/vs_jaxopt.py`` and by the tests;
call the builders under ``jax.enable_x64(True)`` for float64.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PROBLEMS = ("ridge", "logistic")


class Problem(NamedTuple):
    """One bilevel problem: losses, data, the exact inner solution and its hypergradient.

    Attributes:
      name: "ridge" or "logistic".
      train_loss: (θ (D,), λ (D,), (X (N, D), y (N,))) -> scalar.
      val_loss: (θ, (X_v, y_v)) -> scalar.
      outputs, output_loss: the Gauss-Newton split of train_loss: outputs (Xθ, θ) and the
        loss of those outputs (θ is an output so that the L2 term keeps its curvature).
      inner_solution: (λ, batch) -> θ*(λ), exact and differentiable.
      hparams: λ (D,), the point of evaluation.
      train, val: the batches.
      params: θ*(hparams).
      reference: the dense IFT hypergradient at (θ*, λ), shape (D,).
    """

    name: str
    train_loss: Callable[..., jax.Array]
    val_loss: Callable[..., jax.Array]
    outputs: Callable[..., Any]
    output_loss: Callable[..., jax.Array]
    inner_solution: Callable[..., jax.Array]
    hparams: jax.Array
    train: tuple[jax.Array, jax.Array]
    val: tuple[jax.Array, jax.Array]
    params: jax.Array
    reference: jax.Array


def breast_cancer(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((X_train (379, 30), y_train), (X_val (190, 30), y_val)), float64, y ∈ {−1, +1}."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    y = 2.0 * data.target - 1.0
    order = np.random.default_rng(seed).permutation(len(y))
    cut = 2 * len(y) // 3
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def _penalty(theta, lam):
    return jnp.sum(jnp.exp(lam) * theta**2)


def _ridge_data(theta, batch):
    x, y = batch
    return jnp.mean((x @ theta - y) ** 2)


def _log_loss(theta, batch):
    x, y = batch
    return jnp.mean(jax.nn.softplus(-y * (x @ theta)))


def _ridge_solution(lam, batch):
    x, y = batch
    n = x.shape[0]
    return jnp.linalg.solve(2 * x.T @ x / n + 2 * jnp.diag(jnp.exp(lam)), 2 * x.T @ y / n)


def _logistic_solution(lam, batch, steps: int = 40):
    loss = lambda th: _log_loss(th, batch) + _penalty(th, lam)
    newton = lambda _, th: th - jnp.linalg.solve(jax.hessian(loss)(th), jax.grad(loss)(th))
    return jax.lax.fori_loop(0, steps, newton, jnp.zeros(batch[0].shape[1], batch[0].dtype))


def dense_hypergrad(train_loss: Callable, val_loss: Callable, theta: jax.Array,
                    lam: jax.Array, train: Any, val: Any) -> jax.Array:
    """−Mᵀ H⁻¹ ∇_θ L_val with H (D, D) and M (D, D) materialised (the reference)."""
    hess = jax.hessian(train_loss)(theta, lam, train)
    mixed = jax.jacobian(jax.grad(train_loss), argnums=1)(theta, lam, train)  # ∂g/∂λ
    v = jax.grad(val_loss)(theta, val)
    return -mixed.T @ jnp.linalg.solve(hess, v)


def make_problem(name: str, log_l2: float = -3.0, seed: int = 0) -> Problem:
    """The problem ``name`` at λ = ``log_l2``·1 (D = 30), in the current default dtype."""
    if name not in PROBLEMS:
        raise ValueError(f"problem must be one of {PROBLEMS}, got {name!r}")
    (xt, yt), (xv, yv) = breast_cancer(seed)
    train, val = (jnp.asarray(xt), jnp.asarray(yt)), (jnp.asarray(xv), jnp.asarray(yv))
    data_loss = _ridge_data if name == "ridge" else _log_loss
    train_loss = lambda th, lam, b: data_loss(th, b) + _penalty(th, lam)
    val_loss = lambda th, b: data_loss(th, b)
    outputs = lambda th, lam, b: (b[0] @ th, th)

    def output_loss(out, lam, b):
        z, th = out
        data = jnp.mean((z - b[1]) ** 2) if name == "ridge" else jnp.mean(
            jax.nn.softplus(-b[1] * z))
        return data + _penalty(th, lam)

    solution = _ridge_solution if name == "ridge" else _logistic_solution
    lam = jnp.full((xt.shape[1],), log_l2, train[0].dtype)
    theta = solution(lam, train)
    reference = dense_hypergrad(train_loss, val_loss, theta, lam, train, val)
    return Problem(name, train_loss, val_loss, outputs, output_loss, solution, lam, train,
                   val, theta, reference)
