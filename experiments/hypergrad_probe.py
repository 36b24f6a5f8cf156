r"""Probe of the per-example λ_S and λ_W hypergradients of a run's checkpoint.

  python -m experiments.hypergrad_probe WORKDIR [--out=probe.json]

Loads the newest checkpoint of WORKDIR, computes the frozen encoder's features of every
train row and every clean validation example (no augmentation), and writes, per inverse
solver and per part of the signal, how well the hypergradients point at the truth (the
clean labels and noisy flags are used for *diagnosis* only, never for training).

Closed forms (θ = the linear head, φ_n = [f_n; 1], u = C⁻¹ ∇_θ L_val, s_n = Uᵀφ_n ∈ R^C):
with L_train = mean_n w_n ℓ_n and ℓ_n = ½[KL(q_n‖p_n) + KL(p_n‖q_n)],

  dL_val/dλ_S,n = (w_n/B) · ½(J_q + J_p) s_n,      J_q = diag q − q qᵀ,
  dL_val/dλ_W,n = −(w'_n/B) · (∇_z ℓ_n)ᵀ s_n,

(plain KL: J_q alone). The probe checks these against ``autodo_jax.implicit.hypergrad``
on one batch before using them. ``s_n`` splits into a part shared by every example,
``Uᵀ[f̄; 1]`` (the bias u_b plus the mean feature: a per-class prior push), and the
example-specific part ``U_Kᵀ(f_n − f̄)``.

For each variant the report gives, for λ_S (descent direction d_n = −dL/dλ_S,n, after the
optimizer's normalisation: "coord" = per coordinate, i.e. sign, as RMSprop on one row over
consistent visits; "row" = d_n / rms(d_n); "field" = d_n / rms over all rows):
``noisy_toward_clean`` (fraction of noisy rows whose clean class gains on the given one),
``noisy_best_is_clean`` (the class that gains most over the given one is the clean class),
``clean_stable`` (no class gains on the given label of a clean row), ``flip_auc`` (AUC of
the rate at which the given label loses its lead, noisy vs clean rows); and for λ_W the AUC
of the descent direction (weights of clean rows should grow) and the same for the centred
signal.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from autodo_jax import implicit, losses, models, parallel
from autodo_jax.data import distortion, transforms
from experiments import pipes as pipes_lib, run_setup, summary as summary_lib, trainer
from experiments import config as cfg_lib
from experiments import workdir as workdir_lib


def load_run(workdir: str) -> dict[str, Any]:
    """The newest checkpoint of ``workdir`` with the run's data.

    Returns:
      {"config", "data", "state", "epoch", "cfg" (StepConfig)}.
    """
    path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
    config = cfg_lib.from_dict(workdir_lib.read_json(path))
    data = run_setup.load_data(config)
    mesh, pipes, step_cfg = pipes_lib.build_run(config, data)  # as the trainer built it
    run = trainer.Trainer(config, workdir, data, mesh, pipes, step_cfg, log=lambda m: None)
    restored = run.ckpt.restore_latest(run.init_state(), num_rows=len(data.train_index))
    run.ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir}: no readable checkpoint")
    _, state, meta = restored
    return {"config": config, "data": data, "state": state, "epoch": int(meta["epoch"]),
            "cfg": step_cfg}


def features(run: dict[str, Any], which: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, D) float64, labels (n,)) of the train rows or the validation split,
    through the frozen encoder in inference mode, without augmentation."""
    data, state, cfg = run["data"], run["state"], run["cfg"]
    split, src = data.split, data.source
    index, labels = ((split.train_index, split.train_labels) if which == "train"
                     else (split.val_index, split.val_labels))
    images_of = src.train if which == "train" else distortion.val_source(src, split)
    tf = transforms.host_transform("none", src.family)
    model = models.get_model(cfg.model, cfg.num_classes)
    encode = jax.jit(lambda x: models.encode(model, state.params, state.batch_stats, x,
                                             train=False)[0])
    out = []
    for start in range(0, len(index), 500):
        images = tf(images_of.images(np.asarray(index[start:start + 500])), np.random.default_rng(0))
        out.append(np.asarray(encode(images), np.float64))
    return np.concatenate(out), np.asarray(labels)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _jac(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Row-wise (diag p − p pᵀ) s for p, s (n, C)."""
    return p * (s - np.sum(p * s, -1, keepdims=True))


def head_hessian(W, b, F, soft, w, symmetric: bool, with_bias: bool) -> np.ndarray:
    """Exact Hessian of mean_n w_n ℓ_n in float64 with respect to θ = [vec W; b]
    (``with_bias``) or θ = vec W (P = D·C (+ C))."""
    def loss(theta):
        Wt = theta[: W.size].reshape(W.shape)
        bt = theta[W.size:] if with_bias else jnp.asarray(b)
        logits = F @ Wt + bt
        per = losses.soft_label_loss(logits, soft, symmetric=symmetric)
        return jnp.mean(w * per)

    with jax.enable_x64(True):
        parts = [jnp.asarray(W, jnp.float64).ravel()]
        if with_bias:
            parts.append(jnp.asarray(b, jnp.float64))
        H = jax.hessian(loss)(jnp.concatenate(parts))
        return np.asarray(H)


def solves(H: np.ndarray, v: np.ndarray, alpha: float, iters: int) -> dict[str, np.ndarray]:
    """u ≈ H⁻¹ v by several solvers (all at the exact IFT scale)."""
    out = {"identity": v.copy()}
    term, total = v.copy(), v.copy()
    for _ in range(iters):
        term = term - alpha * (H @ term)
        total = total + term
    out[f"neumann{iters}"] = alpha * total
    evals = np.linalg.eigvalsh(H)
    top = float(evals[-1])
    for rel in (0.3, 0.1, 0.03, 0.01):
        damp = rel * top
        out[f"damped{rel:g}"] = np.linalg.solve(H + damp * np.eye(len(v)), v)
    out["_eig"] = np.array([evals[0], np.median(evals), top])
    return out


def _auc(score, positive):
    return summary_lib.auc(score, positive)


def soft_metrics(d: np.ndarray, given: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """Direction quality of per-row λ_S steps ``d`` (n, C)."""
    n = len(given)
    noisy = given != clean
    rows = np.arange(n)
    gain = d - d[rows, given][:, None]  # how much class j gains on the given label
    gain[rows, given] = -np.inf
    best = gain.argmax(-1)
    rate = gain.max(-1)
    out = {
        "noisy_toward_clean": float(np.mean((d[rows, clean] > d[rows, given])[noisy])),
        "noisy_best_is_clean": float(np.mean((best == clean)[noisy])),
        "clean_stable": float(np.mean((rate <= 0)[~noisy])),
        "flip_auc": _auc(rate, noisy),
        "noisy_rate_mean": float(np.mean(rate[noisy])),
        "clean_rate_mean": float(np.mean(rate[~noisy])),
    }
    return out


def normalised(d: np.ndarray) -> dict[str, np.ndarray]:
    return {"coord": np.sign(d),
            "row": d / (np.sqrt(np.mean(d ** 2, -1, keepdims=True)) + 1e-30),
            "field": d / (np.sqrt(np.mean(d ** 2)) + 1e-30)}


def probe(run: dict[str, Any]) -> dict[str, Any]:
    cfg, state, split = run["cfg"], run["state"], run["data"].split
    head = parallel.fetch(state.params["head"])
    W, b = np.asarray(head["kernel"], np.float64), np.asarray(head["bias"], np.float64)
    F, given = features(run, "train")
    Fv, yv = features(run, "val")
    clean, noisy = np.asarray(split.train_clean_labels), np.asarray(split.noisy)
    n, C = len(given), W.shape[1]
    table = parallel.fetch(state.table)
    soft = (np.asarray(table["soft"], np.float64)[:n] if "soft" in table
            else np.asarray(losses.soft_label_init(given, C), np.float64))
    lam_w = np.asarray(table["weight"], np.float64)[:n] if "weight" in table else np.zeros(n)
    w = np.logaddexp(0, lam_w) / np.log(2)
    wprime = 1 / (1 + np.exp(-lam_w)) / np.log(2)
    q, p = _softmax(soft), _softmax(F @ W + b)
    pv = _softmax(Fv @ W + b)
    yv1 = np.eye(C)[yv]
    sym = cfg.symmetric_kl
    fbar = F.mean(0)
    report: dict[str, Any] = {
        "epoch": run["epoch"], "num_train": n, "num_noisy": int(noisy.sum()),
        "train_acc_given": float(np.mean(p.argmax(-1) == given)),
        "train_acc_clean": float(np.mean(p.argmax(-1) == clean)),
        "noisy_pred_clean": float(np.mean((p.argmax(-1) == clean)[noisy])),
        "noisy_pred_given": float(np.mean((p.argmax(-1) == given)[noisy])),
        "val_acc": float(np.mean(pv.argmax(-1) == yv)),
        "soft_margin_mean": float(np.mean(np.sort(soft, -1)[:, -1] - np.sort(soft, -1)[:, -2])),
        "weight_auc_now": _auc(w, ~noisy),
        "variants": {},
    }
    if run["config"].train_on_val:   # the run's inner loss also covers the V clean rows
        report["note"] = ("--train_on_val run: the Hessian and hypergradients here cover the "
                          f"{n} train rows only, not the clean rows the model also trained on")
    # dℓ/dz for the λ_W closed form.
    log_q, log_p = np.log(q), np.log(p)
    dz = p - q
    if sym:
        dz = 0.5 * (dz + _jac(p, log_p - log_q))
    # θ choices: the head (kernel + bias, today's default), the kernel alone (the original:
    # bias excluded), the kernel acting on features centred by the train mean (bias
    # b' = b + Wᵀf̄ held fixed: the same logits, another implicit parameterisation).
    thetas = {"head": (F, Fv, True), "kernel": (F, Fv, False),
              "centred_kernel": (F - fbar, Fv - fbar, False)}
    for theta_name, (Ft, Fvt, with_bias) in thetas.items():
        v = (Fvt.T @ (pv - yv1) / len(yv)).ravel()
        if with_bias:
            v = np.concatenate([v, np.mean(pv - yv1, 0)])
        H = head_hessian(W, b, Ft, soft, w, sym, with_bias)
        us = solves(H, v, cfg.neumann_alpha, cfg.solver_iters)
        eig = us.pop("_eig")
        report[f"hessian_eig_{theta_name}"] = eig.tolist()
        for name, u in us.items():
            UK = u[: W.size].reshape(W.shape)
            ub = u[W.size:] if with_bias else np.zeros(C)
            parts = {"full": Ft @ UK + ub}
            if theta_name == "head":
                parts["common"] = np.broadcast_to(fbar @ UK + ub, (n, C))
                parts["specific"] = (F - fbar) @ UK
            entry = {"cos_u_v": float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))}
            for part, s_n in parts.items():
                terms = {"jq": _jac(q, s_n), "jp": _jac(p, s_n)}
                terms["sym"] = 0.5 * (terms["jq"] + terms["jp"])
                for term, g in terms.items():
                    d = -(w[:, None] * g)  # descent direction of λ_S
                    for norm, dn in normalised(d).items():
                        entry[f"S/{part}/{term}/{norm}"] = soft_metrics(dn, given, clean)
                gw = -wprime * np.sum(dz * s_n, -1)  # dL/dλ_W (up to 1/B)
                entry[f"W/{part}/auc"] = _auc(-gw, ~noisy)
            report["variants"][f"{theta_name}/{name}"] = entry
    return report


def check_closed_form(run: dict[str, Any], rows: int = 64) -> float:
    """Max relative difference between the closed form and implicit.hypergrad (identity
    solver) on ``rows`` train rows; raises if they disagree."""
    cfg, state = run["cfg"], run["state"]
    F, given = features(run, "train")
    Fv, yv = features(run, "val")
    F, given = F[:rows], given[:rows]
    C = cfg.num_classes
    table = parallel.fetch(state.table)
    soft = (np.asarray(table["soft"])[:rows] if "soft" in table
            else np.asarray(losses.soft_label_init(given, C)))
    lam_w = np.asarray(table["weight"])[:rows] if "weight" in table else np.zeros(rows)
    head = parallel.fetch(state.params["head"])
    with jax.enable_x64(True):
        head64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), head)
        hp = {"soft": jnp.asarray(soft, jnp.float64), "weight": jnp.asarray(lam_w, jnp.float64)}

        def train_loss(h, lam, batch):
            logits = models.head_apply(h, batch)
            per = losses.soft_label_loss(logits, lam["soft"], symmetric=cfg.symmetric_kl)
            return losses.weighted_mean(per, losses.loss_weight(lam["weight"]))

        def val_loss(h, batch):
            return jnp.mean(losses.cross_entropy(models.head_apply(h, batch), jnp.asarray(yv)))

        g, _ = implicit.hypergrad(train_loss, val_loss, head64, hp, jnp.asarray(F),
                                  jnp.asarray(Fv), solver=implicit.identity())
        W, b = np.asarray(head64["kernel"]), np.asarray(head64["bias"])
        pv = _softmax(Fv @ W + b)
        yv1 = np.eye(C)[yv]
        UK, ub = Fv.T @ (pv - yv1) / len(yv), np.mean(pv - yv1, 0)
        s = F @ UK + ub
        q, p = _softmax(np.asarray(soft, np.float64)), _softmax(F @ W + b)
        w = np.logaddexp(0, lam_w) / np.log(2)
        wprime = 1 / (1 + np.exp(-lam_w)) / np.log(2)
        jsum = _jac(q, s) + (_jac(p, s) if cfg.symmetric_kl else 0) 
        gs = (w[:, None] / rows) * (0.5 * jsum if cfg.symmetric_kl else jsum)
        dz = p - q
        if cfg.symmetric_kl:
            dz = 0.5 * (dz + _jac(p, np.log(p) - np.log(q)))
        gw = -(wprime / rows) * np.sum(dz * s, -1)
        err_s = np.abs(gs - np.asarray(g["soft"])).max() / np.abs(gs).max()
        err_w = np.abs(gw - np.asarray(g["weight"])).max() / np.abs(gw).max()
    err = float(max(err_s, err_w))
    if not err < 1e-6:
        raise AssertionError(f"closed form disagrees with implicit.hypergrad: {err_s}, {err_w}")
    return err


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m experiments.hypergrad_probe WORKDIR [--out=FILE]\n")
        sys.exit(2)
    run = load_run(argv[1])
    report = {"closed_form_error": check_closed_form(run), **probe(run)}
    text = json.dumps(report, indent=1)
    if flags.FLAGS.out:
        workdir_lib.atomic_write(flags.FLAGS.out, text)
    print(text)


if __name__ == "__main__":
    flags.DEFINE_string("out", "", "Also write the JSON report here.")
    app.run(main)
