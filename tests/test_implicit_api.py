"""hypergrad() under jit/vmap/grad/sharding, on mixed pytrees and dtypes, and its errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from autodo_jax import implicit
from autodo_jax.implicit import CURVATURES, cg, hypergrad, identity, neumann


def _flat(t):
    leaves = jax.tree_util.tree_leaves(t)
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])


def _rel(a, b):
    a, b = _flat(a), _flat(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _problem(seed=0, b=32, dtype=jnp.float32):
    """Mixed-shape pytrees: params {"a": (3, 2), "s": (), "e": (0,)}; hparams
    {"w": (B,), "t": [()], "e": (0,)} used per example, through a scalar and an empty leaf."""
    rng = np.random.default_rng(seed)
    params = {"a": jnp.asarray(0.5 * rng.normal(size=(3, 2)), dtype), "s": jnp.asarray(1.2, dtype),
              "e": jnp.zeros((0,), dtype)}
    hparams = {"w": jnp.asarray(rng.uniform(0.5, 1.5, size=b)), "t": [jnp.asarray(-1.0)],
               "e": jnp.zeros((0,))}
    x = rng.normal(size=(b, 3))
    batch = (jnp.asarray(x), jnp.asarray(np.sin(x[:, 0]) + 0.1 * rng.normal(size=b)))
    val = (jnp.asarray(x[::2] + 0.2), jnp.asarray(np.sin(x[::2, 0] + 0.2)))
    return params, hparams, batch, val


def _predict(params, x):
    a = params["a"].astype(x.dtype)
    return jnp.tanh(x @ a).sum(1) * params["s"].astype(x.dtype) + jnp.sum(params["e"])


def train_loss(params, hparams, batch):
    x, y = batch
    r = (_predict(params, x + jnp.sum(hparams["e"])) - y) ** 2
    l2 = jnp.exp(hparams["t"][0]) * sum(jnp.sum(p.astype(x.dtype) ** 2)
                                        for p in jax.tree_util.tree_leaves(params))
    return jnp.mean(hparams["w"] * r) + 0.5 * l2


def val_loss(params, batch):
    x, y = batch
    return jnp.mean((_predict(params, x) - y) ** 2)


def test_jit_inside_larger_function_matches_standalone_call():
    params, hparams, tb, vb = _problem()

    @jax.jit
    def hyper_step(params, hparams, tb, vb):
        grads, info = hypergrad(train_loss, val_loss, params, hparams, tb, vb,
                                solver=neumann(5, 0.01, scale="original"))
        return jax.tree_util.tree_map(lambda h, g: h - 0.1 * g, hparams, grads), info

    new, info = hyper_step(params, hparams, tb, vb)
    grads, _ = jax.jit(hypergrad, static_argnums=(0, 1), static_argnames="solver")(
        train_loss, val_loss, params, hparams, tb, vb, solver=neumann(5, 0.01, scale="original"))
    expected = jax.tree_util.tree_map(lambda h, g: h - 0.1 * g, hparams, grads)
    assert _rel(new, expected) < 1e-5 and bool(info.finite)
    assert int(info.iterations) == 5


def test_vmap_over_independent_problems():
    problems = [_problem(seed) for seed in range(3)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *problems)
    solve = lambda p, h, tb, vb: hypergrad(train_loss, val_loss, p, h, tb, vb, solver=cg(8))
    grads, infos = jax.jit(jax.vmap(solve))(*stacked)
    assert infos.residual.shape == (3,) and infos.finite.all()
    single = jax.jit(solve)
    for i, prob in enumerate(problems):
        expected, _ = single(*prob)
        assert _rel(jax.tree_util.tree_map(lambda x: x[i], grads), expected) < 1e-5


def test_grad_through_hypergrad_matches_finite_differences():
    with jax.enable_x64(True):
        params, hparams, tb, vb = _problem(dtype=jnp.float64)
        rng = np.random.default_rng(1)
        probe = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape)), hparams)
        direction = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape)), hparams)

        @jax.jit
        def phi(hp, p):  # a scalar function of the hypergradient; H + 1.5 I is SPD here
            solver = cg(100, damping=1.5, tol=1e-13)
            grads, _ = hypergrad(train_loss, val_loss, p, hp, tb, vb, solver=solver)
            return sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(grads),
                                                      jax.tree_util.tree_leaves(probe)))

        g_hp, g_p = jax.jit(jax.grad(phi, argnums=(0, 1)))(hparams, params)
        assert jax.tree_util.tree_structure(g_p) == jax.tree_util.tree_structure(params)
        eps = 1e-5
        shift = lambda s: jax.tree_util.tree_map(lambda a, d: a + s * eps * d, hparams, direction)
        fd = (phi(shift(1.0), params) - phi(shift(-1.0), params)) / (2 * eps)
        analytic = np.dot(_flat(g_hp), _flat(direction))
        assert abs(float(fd) - analytic) < 1e-6 * max(1.0, abs(analytic))


def test_sharded_batches_match_unsharded():
    params, hparams, tb, vb = _problem(b=32)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    shard = lambda t: jax.tree_util.tree_map(lambda x: jax.device_put(x, rows), t)
    solve = jax.jit(lambda p, h, tb, vb: hypergrad(train_loss, val_loss, p, h, tb, vb,
                                                   solver=neumann(5, 0.01)))
    hp_sharded = {"w": jax.device_put(hparams["w"], rows), "t": hparams["t"], "e": hparams["e"]}
    grads_sharded, info = solve(params, hp_sharded, shard(tb), shard(vb))
    grads, _ = solve(params, hparams, tb, vb)
    assert len(grads_sharded["w"].sharding.device_set) == 8
    assert _rel(grads_sharded, grads) < 1e-5 and bool(info.finite)


def test_mixed_pytrees_and_param_dtypes():
    with jax.enable_x64(True):
        p64, hp, tb, vb = _problem(dtype=jnp.float64)
        solve = jax.jit(lambda p: hypergrad(train_loss, val_loss, p, hp, tb, vb, solver=cg(12)))
        reference, _ = solve(p64)
        for dtype, tol in ((jnp.float64, 1e-12), (jnp.float32, 1e-4), (jnp.bfloat16, 0.1)):
            params = jax.tree_util.tree_map(lambda x: x.astype(dtype), p64)
            grads, info = solve(params)
            assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(hp)
            for g, h in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(hp)):
                assert g.shape == h.shape and g.dtype == h.dtype
            assert grads["e"].shape == (0,) and grads["t"][0].shape == ()
            assert _rel(grads, reference) < tol, dtype
            assert bool(info.finite)


def test_non_finite_inputs_are_flagged():
    params, hparams, tb, vb = _problem()
    solve = jax.jit(lambda tb, vb: hypergrad(train_loss, val_loss, params, hparams, tb, vb)[1])
    assert bool(solve(tb, vb).finite)
    bad_val = (vb[0].at[0, 0].set(jnp.nan), vb[1])
    assert not bool(solve(tb, bad_val).finite)
    bad_train = (tb[0], tb[1].at[3].set(jnp.inf))
    assert not bool(solve(bad_train, vb).finite)
    info = solve(tb, bad_val)  # a NaN in: the numbers that depend on it read NaN, never 0
    assert np.isnan(float(info.val_grad_norm)) and np.isnan(float(info.residual))
    assert np.isnan(float(info.grad_divergence)) and np.isfinite(float(info.train_grad_norm))


def test_structurally_zero_mixed_derivative_is_flagged():
    params, hparams, tb, vb = _problem()
    run = lambda loss: hypergrad(loss, val_loss, params, hparams, tb, vb)
    grads, info = run(train_loss)
    assert int(info.unused_hparams) == 0
    grads, info = run(lambda p, h, b: val_loss(p, b) + 0.1 * jnp.sum(h["w"]))
    assert int(info.unused_hparams) == 3  # w only shifts the loss: no θ-gradient through it
    assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(grads))
    _, info = run(lambda p, h, b: train_loss(p, {**h, "t": [jnp.asarray(-1.0)]}, b))
    assert int(info.unused_hparams) == 1  # "t" replaced by a constant


def test_gauss_newton_split_that_drops_a_term_is_measured():
    with jax.enable_x64(True):
        params, hparams, tb, vb = _problem(dtype=jnp.float64)
        outputs = lambda p, h, b: (_predict(p, b[0] + jnp.sum(h["e"])), p)
        def output_loss(out, h, b):
            pred, p = out
            l2 = jnp.exp(h["t"][0]) * sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(p))
            return jnp.mean(h["w"] * (pred - b[1]) ** 2) + 0.5 * l2
        kw = dict(curvature="gauss_newton", solver=cg(100, 1.5, 1e-12))
        _, info = hypergrad(train_loss, val_loss, params, hparams, tb, vb,
                            train_outputs=outputs, output_loss=output_loss, **kw)
        assert float(info.loss_gap) < 1e-12
        _, info = hypergrad(train_loss, val_loss, params, hparams, tb, vb,  # L2 term dropped
                            train_outputs=lambda p, h, b: outputs(p, h, b)[0],
                            output_loss=lambda z, h, b: jnp.mean(h["w"] * (z - b[1]) ** 2), **kw)
        assert float(info.loss_gap) > 1e-3
        _, info = hypergrad(train_loss, val_loss, params, hparams, tb, vb, solver=identity())
        assert np.isnan(float(info.loss_gap))


def test_errors_name_the_argument_at_fault():
    params, hparams, tb, vb = _problem()
    call = lambda **kw: hypergrad(train_loss, val_loss, kw.pop("params", params), hparams,
                                  kw.pop("tb", tb), kw.pop("vb", vb), **kw)
    for builder in (implicit.cg, implicit.neumann, implicit.nystrom, implicit.identity,
                    implicit.CG, implicit.Neumann):
        with pytest.raises(ValueError, match=r"builder `\w+` itself; call it"):
            call(solver=builder)
    with pytest.raises(ValueError, match="check `train_batch`"):
        call(tb=(tb[0][:, :2], tb[1]))  # 2 features instead of 3
    with pytest.raises(ValueError, match="check `val_batch`"):
        call(vb=(vb[0][:, :2], vb[1]))
    with pytest.raises(ValueError, match="check `params`"):
        call(params={**params, "a": params["a"][:2]})


def test_bad_input_raises_clear_errors_at_trace_time():
    params, hparams, tb, vb = _problem()
    call = lambda **kw: hypergrad(kw.pop("train_loss", train_loss), kw.pop("val_loss", val_loss),
                                  kw.pop("params", params), kw.pop("hparams", hparams), tb, vb,
                                  **kw)
    allowed = "'hessian', 'gauss_newton', 'empirical_fisher'"
    with pytest.raises(ValueError, match=f"curvature.*{allowed}"):
        call(curvature="fisher")
    assert CURVATURES == ("hessian", "gauss_newton", "empirical_fisher")
    with pytest.raises(ValueError, match="mode"):
        call(mode="reverse")
    with pytest.raises(ValueError, match=r"solver.*cg\(iters, damping, tol\)"):
        call(solver="cg")
    with pytest.raises(ValueError, match="iters"):
        call(solver=neumann(-1))
    with pytest.raises(ValueError, match="`train_loss`.*`hparams`"):
        call(hparams={"w": hparams["w"], "e": hparams["e"]})  # "t" missing
    with pytest.raises(ValueError, match="`train_loss`.*`hparams`"):
        call(hparams={**hparams, "w": jnp.ones(5)})  # wrong per-example shape
    with pytest.raises(ValueError, match="train_loss.*scalar"):
        call(train_loss=lambda p, h, b: h["w"] * val_loss(p, b))
    with pytest.raises(ValueError, match="val_loss.*scalar"):
        call(val_loss=lambda p, b: jnp.ones(3))
    with pytest.raises(TypeError, match="hparams.*floating"):
        call(hparams={**hparams, "t": [jnp.asarray(1)]})
    with pytest.raises(TypeError, match="train_loss.*callable"):
        call(train_loss=3)
    with pytest.raises(ValueError, match="train_outputs"):
        call(curvature="gauss_newton")
    with pytest.raises(ValueError, match="per_example_loss"):
        call(curvature="empirical_fisher")
    with pytest.raises(ValueError, match="per_example_loss.*\\(B,\\)"):
        call(curvature="empirical_fisher", per_example_loss=train_loss)
    with pytest.raises(ValueError, match="iters"):  # also inside jit: raised while tracing
        jax.jit(lambda p: hypergrad(train_loss, val_loss, p, hparams, tb, vb,
                                    solver=cg(-1)))(params)
    _, info = jax.jit(lambda p: hypergrad(train_loss, val_loss, p, hparams, tb, vb,
                                          solver=identity()))(params)
    assert bool(info.finite)  # valid input still works

    def broken(matvec, b):  # breaks the solver contract: x must have the tree of b
        x, solver_info = identity()(matvec, b)
        return {**x, "a": x["a"][:1]}, solver_info
    with pytest.raises(AssertionError, match="shape"):  # chex post-condition in hypergrad
        call(solver=broken)


def test_readme_example_runs():
    from autodo_jax import implicit as imp

    x, y = jax.random.normal(jax.random.key(0), (64, 5)), jnp.arange(64.0) % 2
    train = lambda w, lam, b: (jnp.mean(jnp.exp(lam["logw"]) * (b[0] @ w - b[1]) ** 2)
                               + jnp.exp(lam["l2"]) * w @ w)
    val = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
    lam = {"logw": jnp.zeros(64), "l2": jnp.array(-2.0)}
    w = jnp.linalg.lstsq(x, y)[0]
    step = jax.jit(lambda w, lam: imp.hypergrad(train, val, w, lam, (x, y), (x[:16], y[:16])))
    grads, info = step(w, lam)
    lam = jax.tree.map(lambda l, g: l - 0.1 * g, lam, grads)
    assert bool(info.finite) and float(info.residual) < 1e-4 and lam["logw"].shape == (64,)

    @imp.stationary_point(train, solver=imp.cg(tol=1e-10))
    def fit(lam, batch):
        return jax.lax.fori_loop(0, 500, lambda _, w: w - 0.1 * jax.grad(train)(w, lam, batch),
                                 jnp.zeros(5))
    dval_dlam = jax.grad(lambda lam: val(fit(lam, (x, y)), (x[:16], y[:16])))(lam)
    # the same as hypergrad at the loop's solution, whose gradient it has driven to ~0
    w_fit = fit(lam, (x, y))
    assert float(jnp.linalg.norm(jax.grad(train)(w_fit, lam, (x, y)))) < 1e-4
    ref, _ = imp.hypergrad(train, val, w_fit, lam, (x, y), (x[:16], y[:16]),
                           solver=imp.cg(tol=1e-10))
    for k in ("logw", "l2"):
        np.testing.assert_allclose(dval_dlam[k], ref[k], rtol=1e-3, atol=1e-6)
