"""autodo_jax.implicit against jaxopt 0.8.5 on the same bilevel problems, side by side.

Per-feature L2 strengths for ridge and logistic regression on breast_cancer
(``benchmarks/bilevel_problems.py``; float64, 30 hyperparameters). Every entry computes
the hypergradient dL_val(θ*(λ))/dλ at the exact θ*, so only the implicit step is timed:

* ours ``hypergrad/<solver>``: ``implicit.hypergrad(...)`` with that solver;
* ours ``stationary_point/cg``: ``jax.grad`` of L_val through a function decorated with
  ``implicit.stationary_point`` that returns the precomputed θ*;
* ``jaxopt/<solver>``: ``jax.grad`` of L_val through a function decorated with jaxopt's
  ``implicit_diff.custom_root(∇_θ L_train, solve=...)`` returning the same θ*.

Each entry is jit-compiled once and timed in interleaved rounds (the mean over a round of
calls; the minimum and the median over rounds). Prints one JSON object per line:
{"problem", "name", "rel_error", "cosine", "us_per_call" (min), "us_per_call_median"}, then
per problem {"ratio_cg": ours hypergrad cg(tol=1e-10) time / jaxopt custom_root +
solve_cg(tol=1e-12) time (by the minimum; "ratio_cg_median" by the median)}.

jaxopt is a benchmark-only dependency (``pip install jaxopt==0.8.5``), never a runtime one.

    python -m benchmarks.vs_jaxopt [--quick]
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from typing import Callable

import jax
import numpy as np

from autodo_jax import implicit
from benchmarks.bilevel_problems import PROBLEMS, Problem, make_problem

TOL = 1e-10        # ours
JAXOPT_TOL = 1e-12  # jaxopt's, as in the issue that asked for this comparison


def ours(problem: Problem) -> dict[str, Callable[[jax.Array], jax.Array]]:
    """Our entries: λ -> hypergradient (jitted)."""
    p = problem
    solvers = {
        "cg": implicit.cg(1000, tol=TOL),
        "neumann_auto": implicit.neumann(100000, "auto", tol=TOL),
        "nystrom_full_rank": implicit.nystrom(p.params.size, 1e-12, jax.random.key(0)),
        "identity": implicit.identity(),
        "neumann_paper": implicit.neumann(5, 0.01),
    }
    entries = {f"hypergrad/{k}": jax.jit(functools.partial(
        lambda lam, s: implicit.hypergrad(p.train_loss, p.val_loss, p.params, lam, p.train,
                                          p.val, solver=s)[0], s=s))
        for k, s in solvers.items()}
    entries["hypergrad/cg_gauss_newton"] = jax.jit(lambda lam: implicit.hypergrad(
        p.train_loss, p.val_loss, p.params, lam, p.train, p.val, solver=solvers["cg"],
        curvature="gauss_newton", train_outputs=p.outputs, output_loss=p.output_loss)[0])

    fixed = implicit.stationary_point(p.train_loss, solver=solvers["cg"])(
        lambda lam, batch: p.params)
    entries["stationary_point/cg"] = jax.jit(jax.grad(
        lambda lam: p.val_loss(fixed(lam, p.train), p.val)))
    return entries


def theirs(problem: Problem) -> dict[str, Callable[[jax.Array], jax.Array]]:
    """jaxopt's entries: custom_root over ∇_θ L_train with each of its linear solvers."""
    from jaxopt import implicit_diff, linear_solve

    p = problem
    optimality = jax.grad(p.train_loss)  # F(θ, λ, batch) = ∇_θ L_train
    entries = {}
    for name in ("solve_cg", "solve_normal_cg", "solve_gmres", "solve_bicgstab"):
        solve = functools.partial(getattr(linear_solve, name), tol=JAXOPT_TOL, maxiter=1000)
        fixed = implicit_diff.custom_root(optimality, solve=solve)(
            lambda init, lam, batch: init)
        entries[f"jaxopt/{name}"] = jax.jit(jax.grad(functools.partial(
            lambda lam, f: p.val_loss(f(p.params, lam, p.train), p.val), f=fixed)))
    return entries


def time_entries(entries: dict[str, Callable], arg: jax.Array, calls: int,
                 rounds: int) -> dict[str, tuple[float, float]]:
    """(min, median) over interleaved rounds of the mean wall time per call, in
    microseconds (the minimum is the figure least disturbed by other load)."""
    for fn in entries.values():
        jax.block_until_ready(fn(arg))
    times = {k: [] for k in entries}
    for _ in range(rounds):
        for name, fn in entries.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = fn(arg)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {k: (float(np.min(v)), float(np.median(v))) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    args = parser.parse_args()
    calls, rounds = (20, 3) if args.quick else (200, 15)
    with jax.enable_x64(True):
        for name in PROBLEMS:
            problem = make_problem(name)
            entries = {**ours(problem), **theirs(problem)}
            times = time_entries(entries, problem.hparams, calls, rounds)
            ref = np.asarray(problem.reference)
            for key, fn in entries.items():
                g = np.asarray(fn(problem.hparams))
                print(json.dumps({
                    "problem": name, "name": key,
                    "rel_error": float(np.linalg.norm(g - ref) / np.linalg.norm(ref)),
                    "cosine": float(g @ ref / np.linalg.norm(g) / np.linalg.norm(ref)),
                    "us_per_call": round(times[key][0], 1),
                    "us_per_call_median": round(times[key][1], 1)}))
            ratio = lambda k, i: round(times[k][i] / times["jaxopt/solve_cg"][i], 3)
            print(json.dumps({"problem": name, "ratio_cg": ratio("hypergrad/cg", 0),
                              "ratio_cg_median": ratio("hypergrad/cg", 1),
                              "ratio_stationary_point_cg": ratio("stationary_point/cg", 0)}))


if __name__ == "__main__":
    main()
