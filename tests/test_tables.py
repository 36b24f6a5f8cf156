"""Tests for autodo_jax.tables: gather, row updates and dense-equivalent row optimizers."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autodo_jax import tables

N, B, STEPS = 40, 12, 50

# Jitted apply_rows (the optimizer is a hashable NamedTuple of functions): eager dispatch
# of the many small ops would make the tests slow on two shared cores.
apply_rows = jax.jit(tables.apply_rows, static_argnums=0)


def _initial(n=N, rng=None):
    rng = rng or np.random.default_rng(0)
    return {"p": rng.normal(size=(n, 3)), "w": rng.normal(size=(n,)), "s": rng.normal(size=(1, 2))}


def _batches(steps=STEPS, seed=1):
    """Ids with duplicates, drawn from rows 0..29 only (rows 30..39 are never touched),
    and per-id gradients."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = rng.integers(0, 30, size=B).astype(np.int32)
        ids[1] = ids[0]  # a guaranteed duplicate
        yield ids, {"p": rng.normal(size=(B, 3)), "w": rng.normal(size=(B,)), "s": rng.normal(size=(B, 2))}


def _dense_grads(ids, grads):
    dense = {"p": np.zeros((N, 3)), "w": np.zeros((N,)), "s": grads["s"].sum(0, keepdims=True)}
    np.add.at(dense["p"], ids, grads["p"])
    np.add.at(dense["w"], ids, grads["w"])
    return dense


def _touched(ids):
    mask = np.zeros(N, bool)
    mask[ids] = True
    return {"p": mask[:, None], "w": mask, "s": np.ones((1, 1), bool)}


def SCHEDULE(count):
    """Linear decay 0.05 -> 0.01 computed in the default float dtype (float64 under x64;
    optax.linear_schedule returns float32, which XLA may round 1 ulp differently)."""
    return 0.05 - 0.04 * jnp.minimum(count, STEPS) / STEPS

CASES = {
    "sgd": (lambda: tables.row_sgd(SCHEDULE), lambda: optax.sgd(SCHEDULE), False),
    "rmsprop": (
        lambda: tables.row_rmsprop(SCHEDULE, decay=0.99, eps=1e-8, state_dtype=jnp.float64),
        lambda: optax.rmsprop(SCHEDULE, decay=0.99, eps=1e-8, eps_in_sqrt=False),
        False,
    ),
    # Lazy Adam == dense Adam (zero grads on untouched rows) with updates masked to touched rows.
    "adam": (
        lambda: tables.row_adam(SCHEDULE, state_dtype=jnp.float64),
        lambda: optax.adam(SCHEDULE),
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_row_optimizer_matches_dense_optax(name):
    make_row, make_dense, masked = CASES[name]
    with jax.enable_x64(True):
        table = tables.init_table(_initial(), dtype=jnp.float64)
        row_opt, dense_opt = make_row(), make_dense()
        state = row_opt.init(table)
        dense = {k: np.asarray(v) for k, v in table.items()}
        dense_state = dense_opt.init(dense)
        dense_update = jax.jit(dense_opt.update)
        for ids, grads in _batches():
            table, state = apply_rows(row_opt, table, state, ids, grads)
            updates, dense_state = dense_update(_dense_grads(ids, grads), dense_state, dense)
            if masked:
                mask = _touched(ids)
                updates = {k: np.where(mask[k], updates[k], 0.0) for k in updates}
            dense = optax.apply_updates(dense, updates)
        assert int(state.count) == STEPS
        for k in table:
            np.testing.assert_allclose(np.asarray(table[k]), np.asarray(dense[k]), rtol=0, atol=1e-9, err_msg=k)
        # Rows 30.. were never touched and never moved.
        np.testing.assert_array_equal(np.asarray(table["p"])[30:], _initial()["p"][30:])


def test_dense_adam_drift_is_not_reproduced():
    """Honesty check for the documented difference: plain dense Adam moves untouched rows."""
    table = tables.init_table({"p": np.zeros((4, 1))})
    opt = tables.row_adam(0.1)
    state = opt.init(table)
    table, state = apply_rows(opt, table, state, np.array([0]), {"p": np.ones((1, 1))})
    table, state = apply_rows(opt, table, state, np.array([1]), {"p": np.ones((1, 1))})
    dense_opt = optax.adam(0.1)
    dense = jnp.zeros((4, 1))
    ds = dense_opt.init(dense)
    for row in (0, 1):
        u, ds = dense_opt.update(jnp.zeros((4, 1)).at[row].set(1.0), ds, dense)
        dense = optax.apply_updates(dense, u)
    assert float(dense[0, 0]) < float(table["p"][0, 0]) - 1e-3  # dense drifted further
    np.testing.assert_allclose(table["p"][1], dense[1], atol=1e-6)  # same where touched last


def test_rmsprop_float32_with_optax_schedule_matches_dense_optax():
    schedule = optax.exponential_decay(0.01, transition_steps=10, decay_rate=0.5)
    table = tables.init_table(_initial())
    opt = tables.row_rmsprop(schedule)
    state = opt.init(table)
    dense_opt = optax.rmsprop(schedule, decay=0.99, eps=1e-8, eps_in_sqrt=False)
    dense = {k: jnp.asarray(v) for k, v in table.items()}
    dense_state = dense_opt.init(dense)
    for ids, grads in _batches(steps=50):
        table, state = apply_rows(opt, table, state, ids, grads)
        updates, dense_state = dense_opt.update(_dense_grads(ids, grads), dense_state, dense)
        dense = optax.apply_updates(dense, updates)
    for k in table:
        np.testing.assert_allclose(table[k], dense[k], rtol=0, atol=1e-6, err_msg=k)


def test_lazy_decay_closed_form():
    """Row touched at steps 1 and 11 only: nu = 0.99**10 * 0.01 g1^2 + 0.01 g2^2."""
    with jax.enable_x64(True):
        table = tables.init_table({"w": np.zeros(3), "other": np.zeros(3)}, dtype=jnp.float64)
        opt = tables.row_rmsprop(1.0, state_dtype=jnp.float64)
        state = opt.init(table)
        zeros = {"w": np.zeros(1), "other": np.zeros(1)}
        for step in range(11):
            ids, g = (np.array([0]), {"w": np.array([2.0 if step == 0 else 3.0]), "other": np.zeros(1)})
            if 0 < step < 10:
                ids, g = np.array([1]), zeros
            table, state = apply_rows(opt, table, state, ids, g)
        nu = 0.99**10 * 0.01 * 4.0 + 0.01 * 9.0
        assert float(state.slots["nu"]["w"][0]) == pytest.approx(nu, rel=1e-12)
        assert int(state.last[0]) == 11 and int(state.last[2]) == 0
        w = -2.0 / (np.sqrt(0.04) + 1e-8) - 3.0 / (np.sqrt(nu) + 1e-8)
        assert float(table["w"][0]) == pytest.approx(w, rel=1e-12)


def _dense_per_row_rmsprop(lr, decay, eps, steps):
    """Dense reference of row-local RMSprop: every row (and the shared leaf) is an
    independent parameter with its own RMSprop clock, advanced only when the row is touched:
    on its k-th touch nu <- decay nu + (1-decay) g^2, step lr(count) g / (sqrt(nu/(1-decay^k)) + eps)."""
    params = {k: np.array(v, np.float64) for k, v in _initial().items()}
    nu = {k: np.zeros_like(v) for k, v in params.items()}
    visits = {k: np.zeros(v.shape[0], np.int64) for k, v in params.items()}
    for count, (ids, grads) in enumerate(steps):
        g = _dense_grads(ids, grads)
        touched = _touched(ids)
        for k in params:
            rows = np.flatnonzero(touched[k].reshape(touched[k].shape[0], -1).any(axis=1))
            for r in rows:
                visits[k][r] += 1
                nu[k][r] = decay * nu[k][r] + (1 - decay) * g[k][r] ** 2
                nu_hat = nu[k][r] / (1 - decay ** visits[k][r])
                params[k][r] = params[k][r] - lr(count, k) * g[k][r] / (np.sqrt(nu_hat) + eps)
    return params, visits


@pytest.mark.parametrize("decay", [0.99, 0.5])
def test_row_local_rmsprop_matches_dense_per_row_reference(decay):
    """Row-local time: a row's update depends only on its own visits (float64, 1e-9)."""
    lrs = {"p": SCHEDULE, "w": 0.02, "s": lambda c: 0.03 + 0.0 * c}  # per-field rates
    with jax.enable_x64(True):
        table = tables.init_table(_initial(), dtype=jnp.float64)
        opt = tables.row_rmsprop_local(lrs, decay=decay, eps=1e-8, state_dtype=jnp.float64)
        state = opt.init(table)
        for ids, grads in _batches():
            table, state = apply_rows(opt, table, state, ids, grads)

        def lr(count, k):
            return float(lrs[k](count)) if callable(lrs[k]) else lrs[k]

        dense, visits = _dense_per_row_rmsprop(lr, decay, 1e-8, _batches())
        for k in table:
            np.testing.assert_allclose(np.asarray(table[k]), dense[k], rtol=0, atol=1e-9, err_msg=k)
        np.testing.assert_array_equal(np.asarray(state.visits), visits["p"])
        assert visits["p"][30:].sum() == 0 and int(state.count) == STEPS


def test_row_local_rmsprop_equals_per_row_optax_adam_without_momentum():
    """Second, independent reference: one row's updates equal optax.adam(b1=0) run on that
    row's own gradient sequence, whatever the other rows do."""
    with jax.enable_x64(True):
        table = tables.init_table({"w": np.zeros(5)}, dtype=jnp.float64)
        opt = tables.row_rmsprop_local(0.1, decay=0.9, state_dtype=jnp.float64)
        state = opt.init(table)
        rng = np.random.default_rng(3)
        seq = []
        for step in range(30):
            ids = np.array([step % 5, 4])  # row 4 every step, rows 0..3 every 5th step
            g = rng.normal(size=2)
            table, state = apply_rows(opt, table, state, ids, {"w": g})
            if step % 5 == 0:
                seq.append(g[0])
        ref_opt = optax.adam(0.1, b1=0.0, b2=0.9, eps=1e-8)
        x = jnp.zeros(()); ref_state = ref_opt.init(x)
        for g in seq:
            u, ref_state = ref_opt.update(jnp.asarray(g), ref_state, x)
            x = x + u
        assert float(table["w"][0]) == pytest.approx(float(x), rel=1e-10)


def test_row_local_vector_field_keeps_the_row_direction():
    """vector_fields: one second moment per row vector; a first visit moves the row by
    lr * g / rms(g) (direction of g, RMS lr), later visits use the row's mean g**2."""
    with jax.enable_x64(True):
        table = tables.init_table({"s": np.zeros((3, 4)), "a": np.zeros((3, 4))}, dtype=jnp.float64)
        opt = tables.row_rmsprop_local(0.1, decay=0.9, eps=1e-30, vector_fields=("s",),
                                       state_dtype=jnp.float64)
        state = opt.init(table)
        g1 = np.array([[1.0, -2.0, 0.5, 0.0]])
        table, state = apply_rows(opt, table, state, np.array([1]), {"s": g1, "a": g1})
        np.testing.assert_allclose(table["s"][1], 0.1 * -g1[0] / np.sqrt(np.mean(g1 ** 2)), rtol=1e-12)
        np.testing.assert_allclose(table["a"][1], -0.1 * np.sign(g1[0]), rtol=1e-12)  # per coordinate
        g2 = np.array([[0.0, 1.0, 1.0, 3.0]])
        before = np.asarray(table["s"][1])
        table, state = apply_rows(opt, table, state, np.array([1]), {"s": g2, "a": g2})
        nu = 0.9 * 0.1 * np.mean(g1 ** 2) + 0.1 * np.mean(g2 ** 2)
        np.testing.assert_allclose(table["s"][1] - before, -0.1 * g2[0] / np.sqrt(nu / (1 - 0.81)), rtol=1e-12)


def test_row_local_step_is_independent_of_table_size():
    """Scale-free: the same row with the same gradients moves the same whatever N and
    however many other rows are updated between its visits (global-time RMSprop does not)."""
    def final_row0(opt, n):
        table = tables.init_table({"w": np.zeros(n)})
        state = opt.init(table)
        for step in range(30 * n):
            row, visit = step % n, step // n  # a pass over all rows per n steps
            g = 1.0 + 0.5 * np.sin(visit)  # row 0 sees the same sequence for every n
            table, state = apply_rows(opt, table, state, np.array([row]), {"w": np.array([g])})
        return float(table["w"][0])

    local = [final_row0(tables.row_rmsprop_local(0.01, decay=0.9), n) for n in (1, 20)]
    glob = [final_row0(tables.row_rmsprop(0.01, decay=0.9), n) for n in (1, 20)]
    assert local[0] == pytest.approx(local[1], rel=1e-6)
    assert abs(glob[1]) > 1.5 * abs(glob[0])  # the original's clock: bigger steps at larger N


def test_per_field_learning_rate_missing_field_raises():
    table = tables.init_table({"a": np.zeros(3), "b": np.zeros(3)})
    opt = tables.row_sgd({"a": 0.1})
    with pytest.raises(ValueError, match="no entry for table field 'b'"):
        tables.apply_rows(opt, table, opt.init(table), np.array([0]), {"a": np.ones(1), "b": np.ones(1)})


def test_gather_rows_duplicates_and_shared_broadcast():
    init = _initial()
    table = tables.init_table(init)
    ids = np.array([5, 0, 5, 39], np.int32)
    rows = tables.gather(table, ids)
    assert {k: v.shape for k, v in rows.items()} == {"p": (4, 3), "w": (4,), "s": (4, 2)}
    np.testing.assert_allclose(rows["p"], init["p"][ids], rtol=1e-6)
    np.testing.assert_allclose(rows["w"], init["w"][ids], rtol=1e-6)
    np.testing.assert_allclose(rows["s"], np.repeat(init["s"], 4, axis=0), rtol=1e-6)
    assert tables.shared_keys(table) == {"s"}


def test_duplicate_ids_are_summed():
    table = tables.init_table({"w": np.zeros(4)})
    opt = tables.row_sgd(1.0)
    state = opt.init(table)
    table, state = apply_rows(opt, table, state, np.array([2, 2, 1]), {"w": np.array([1.0, 2.0, 4.0])})
    np.testing.assert_allclose(table["w"], [0.0, -4.0, -3.0, 0.0])


@pytest.mark.parametrize(
    "ids, match",
    [
        (np.array([0, N]), "values in"),
        (np.array([-1, 0]), "values in"),
        (np.array([0.0, 1.0]), "integer"),
        (np.zeros((2, 1), np.int32), "shape"),
    ],
)
def test_bad_concrete_ids_raise(ids, match):
    table = tables.init_table(_initial())
    opt = tables.row_sgd(0.1)
    grads = {"p": np.zeros((2, 3)), "w": np.zeros(2), "s": np.zeros((2, 2))}
    with pytest.raises(ValueError, match=match):
        tables.gather(table, ids)
    with pytest.raises(ValueError, match=match):
        tables.apply_rows(opt, table, opt.init(table), ids, grads)


def test_invalid_ids_under_jit_gather_zeros_and_are_dropped():
    table = tables.init_table(_initial())
    opt = tables.row_sgd(1.0)
    state = opt.init(table)
    ids = jnp.array([-1, N, 3], jnp.int32)
    rows = jax.jit(tables.gather)(table, ids)
    np.testing.assert_array_equal(rows["p"][:2], 0.0)
    grads = {"p": jnp.ones((3, 3)), "w": jnp.ones(3), "s": jnp.ones((3, 2))}
    new, state = apply_rows(opt, table, state, ids, grads)
    changed = np.flatnonzero(np.any(np.asarray(new["p"]) != np.asarray(table["p"]), axis=1))
    np.testing.assert_array_equal(changed, [3])  # -1 did not wrap to row N-1
    np.testing.assert_allclose(new["s"], table["s"] - 3.0, rtol=1e-6)  # shared leaf: batch sum
    assert int(state.last[N - 1]) == 0 and int(state.last[3]) == 1


def test_bad_grads_and_state_raise():
    table = tables.init_table(_initial())
    opt = tables.row_rmsprop(0.1)
    state = opt.init(table)
    ids = np.array([0, 1])
    good = {"p": np.zeros((2, 3)), "w": np.zeros(2), "s": np.zeros((2, 2))}
    with pytest.raises(ValueError, match=r"grads\['p'\]: expected shape \(2, 3\)"):
        tables.apply_rows(opt, table, state, ids, {**good, "p": np.zeros((2, 4))})
    with pytest.raises(ValueError, match=r"grads\['s'\]"):
        tables.apply_rows(opt, table, state, ids, {**good, "s": np.zeros((1, 2))})
    with pytest.raises(ValueError, match="expected keys"):
        tables.apply_rows(opt, table, state, ids, {"p": good["p"]})
    with pytest.raises(ValueError, match="opt_state"):
        tables.apply_rows(tables.row_adam(0.1), table, state, ids, good)


def test_init_table_validation():
    with pytest.raises(ValueError, match="same|one leading size"):
        tables.init_table({"a": np.zeros((3, 2)), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="dtype"):
        tables.init_table({"a": np.zeros(3)}, dtype=jnp.int32)
    with pytest.raises(ValueError, match="non-empty"):
        tables.init_table({})
    with pytest.raises(ValueError, match="scalar"):
        tables.init_table({"a": 1.0})


def test_zero_rows():
    table = tables.init_table({"p": np.zeros((0, 3)), "s": np.ones((1, 3))})
    assert tables.num_table_rows(table) == 0
    empty = np.zeros((0,), np.int32)
    assert tables.gather(table, empty)["p"].shape == (0, 3)
    with pytest.raises(ValueError, match=r"\[0, 0\)"):
        tables.gather(table, np.array([0]))
    opt = tables.row_rmsprop(0.1)
    state = opt.init(table)
    new, state = tables.apply_rows(opt, table, state, empty, {"p": np.zeros((0, 3)), "s": np.zeros((0, 3))})
    assert new["p"].shape == (0, 3) and int(state.count) == 1
    rows = jax.jit(tables.gather)(table, jnp.array([0], jnp.int32))
    np.testing.assert_array_equal(rows["p"], 0.0)


def test_bfloat16_storage_float32_math():
    init = _initial()
    t32 = tables.init_table(init)
    t16 = tables.init_table(init, dtype=jnp.bfloat16)
    opt = tables.row_rmsprop(0.01)
    s32, s16 = opt.init(t32), opt.init(t16)
    assert s16.slots["nu"]["p"].dtype == jnp.float32
    for ids, grads in _batches(steps=10):
        t32, s32 = apply_rows(opt, t32, s32, ids, grads)
        t16, s16 = apply_rows(opt, t16, s16, ids, grads)
    assert all(v.dtype == jnp.bfloat16 for v in t16.values())
    assert tables.gather(t16, np.array([0]))["p"].dtype == jnp.bfloat16
    for k in t32:
        np.testing.assert_allclose(np.asarray(t16[k], np.float32), t32[k], atol=0.05, err_msg=k)


def _donated_step_temp_bytes(n, opt):
    table = tables.init_table({"p": jnp.zeros((n, 7)), "w": jnp.zeros((n,)), "s": jnp.zeros((1, 7))})
    state = opt.init(table)

    def step(t, s, ids):
        grads = jax.tree.map(lambda r: r + 1.0, tables.gather(t, ids))
        return tables.apply_rows(opt, t, s, ids, grads)

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(table, state, jnp.arange(64, dtype=jnp.int32)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_donated_step_has_no_n_sized_temporaries(xla_optimized):
    """XLA's temporary buffers of a donated gather + row-RMSprop step do not grow with N
    (no N-sized copy of the table, the moments or the ``last`` stamps); compiled as in
    production (buffer assignment depends on XLA's optimisations)."""
    opt = tables.row_rmsprop(0.1)
    small, large = _donated_step_temp_bytes(1_000, opt), _donated_step_temp_bytes(20_000, opt)
    assert small == large, (small, large)
