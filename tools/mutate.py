"""Mutation testing by hand-picked text substitutions: does each planted bug fail a test?

Every mutation replaces one exact string (it must occur exactly once) in one file of a scratch
copy of the repository (never the working tree), runs the tests named for it there, and records
whether they failed ("killed"), passed ("SURVIVED") or the string was not found ("stale": the code
moved on; update the list). A failure counts as a kill only when the same tests pass unmutated
(else "n/a"). One pytest process at a time, ``-x`` so a kill stops early.

    python tools/mutate.py                     # all mutations, report on stdout
    python tools/mutate.py --only ema_swapped  # one (or several, comma-separated)
    python tools/mutate.py --list

The scratch copy holds the tracked and untracked-but-not-ignored files; it is first on
``PYTHONPATH`` and the tests run from it, so ``import diffjax`` and the tests' subprocesses use the
mutated code.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, file, original text, mutated text, pytest arguments)
MUTATIONS = [
    # schedules
    ("linear_beta_start", "diffjax/schedules.py", "start = 1e-4 * scale", "start = 1e-3 * scale",
     ["tests/test_schedules.py"]),
    ("cosine_offset", "diffjax/schedules.py", "s: float = 0.008", "s: float = 0.08",
     ["tests/test_schedules.py"]),
    ("vp_sigma_sqrt", "diffjax/schedules.py",
     "return jnp.sqrt(-jnp.expm1(2.0 * _vp_log_alpha(t, self.beta_min, self.beta_max)))",
     "return -jnp.expm1(2.0 * _vp_log_alpha(t, self.beta_min, self.beta_max))",
     ["tests/test_schedules.py"]),
    # predictions
    ("eps_to_x0_sign", "diffjax/predictions.py", "return (x - s * output) / a, output",
     "return (x + s * output) / a, output", ["tests/test_predictions.py"]),
    ("v_sign", "diffjax/predictions.py", "return a * eps - s * x0", "return a * eps + s * x0",
     ["tests/test_predictions.py"]),
    ("edm_c_skip", "diffjax/predictions.py", "return sigma_data ** 2 / norm ** 2, sigma * sigma_data / norm",
     "return sigma_data / norm ** 2, sigma * sigma_data / norm",
     ["tests/test_predictions.py", "tests/test_models_precond.py"]),
    # losses
    ("likelihood_weighting", "diffjax/losses.py",
     "err = err * schedule.diffusion_sq(t) / schedule.sigma(t) ** 2",
     "err = err * schedule.diffusion_sq(t) / schedule.sigma(t)", ["tests/test_losses.py"]),
    ("edm_loss_weight", "diffjax/losses.py", "weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2",
     "weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data)", ["tests/test_losses.py"]),
    ("normal_kl_constant", "diffjax/losses.py", "0.5 * (logvar2 - logvar1 - 1.0", "0.5 * (logvar2 - logvar1 + 1.0",
     ["tests/test_losses.py"]),
    # samplers
    ("posterior_variance", "diffjax/samplers/ancestral.py", "beta_tilde=beta * sig_s ** 2 / sig_t ** 2",
     "beta_tilde=beta * sig_s / sig_t ** 2", ["tests/test_samplers.py"]),
    ("learned_variance_swapped", "diffjax/samplers/ancestral.py",
     "log_var = v * jnp.log(jnp.maximum(c[\"beta\"], tiny)) + (1.0 - v) * jnp.log(jnp.maximum(c[\"beta_tilde\"], tiny))",
     "log_var = (1.0 - v) * jnp.log(jnp.maximum(c[\"beta\"], tiny)) + v * jnp.log(jnp.maximum(c[\"beta_tilde\"], tiny))",
     ["tests/test_configs.py", "-k", "learned_variance or mean_half"]),
    ("learned_variance_halves_swapped", "diffjax/samplers/ancestral.py", "pred, r = jnp.split(out, 2, axis=-1)",
     "r, pred = jnp.split(out, 2, axis=-1)", ["tests/test_configs.py", "-k", "learned_variance or mean_half"]),
    ("mean_half_is_variance_half", "diffjax/sampling.py",
     "mean_half = lambda x, t: jnp.split(fn(x, t), 2, axis=-1)[0]",
     "mean_half = lambda x, t: jnp.split(fn(x, t), 2, axis=-1)[1]",
     ["tests/test_configs.py", "-k", "learned_variance or mean_half"]),
    ("ddim_noise_beta", "diffjax/samplers/ancestral.py", "std = eta * jnp.sqrt(c[\"beta_tilde\"])",
     "std = eta * jnp.sqrt(c[\"beta\"])", ["tests/test_samplers.py"]),
    ("langevin_step", "diffjax/samplers/sde.py", "step = 2.0 * alpha *", "step = alpha *",
     ["tests/test_samplers.py", "tests/test_samplers_more.py"]),
    ("euler_maruyama_noise", "diffjax/samplers/sde.py", "schedule.diffusion(t) * jnp.sqrt(dt) * z",
     "schedule.diffusion(t) * dt * z", ["tests/test_samplers.py", "tests/test_samplers_more.py"]),
    ("cfg_weight", "diffjax/samplers/guidance.py", "return (1.0 + w) * cond - w * uncond",
     "return w * cond + (1.0 - w) * uncond", ["tests/test_samplers.py", "tests/test_samplers_more.py"]),
    # models
    ("attention_scale", "diffjax/models/layers.py", "/ math.sqrt(C // self.num_heads)", "/ math.sqrt(C)",
     ["tests/test_models.py", "tests/test_convert_adm.py"]),
    ("attention_uniform", "diffjax/models/layers.py", "w = jax.nn.softmax(logits, axis=-1)",
     "w = jax.nn.softmax(0.0 * logits, axis=-1)", ["tests/test_models.py", "tests/test_convert_adm.py"]),
    ("attention_skip_rescale", "diffjax/models/layers.py", "return y / math.sqrt(2.0) if self.skip_rescale",
     "return y / 2.0 if self.skip_rescale", ["tests/test_models.py"]),
    ("flops_halved", "diffjax/models/__main__.py", "return float(cost.get(\"flops\", float(\"nan\")))",
     "return 0.5 * float(cost.get(\"flops\", float(\"nan\")))", ["tests/test_models.py", "-k", "cli_prints"]),
    ("ncsn_dilation", "diffjax/models/ncsn.py",
     "h = CondResBlock(2 * nf, down=True, dilation=4, name=\"res4_0\", **kw)(layer3, level)",
     "h = CondResBlock(2 * nf, down=True, dilation=2, name=\"res4_0\", **kw)(layer3, level)",
     ["tests/test_models_ncsn.py"]),
    ("ncsn_crp_maxpool", "diffjax/models/ncsn.py",
     "path = nn.avg_pool(path, (5, 5), (1, 1), padding=((2, 2), (2, 2)), count_include_pad=True)",
     "path = nn.max_pool(path, (5, 5), (1, 1), padding=((2, 2), (2, 2)))", ["tests/test_models_ncsn.py"]),
    ("ncsn_output_relu", "diffjax/models/ncsn.py", "h = nn.elu(CondInstanceNormPlus(L, name=\"norm_out\")(ref, level))",
     "h = nn.relu(CondInstanceNormPlus(L, name=\"norm_out\")(ref, level))", ["tests/test_models_ncsn.py"]),
    # likelihood
    ("bpd_offset_uncentered", "diffjax/likelihood.py", "bin_width = (2.0 if centered else 1.0) / 256.0",
     "bin_width = 2.0 / 256.0", ["tests/test_likelihood.py", "tests/test_evaluate.py"]),
    ("dequantize_scale", "diffjax/likelihood.py",
     "x = (images.astype(jnp.float32) + jax.random.uniform(key, images.shape)) / 256.0",
     "x = (images.astype(jnp.float32) + jax.random.uniform(key, images.shape)) / 255.0",
     ["tests/test_likelihood.py", "tests/test_evaluate.py"]),
    # metrics
    ("fid_cross_term", "diffjax/metrics/fid.py",
     "return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)",
     "return float(diff @ diff + np.trace(s1) + np.trace(s2) - tr_covmean)", ["tests/test_metrics.py"]),
    ("fid_cov_ddof", "diffjax/metrics/fid.py", "np.cov(features, rowvar=False)",
     "np.cov(features, rowvar=False, ddof=0)", ["tests/test_metrics.py"]),
    # train
    ("ema_swapped", "diffjax/train.py", "decay * e + (1.0 - decay) * p", "decay * p + (1.0 - decay) * e",
     ["tests/test_optim.py"]),
    ("warmup_off_by_one", "diffjax/train.py", "optim.lr * jnp.minimum(count / optim.warmup_steps, 1.0)",
     "optim.lr * jnp.minimum((count + 1) / optim.warmup_steps, 1.0)", ["tests/test_optim.py"]),
    ("nonfinite_nan", "diffjax/train.py", "nan=0.0, posinf=1e5", "nan=1.0, posinf=1e5",
     ["tests/test_optim.py"]),
    ("grad_clip_dropped", "diffjax/train.py", "chain.append(optax.clip_by_global_norm(optim.grad_clip))",
     "chain.append(optax.identity())", ["tests/test_optim.py"]),
    ("weight_decay_dropped", "diffjax/train.py",
     "optax.adamw(lr, optim.beta1, optim.beta2, optim.eps, weight_decay=optim.weight_decay)",
     "optax.adam(lr, optim.beta1, optim.beta2, optim.eps)", ["tests/test_optim.py"]),
    ("cond_drop_inverted", "diffjax/train.py", "jax.random.uniform(key, y.shape) < p, num_classes, y",
     "jax.random.uniform(key, y.shape) > p, num_classes, y", ["tests/test_train.py", "tests/test_guidance_experiment.py"]),
    # checkpoint
    ("checkpoint_keep", "diffjax/checkpoint.py", "max_to_keep=keep", "max_to_keep=keep + 1",
     ["tests/test_checkpoint.py"]),
    # parallel
    ("fsdp_never_splits", "diffjax/parallel.py", "_MIN_FSDP_SIZE = 2 ** 14", "_MIN_FSDP_SIZE = 2 ** 30",
     ["tests/test_parallel.py"]),
    # evaluation
    ("uncentered_data_not_rescaled", "diffjax/evaluate.py", "x = x if centered else 2.0 * x - 1.0", "x = x",
     ["tests/test_evaluate.py", "-k", "quantised"]),
    ("ode_bpd_always_centered", "diffjax/evaluate.py", "denoise, schedule, images, key, centered=config.data.centered,",
     "denoise, schedule, images, key, centered=True,", ["tests/test_evaluate.py", "-k", "ode_bits"]),
    ("vlb_reports_the_prior", "diffjax/evaluate.py", "return {\"bpd_vlb\": terms.total,",
     "return {\"bpd_vlb\": terms.prior,", ["tests/test_evaluate.py", "-k", "vlb"]),
    ("class_labels_misaligned", "diffjax/evaluate.py",
     "jnp.argmax(outs[\"classifier\"][\"logits\"], -1) == labels))",
     "jnp.argmax(outs[\"classifier\"][\"logits\"], -1) == jnp.roll(labels, 1)))",
     ["tests/test_evaluate.py", "-k", "class_accuracy"]),
    ("mnist_fid_against_itself", "diffjax/evaluate.py",
     "results[\"mnist_fid\"] = fid.frechet_distance(s[\"mu\"], s[\"sigma\"], ref[\"mu\"], ref[\"sigma\"])",
     "results[\"mnist_fid\"] = fid.frechet_distance(s[\"mu\"], s[\"sigma\"], ref[\"mu\"], s[\"sigma\"])",
     ["tests/test_evaluate.py", "-k", "mnist_fid_is"]),
]


def scratch_copy() -> str:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    dest = tempfile.mkdtemp(prefix="diffjax-mutate-")
    for rel in filter(None, files):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    return dest


def run_tests(copy: str, tests: list[str], timeout: float) -> str:
    env = dict(os.environ, PYTHONPATH=copy, JAX_PLATFORMS="cpu")
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    return "pass" if proc.returncode == 0 else f"fail (pytest exit {proc.returncode})"


def run_one(copy: str, path: str, old: str, new: str, tests: list[str], timeout: float,
            baseline: dict) -> tuple[str, float]:
    """Outcome of one mutation. A failure counts as a kill only if the same tests pass without
    the mutation (checked once per test set): a test broken by other work kills nothing."""
    target = os.path.join(copy, path)
    if not os.path.exists(target):
        return "stale", 0.0
    text = open(target).read()
    if text.count(old) != 1:
        return "stale", 0.0
    start = time.time()
    open(target, "w").write(text.replace(old, new))
    try:
        result = run_tests(copy, tests, timeout)
    finally:
        open(target, "w").write(text)
    if result == "pass":
        return "SURVIVED", time.time() - start
    key = tuple(tests)
    if key not in baseline:
        baseline[key] = run_tests(copy, tests, timeout)
    if baseline[key] != "pass":
        return f"n/a (unmutated: {baseline[key]})", time.time() - start
    return "killed" + ("" if result.startswith("fail (pytest exit 1)") else f" ({result})"), time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated mutation names")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per mutation")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m[0] in args.only.split(",")]
    if args.list:
        for name, path, *_ , tests in chosen:
            print(f"{name:32s} {path:34s} {' '.join(tests)}")
        return
    if args.only and len(chosen) != len(args.only.split(",")):
        raise SystemExit(f"unknown mutation in --only={args.only}; see --list")
    copy = scratch_copy()
    results, baseline = [], {}
    try:
        for name, path, old, new, tests in chosen:
            outcome, secs = run_one(copy, path, old, new, tests, args.timeout, baseline)
            results.append((name, outcome))
            print(f"{name:32s} {outcome:24s} {secs:6.0f}s", flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    live = [r for r in results if r[1] != "stale" and not r[1].startswith("n/a")]
    killed = [r for r in live if r[1].startswith("killed")]
    print(f"\nkilled {len(killed)} of {len(live)} applicable mutations"
          f" ({len(results) - len(live)} stale or not testable now); survivors: {[n for n, o in live if o == 'SURVIVED']}")


if __name__ == "__main__":
    main()
