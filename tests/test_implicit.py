"""hypergrad() against closed forms, dense solves and finite differences (float64)."""
import re

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from autodo_jax._src.implicit import curvature as curv
from autodo_jax.implicit import MODES, cg, hypergrad, identity, neumann, nystrom


# hypergrad compiled once per (losses, solver, options): the losses and solvers are hashable
jit_hypergrad = jax.jit(hypergrad, static_argnums=(0, 1), static_argnames=(
    "solver", "curvature", "mode", "train_outputs", "output_loss", "per_example_loss"))


def _rel(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _tree_rel(a, b):
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
    return _rel(flat(a), flat(b))


# ---------------------------------------------------------------- ridge regression
def _ridge_data(seed=0, n=40, d=6, m=25):
    rng = np.random.default_rng(seed)
    x, xv = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    theta = rng.normal(size=d)
    y, yv = x @ theta + 0.3 * rng.normal(size=n), xv @ theta + 0.3 * rng.normal(size=m)
    hp = {"w": jnp.asarray(rng.uniform(0.3, 2.0, size=n)), "log_l2": jnp.asarray(0.2)}
    return (jnp.asarray(x), jnp.asarray(y)), (jnp.asarray(xv), jnp.asarray(yv)), hp


def ridge_train_loss(theta, hp, batch):
    x, y = batch
    l2 = 0.5 * jnp.exp(hp["log_l2"]) * theta @ theta
    return 0.5 * jnp.sum(hp["w"] * (x @ theta - y) ** 2) + l2


def ridge_outputs(theta, hp, batch):
    return {"pred": batch[0] @ theta, "theta": theta}


def ridge_output_loss(out, hp, batch):
    return (0.5 * jnp.sum(hp["w"] * (out["pred"] - batch[1]) ** 2)
            + 0.5 * jnp.exp(hp["log_l2"]) * out["theta"] @ out["theta"])


def sq_val_loss(theta, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ theta - y) ** 2)


def ridge_solution(hp, batch):
    x, y = batch
    a = x.T @ (hp["w"][:, None] * x) + jnp.exp(hp["log_l2"]) * jnp.eye(x.shape[1])
    return jnp.linalg.solve(a, x.T @ (hp["w"] * y))


def test_ridge_closed_form_every_exact_curvature_and_mode():
    with jax.enable_x64(True):
        tb, vb, hp = _ridge_data()

        @jax.jit
        def run(hp):
            theta = ridge_solution(hp, tb)
            exact = jax.grad(lambda h: sq_val_loss(ridge_solution(h, tb), vb))(hp)
            out = {(c, m): hypergrad(ridge_train_loss, sq_val_loss, theta, hp, tb, vb,
                                     solver=cg(30), curvature=c, mode=m,
                                     train_outputs=ridge_outputs, output_loss=ridge_output_loss)
                   for c in ("hessian", "gauss_newton") for m in MODES}
            return exact, out

        exact, out = run(hp)
        assert len(out) == 6
        for grads, info in out.values():
            assert _rel(grads["w"], exact["w"]) < 1e-6
            assert _rel(grads["log_l2"], exact["log_l2"]) < 1e-6
            assert float(info.residual) < 1e-10 and bool(info.finite)
            assert float(info.train_grad_norm) < 1e-10  # θ is the exact inner solution
            assert np.isnan(float(info.neumann_gap))


# ---------------------------------------------------------------- weighted L2 logistic regression
def _logistic_data(seed=1, n=60, d=5, m=40):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d)
    x, xv = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    flip = lambda z: (rng.uniform(size=z.shape[0]) < 1 / (1 + np.exp(-z @ w_true))).astype(float)
    hp = {"w": jnp.asarray(rng.uniform(0.2, 2.0, size=n)), "log_l2": jnp.asarray(-1.0)}
    return (jnp.asarray(x), jnp.asarray(flip(x))), (jnp.asarray(xv), jnp.asarray(flip(xv))), hp


def logistic_per_example(theta, hp, batch):
    x, y = batch
    z = x @ theta
    reg = 0.5 * jnp.exp(hp["log_l2"]) * theta @ theta
    return hp["w"] * (jnp.logaddexp(0.0, z) - y * z) + reg


def logistic_train_loss(theta, hp, batch):
    return jnp.mean(logistic_per_example(theta, hp, batch))


def logistic_val_loss(theta, batch):
    x, y = batch
    z = x @ theta
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z)


@jax.jit
def logistic_solution(hp, batch):
    def newton(_, theta):  # Newton's method on the strictly convex train loss
        g = jax.grad(logistic_train_loss)(theta, hp, batch)
        return theta - jnp.linalg.solve(jax.hessian(logistic_train_loss)(theta, hp, batch), g)

    return jax.lax.fori_loop(0, 30, newton, jnp.zeros(batch[0].shape[1], batch[0].dtype))


@jax.jit
def _dense_reference(theta, hp, tb, vb):
    h = jax.hessian(logistic_train_loss)(theta, hp, tb)
    mixed = jax.jacobian(jax.grad(logistic_train_loss), argnums=1)(theta, hp, tb)
    u = jnp.linalg.solve(h, jax.grad(logistic_val_loss)(theta, vb))
    return jax.tree_util.tree_map(lambda m: -jnp.tensordot(u, m, axes=1), mixed)


@pytest.fixture(scope="module")
def logistic():
    with jax.enable_x64(True):
        tb, vb, hp = _logistic_data()
        theta = logistic_solution(hp, tb)
        assert float(jnp.linalg.norm(jax.grad(logistic_train_loss)(theta, hp, tb))) < 1e-12
        return theta, hp, tb, vb, _dense_reference(theta, hp, tb, vb)


def test_logistic_matches_dense_hessian_solve_in_every_mode(logistic):
    theta, hp, tb, vb, ref = logistic
    with jax.enable_x64(True):
        solvers = {m: (cg(20), m) for m in MODES}
        solvers["nystrom"] = (nystrom(5, 1e-9, jax.random.key(0)), "joint")
        solvers["neumann"] = (neumann(3000, 1.0), "joint")
        run = jax.jit(lambda th, h: {
            k: hypergrad(logistic_train_loss, logistic_val_loss, th, h, tb, vb, solver=s, mode=m)
            for k, (s, m) in solvers.items()})
        for name, (grads, info) in run(theta, hp).items():
            assert _tree_rel(grads, ref) < 1e-5, name
            assert bool(info.finite)


def test_logistic_finite_differences_of_outer_objective(logistic):
    theta, hp, tb, vb, _ = logistic
    with jax.enable_x64(True):
        grads, _ = jit_hypergrad(logistic_train_loss, logistic_val_loss, theta, hp, tb, vb,
                             solver=cg(20))
        outer = jax.jit(lambda h: logistic_val_loss(logistic_solution(h, tb), vb))
        rng = np.random.default_rng(7)
        eps = 1e-4
        for _ in range(3):
            d = {"w": jnp.asarray(rng.normal(size=hp["w"].shape)),
                 "log_l2": jnp.asarray(rng.normal())}
            step = lambda s: jax.tree_util.tree_map(lambda a, b: a + s * eps * b, hp, d)
            fd = (outer(step(1.0)) - outer(step(-1.0))) / (2 * eps)
            analytic = sum(jnp.vdot(grads[k], d[k]) for k in d)
            assert abs(float(fd - analytic)) < 1e-7 * max(1.0, abs(float(fd)))


# ---------------------------------------------------------------- curvatures
def _head_problem(seed=3, b=32, dim=7, c=5):
    rng = np.random.default_rng(seed)
    feats = jnp.asarray(rng.normal(size=(b, dim)))
    labels = jnp.asarray(rng.integers(0, c, size=b))
    head = {"kernel": jnp.asarray(0.3 * rng.normal(size=(dim, c))), "bias": jnp.zeros(c)}
    hp = {"w": jnp.asarray(rng.uniform(0.5, 1.5, size=b)),
          "soft": jnp.asarray(rng.normal(size=(b, c)))}
    return head, hp, (feats, labels), (feats[::2] + 0.1, labels[::2])


def head_logits(head, hp, batch):
    return batch[0] @ head["kernel"] + head["bias"]


def head_output_loss(logits, hp, batch):
    q = jax.nn.softmax(hp["soft"])  # soft labels depend on λ
    ce = -jnp.sum(q * jax.nn.log_softmax(logits), axis=-1)
    return jnp.mean(hp["w"] * ce)


def head_per_example(head, hp, batch):
    q = jax.nn.softmax(hp["soft"])
    ce = -jnp.sum(q * jax.nn.log_softmax(head_logits(head, hp, batch)), axis=-1)
    return hp["w"] * ce


def head_train_loss(head, hp, batch):
    return head_output_loss(head_logits(head, hp, batch), hp, batch)


def head_val_loss(head, batch):
    logp = jax.nn.log_softmax(batch[0] @ head["kernel"] + head["bias"])
    return -jnp.mean(jnp.take_along_axis(logp, batch[1][:, None], axis=1))


def test_gauss_newton_equals_hessian_for_linear_head_under_softmax_ce():
    with jax.enable_x64(True):
        head, hp, tb, vb = _head_problem()
        rng = np.random.default_rng(0)
        directions = [jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape)), head)
                      for _ in range(3)]
        kwargs = dict(solver=cg(40, damping=1e-3), train_outputs=head_logits,
                      output_loss=head_output_loss)

        @jax.jit
        def run(head, hp, directions):
            loss = lambda th, lam: head_train_loss(th, lam, tb)
            _, _, hvp, _ = curv.train_derivatives(loss, head, hp, "joint")
            gnvp, _ = curv.gauss_newton_product(lambda th: head_logits(th, hp, tb),
                                                lambda z: head_output_loss(z, hp, tb), head)
            products = [(gnvp(w), hvp(w)) for w in directions]
            return products, [hypergrad(head_train_loss, head_val_loss, head, hp, tb, vb,
                                        curvature=c, **kwargs)[0]
                              for c in ("hessian", "gauss_newton")]

        products, (g_h, g_gn) = run(head, hp, directions)
        for gn, h in products:
            assert _tree_rel(gn, h) < 1e-12
        assert _tree_rel(g_gn, g_h) < 1e-9


def test_empirical_fisher_matches_dense_outer_products():
    with jax.enable_x64(True):
        head, hp, tb, vb = _head_problem(seed=4)
        damping = 1e-2
        flat = lambda t: jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(t)])
        unravel = jax.flatten_util.ravel_pytree(head)[1]

        @jax.jit
        def run(head, hp):
            per_example = lambda t: head_per_example(unravel(t), hp, tb)
            jac = jax.jacobian(per_example)(flat(head))  # (B, P)
            fisher = jac.T @ jac / jac.shape[0]  # (1/B) Σ_i ∇ℓ_i ∇ℓ_iᵀ
            v = flat(jax.grad(head_val_loss)(head, vb))
            u = jnp.linalg.solve(fisher + damping * jnp.eye(v.size), v)
            loss = lambda th, lam: head_train_loss(th, lam, tb)
            ref = curv.train_derivatives(loss, head, hp, "joint")[3](unravel(u))
            out = hypergrad(head_train_loss, head_val_loss, head, hp, tb, vb,
                            solver=cg(60, damping, tol=0.0),
                            curvature="empirical_fisher", per_example_loss=head_per_example)
            return jax.tree_util.tree_map(jnp.negative, ref), out

        ref, (grads, info) = run(head, hp)
        assert _tree_rel(grads, ref) < 1e-6 and float(info.residual) < 1e-8


# ---------------------------------------------------------------- info
def test_info_divergence_gap_and_scales():
    with jax.enable_x64(True):
        head, hp, tb, vb = _head_problem(seed=5)
        flat = lambda t: jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(t)])
        solvers = {"orig": neumann(5, 0.01, scale="original"), "ift": neumann(5, 0.01),
                   "id": identity()}

        @jax.jit
        def run(head, hp):
            out = {k: hypergrad(head_train_loss, head_val_loss, head, hp, tb, vb, solver=s)
                   for k, s in solvers.items()}
            g = flat(jax.grad(head_train_loss)(head, hp, tb))
            v = flat(jax.grad(head_val_loss)(head, vb))
            h = jax.hessian(lambda t: head_train_loss(jax.flatten_util.ravel_pytree(head)[1](t),
                                                      hp, tb))(flat(head))
            return out, g, v, h

        out, g, v, dense_h = run(head, hp)
        (grads_orig, info), (grads_ift, info_ift), (_, info_id) = out["orig"], out["ift"], out["id"]
        assert abs(float(info.grad_divergence) - float(jnp.sum((g - v) ** 2))) < 1e-12
        assert abs(float(info.train_grad_norm) - float(jnp.linalg.norm(g))) < 1e-12
        assert abs(float(info.val_grad_norm) - float(jnp.linalg.norm(v))) < 1e-12
        # the original scale is 1/α times the IFT scale; the gap is scale-free
        assert _tree_rel(grads_ift, jax.tree_util.tree_map(lambda x: 0.01 * x, grads_orig)) < 1e-12
        assert abs(float(info.neumann_gap) - float(info_ift.neumann_gap)) < 1e-12
        step = np.eye(v.size) - 0.01 * np.asarray(dense_h)
        series = sum(np.linalg.matrix_power(step, j) @ np.asarray(v) for j in range(6))
        gap = np.linalg.norm(series - 6 * np.asarray(v)) / np.linalg.norm(series)
        assert abs(float(info.neumann_gap) - gap) < 1e-10 and 0 < gap < 0.05
        assert np.isnan(float(info_id.neumann_gap))
        assert abs(float(info_id.solution_cosine) - 1) < 1e-12


# ---------------------------------------------------------------- cost structure (no timing)
def test_frozen_encoder_runs_once_and_never_inside_the_solver_loop():
    """With θ = a head on a frozen conv encoder whose input depends on λ, the compiled
    hypergradient holds exactly the floor's convolutions: train forward, backward to the
    input (for λ) and val forward; none inside the solver's while loop, and no encoder
    weight gradient."""
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.float32)
    images = jnp.asarray(rng.normal(size=(8, 6, 6, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=8))
    head = {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}
    hp = {"w": jnp.zeros(8), "delta": jnp.zeros((8, 6, 6, 1))}

    def features(x):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(y).mean(axis=(1, 2))

    def train(h, lam, b):
        logits = features(b[0] + lam["delta"]) @ h["kernel"] + h["bias"]
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), b[1][:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.softplus(lam["w"]) * ce)

    val = lambda h, b: train(h, {"w": jnp.zeros(8), "delta": jnp.zeros_like(b[0])}, b)
    # "joint" gets this by construction; the other modes rely on XLA's CSE (measured: same)
    for mode in MODES:
        fn = jax.jit(lambda h, lam, tb, vb: hypergrad(train, val, h, lam, tb, vb,
                                                      solver=neumann(5, 0.01), mode=mode))
        text = fn.lower(head, hp, (images, labels), (images[::-1], labels)).compile().as_text()
        blocks = {b.split(" ", 1)[0]: b for b in text.split("\n\n") if b.startswith("%")}

        def with_callees(name, seen):  # a computation and everything it calls, as text
            seen.add(name)
            callees = set(re.findall(r"(%[\w.\-]+)", blocks[name])) & set(blocks) - seen
            return blocks[name] + "".join(with_callees(c, seen) for c in sorted(callees))

        bodies = [with_callees(n, set()) for n in re.findall(r"body=(%[\w.\-]+)", text)]
        assert bodies and all(" dot(" in b or "fusion(" in b for b in bodies), mode
        assert text.count(" convolution(") == 3, mode
        assert all(" convolution(" not in b for b in bodies), mode
