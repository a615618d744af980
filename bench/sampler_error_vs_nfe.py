"""Sample error against NFE for every diffjax sampler on a 25-mode Gaussian mixture, exact score.

With the exact denoiser there is no model error: what remains is each sampler's discretisation
error (plus sampling noise). Two measures:
  (a) sliced Wasserstein-2 distance between 20k samples and 20k exact data samples (all samplers);
  (b) RMS distance from the probability-flow ODE solution of the same x_T, computed by diffrax
      Dopri5 at rtol = atol = 1e-7 (deterministic samplers only; no sampling noise).
It writes docs/sampler_error_vs_nfe.png and bench/sampler_error_vs_nfe.json, and prints which
samplers reach the error of 1000-step DDPM ancestral sampling, at what NFE.

    PYTHONPATH=. python bench/sampler_error_vs_nfe.py [--n 20000] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import samplers
from diffjax.schedules import VESDE, VPSDE

GRID = np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)], np.float32)
MIXTURE = samplers.GaussianMixture.create(1.0 + np.arange(25) % 3, GRID, 0.1)
VP = VPSDE()
VE = VESDE(sigma_min=0.01, sigma_max=10.0)

# name: (schedule, option swept, values, fixed options, deterministic)
SWEEPS = {
    "ddpm": (VP, "steps", [10, 25, 50, 100, 250, 500, 1000], {}, False),
    "ddim": (VP, "steps", [5, 10, 20, 50, 100, 200], {}, True),
    "euler_maruyama": (VP, "steps", [20, 50, 100, 250, 500, 1000], {}, False),
    "reverse_diffusion": (VP, "steps", [20, 50, 100, 250, 500, 1000], {}, False),
    "pc": (VP, "steps", [10, 25, 50, 125, 250, 500], {"snr": 0.1}, False),
    "annealed_langevin": (VE, "n_steps_each", [5, 10, 25, 50, 100], {"steps": 10, "step_lr": 1e-4}, False),
    "ode_euler": (VP, "steps", [10, 20, 50, 100, 200, 500], {}, True),
    "ode_heun": (VP, "steps", [5, 10, 25, 50, 100], {}, True),
    "ode_adaptive": (VP, "rtol", [1e-2, 1e-3, 1e-4, 1e-5], {}, True),
    "edm_heun": (VP, "steps", [5, 10, 18, 32, 64], {}, True),
    "edm_euler": (VP, "steps", [10, 20, 50, 100, 200], {}, True),
    "edm_stochastic": (VP, "steps", [10, 20, 50, 100, 200], {}, False),
    "dpm_solver_1": (VP, "steps", [5, 10, 20, 50, 100], {}, True),
    "dpm_solver_2": (VP, "steps", [3, 5, 10, 25, 50], {}, True),
    "dpm_solver_3": (VP, "steps", [2, 4, 7, 15, 30], {}, True),
    "dpm_solver_pp_2m": (VP, "steps", [5, 10, 15, 20, 50, 100], {}, True),
}


def sliced_wasserstein(x, y, key, n_proj=256):
    """SW2 between equal-size sample sets: sorted projections on random unit directions."""
    d = jax.random.normal(key, (x.shape[1], n_proj))
    d = d / jnp.linalg.norm(d, axis=0)
    px, py = jnp.sort(x @ d, axis=0), jnp.sort(y @ d, axis=0)
    return float(jnp.sqrt(jnp.mean((px - py) ** 2)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--quick", action="store_true", help="two points per sampler (a smoke run)")
    ap.add_argument("--out", default="docs/sampler_error_vs_nfe.png")
    args = ap.parse_args()

    data = MIXTURE.sample(jax.random.PRNGKey(1), args.n)
    sw_key = jax.random.PRNGKey(2)
    floor = sliced_wasserstein(MIXTURE.sample(jax.random.PRNGKey(3), args.n), data, sw_key)
    x_T = {id(VP): VP.prior_sample(jax.random.PRNGKey(4), (args.n, 2)),
           id(VE): VE.prior_sample(jax.random.PRNGKey(4), (args.n, 2))}
    reference = jax.jit(lambda x: samplers.ode_adaptive(MIXTURE.denoiser(VP), VP, x, None, solver="dopri5",
                                                         rtol=1e-7, atol=1e-7, max_steps=100000)[0])(x_T[id(VP)])

    results = {}
    for name, (schedule, knob, values, fixed, deterministic) in SWEEPS.items():
        values = [values[0], values[-1]] if args.quick else values
        rows = []
        for v in values:
            opts = dict(fixed, **{knob: v})
            if knob == "rtol":
                opts["atol"] = v
            t0 = time.time()
            fn = jax.jit(lambda k, x: samplers.sample(name, MIXTURE.denoiser(schedule), schedule, k, x_T=x, **opts))
            x, info = fn(jax.random.PRNGKey(5), x_T[id(schedule)])
            row = {knob: v, "nfe": int(info["nfe"]), "sw": sliced_wasserstein(x, data, sw_key)}
            if deterministic and schedule is VP:
                row["ode_rms"] = float(jnp.sqrt(jnp.mean((x - reference) ** 2)))
            row["seconds"] = round(time.time() - t0, 2)
            rows.append(row)
            print(name, row, flush=True)
        results[name] = rows

    target = next(r["sw"] for r in results["ddpm"] if r["steps"] == 1000) if not args.quick else results["ddpm"][-1]["sw"]
    # DDPM-1000 sits at the sampling-noise floor, so "reaches it" means: within 10% of the larger
    # of the two (errors below that are not distinguishable with n samples).
    threshold = 1.1 * max(target, floor)
    reach = {}
    for name, rows in results.items():
        ok = [r["nfe"] for r in rows if r["sw"] <= threshold]
        reach[name] = min(ok) if ok else None
    ode_1e2 = {name: min([r["nfe"] for r in rows if r.get("ode_rms", np.inf) <= 1e-2], default=None)
               for name, rows in results.items() if "ode_rms" in rows[0]}
    summary = {"n": args.n, "sw_noise_floor": floor, "ddpm_1000_sw": target, "threshold": threshold,
               "nfe_to_reach_ddpm_1000": reach, "nfe_to_ode_rms_1e-2": ode_1e2}
    print(json.dumps(summary, indent=1))
    with open(os.path.join(os.path.dirname(__file__), "sampler_error_vs_nfe.json"), "w") as f:
        json.dump({"summary": summary, "results": results}, f, indent=1)
    plot(results, floor, target, args.out)


def plot(results, floor, target, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 5.5))
    styles = {"ddpm": "k-", "ddim": "C0-", "euler_maruyama": "C1:", "reverse_diffusion": "C2:", "pc": "C3:",
              "annealed_langevin": "C4:", "ode_euler": "C5--", "ode_heun": "C6--", "ode_adaptive": "C7--",
              "edm_heun": "C8-", "edm_euler": "C9-.", "edm_stochastic": "C8:", "dpm_solver_1": "C0-.",
              "dpm_solver_2": "C1-.", "dpm_solver_3": "C2-.", "dpm_solver_pp_2m": "C3-"}
    for name, rows in results.items():
        nfe = [r["nfe"] for r in rows]
        a.loglog(nfe, [r["sw"] for r in rows], styles[name], marker="o", ms=3, label=name)
        if "ode_rms" in rows[0]:
            b.loglog(nfe, [r["ode_rms"] for r in rows], styles[name], marker="o", ms=3, label=name)
    a.axhline(floor, color="gray", lw=0.8, label="sampling-noise floor")
    a.axhline(target, color="k", lw=0.8, ls="--", label="DDPM, 1000 steps")
    a.set(xlabel="NFE", ylabel="sliced W2 to the data", title="25-Gaussian mixture, exact score (VP; Langevin: VE)")
    b.set(xlabel="NFE", ylabel="RMS distance to the exact PF-ODE solution", title="deterministic samplers (VP)")
    a.legend(fontsize=7, ncol=2)
    b.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=110)
    print("wrote", out)


if __name__ == "__main__":
    main()
