"""The registry of paper numbers ``python -m diffjax.reproduce`` reproduces.

Each :class:`Entry` is one published model: the paper and table, the numbers it reports (each
with the place it comes from), the diffjax config that describes its network (a packaged
config name, plus ``overrides`` where the paper's model differs from the packaged experiment,
e.g. the "deep" score_sde models with twice the residual blocks), where the official checkpoint
is published and in which format diffjax's importers read it, the sampler and options the paper
sampled with, the number of samples, and the reference statistics.

Every number below was checked against the paper's text or the authors' README, except where a
``note`` says otherwise. Where a paper reports no number for a model (DDPM's CelebA-HQ), the
entry has none and ``reproduce`` reports diffjax's value alone.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

# Where the numbers and settings come from.
HO_2020 = "Ho, Jain & Abbeel 2020, Denoising Diffusion Probabilistic Models (NeurIPS)"
SONG_2021 = "Song et al. 2021, Score-Based Generative Modeling through Stochastic Differential Equations (ICLR)"
KARRAS_2022 = "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models (NeurIPS)"
DHARIWAL_2021 = "Dhariwal & Nichol 2021, Diffusion Models Beat GANs on Image Synthesis (NeurIPS)"
NICHOL_2021 = "Nichol & Dhariwal 2021, Improved Denoising Diffusion Probabilistic Models (ICML)"
LU_2022 = ("Lu et al. 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in "
           "Around 10 Steps (NeurIPS)")

SCORE_SDE_CHECKPOINTS = "https://drive.google.com/drive/folders/10pQygNzF7hOOLwP3q8GiNxSnFRpArUxQ"
SCORE_SDE_STATS = ("cifar10_stats.npz (key pool_3: Inception features of the training set), "
                   "score_sde's assets/stats, published with its checkpoints")
EDM_CIFAR10_STATS = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz (mu, sigma)"
ADM_IMAGENET64_STATS = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/"
                        "imagenet/64/VIRTUAL_imagenet64_labeled.npz (mu, sigma; arr_0: 10k images)")


@dataclasses.dataclass(frozen=True)
class Reported:
    """One published number: ``metric`` is a ``diffjax.evaluate`` metric name."""
    metric: str
    value: float
    source: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One point of a few-step table: FID at ``nfe`` evaluations with ``sampler``."""
    nfe: int
    sampler: str
    options: dict
    paper: float | None
    source: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    paper: str
    table: str
    reported: tuple[Reported, ...]
    config: str                                # a name in diffjax.configs.names()
    checkpoint_format: str                     # diffjax.convert importer: diffusers, adm, edm, score_sde
    checkpoint_url: str
    sampler: str                               # a name in diffjax.samplers.names()
    sampler_options: dict
    nfe: int                                   # network evaluations per sample of that sampler
    reference: str                             # the reference statistics the paper used
    overrides: dict = dataclasses.field(default_factory=dict)  # dotted config field -> value
    num_samples: int = 50_000
    nfe_sweep: tuple[SweepPoint, ...] = ()
    note: str = ""

    def get_config(self) -> ml_collections.ConfigDict:
        """The packaged config with ``overrides`` applied: the paper's model."""
        import importlib

        module = importlib.import_module("diffjax.configs." + self.config.replace("/", "."))
        config = module.get_config()
        for dotted, value in self.overrides.items():
            *parents, leaf = dotted.split(".")
            node = config
            for name in parents:
                node = node[name]
            node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
        return config


def _score_sde(key, table_name, config, fid, inception_score, bpd, sampler, options, nfe, deep, sweep=()):
    table3 = f"Table 3, '{table_name}'"
    reported = [Reported("fid", fid, f"{SONG_2021}, {table3}"),
                Reported("inception_score", inception_score, f"{SONG_2021}, {table3}")]
    if bpd is not None:
        reported.append(Reported("bpd", bpd, f"{SONG_2021}, Table 2, '{table_name}'",
                                 "probability-flow ODE likelihood of the last training checkpoint "
                                 "(Sec. 4.4), not Table 3's best-FID checkpoint"))
    overrides = {"model.num_res_blocks": 8, "training.num_steps": 950_000} if deep else {}
    return Entry(
        key=key, paper=SONG_2021, table="Tables 2-3", reported=tuple(reported), config=config,
        overrides=overrides, checkpoint_format="score_sde", checkpoint_url=SCORE_SDE_CHECKPOINTS,
        sampler=sampler, sampler_options=options, nfe=nfe,
        reference="CIFAR-10 training set; " + SCORE_SDE_STATS, nfe_sweep=tuple(sweep),
        note=("score_sde README: of a model's two checkpoints the smaller-numbered is Table 3's (best "
              "FID), the larger Table 2's (last)" + ("; App. H.2: 'deep' doubles the residual blocks "
                                                     "per resolution (8), 0.95M iterations" if deep else "")))


# App. H.1-H.2: PC sampling with 1000 steps; VE: reverse-diffusion predictor and one Langevin
# corrector step at snr 0.16; VP / sub-VP continuous models: Euler-Maruyama predictor, no
# corrector ("save the corrector step for VP SDEs"). score_sde finishes with one denoising step.
_VE_PC = {"steps": 1000, "predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16,
          "n_corrector_steps": 1, "denoise": True}
_VP_EM = {"steps": 1000, "denoise": True}
# DPM-Solver's headline CIFAR-10 numbers (abstract; Sec. 6) are for score_sde's continuous-time
# "DDPM++ cont. (deep, VP)" checkpoint, sampled with DPM-Solver-fast (orders 3/2/1 mixed).
_DPM_SWEEP = tuple(
    SweepPoint(nfe, "dpm_solver_pp_2m", {"steps": nfe, "spacing": "logsnr"}, fid,
               f"{LU_2022}, abstract and Sec. 6 (CIFAR-10, continuous-time VP deep checkpoint)",
               "the paper's sampler is DPM-Solver-fast; diffjax runs DPM-Solver++(2M) at the same NFE")
    for nfe, fid in ((10, 4.70), (20, 2.87)))

ENTRIES: dict[str, Entry] = {e.key: e for e in [
    Entry(
        key="ddpm_cifar10", paper=HO_2020, table="Table 1",
        reported=(Reported("fid", 3.17, f"{HO_2020}, Table 1, 'Ours (L_simple)', unconditional CIFAR-10"),
                  Reported("inception_score", 9.46, f"{HO_2020}, Table 1, 'Ours (L_simple)'"),
                  Reported("bpd", 3.75, f"{HO_2020}, Table 1, 'Ours (L_simple)', NLL test <= 3.75",
                           "an upper bound: the variational bound on the test set")),
        config="ddpm/cifar10", checkpoint_format="diffusers",
        checkpoint_url="https://huggingface.co/google/ddpm-cifar10-32",
        sampler="ddpm", sampler_options={"variance": "beta", "clip_denoised": True}, nfe=1000,
        reference="CIFAR-10 training set, 50,000 images (Sec. 4: FID against the training set)",
        note="the checkpoint is diffusers' conversion of the official TF one (github.com/hojonathanho/diffusion)"),
    Entry(
        key="ddpm_celebahq256", paper=HO_2020, table="samples only (Fig. 1, App. D)", reported=(),
        config="ddpm/celebahq256", checkpoint_format="diffusers",
        checkpoint_url="https://huggingface.co/google/ddpm-celebahq-256",
        sampler="ddpm", sampler_options={"variance": "beta_tilde", "clip_denoised": True}, nfe=1000,
        reference="CelebA-HQ 256x256 (TFDS celeb_a_hq/256, manual download), the whole set",
        note="the paper reports no number for CelebA-HQ; diffjax's FID is reported alone"),
    _score_sde("ncsnpp_ve_cifar10", "NCSN++ cont. (VE)", "score_sde/ncsnpp_ve_cifar10", 2.38, 9.83, None,
               "pc", _VE_PC, 2000, deep=False),
    _score_sde("ncsnpp_ve_cifar10_deep", "NCSN++ cont. (deep, VE)", "score_sde/ncsnpp_ve_cifar10", 2.20, 9.89,
               None, "pc", _VE_PC, 2000, deep=True),
    _score_sde("ddpmpp_vp_cifar10", "DDPM++ cont. (VP)", "score_sde/ddpmpp_vp_cifar10", 2.55, 9.58, 3.16,
               "euler_maruyama", _VP_EM, 1000, deep=False),
    _score_sde("ddpmpp_vp_cifar10_deep", "DDPM++ cont. (deep, VP)", "score_sde/ddpmpp_vp_cifar10", 2.41, 9.68,
               3.13, "euler_maruyama", _VP_EM, 1000, deep=True, sweep=_DPM_SWEEP),
    _score_sde("ddpmpp_subvp_cifar10", "DDPM++ cont. (sub-VP)", "score_sde/ddpmpp_subvp_cifar10", 2.61, 9.56,
               3.02, "euler_maruyama", _VP_EM, 1000, deep=False),
    _score_sde("ddpmpp_subvp_cifar10_deep", "DDPM++ cont. (deep, sub-VP)", "score_sde/ddpmpp_subvp_cifar10",
               2.41, 9.57, 2.99, "euler_maruyama", _VP_EM, 1000, deep=True),
    *[Entry(
        key=f"edm_cifar10_{cond}", paper=KARRAS_2022, table="Table 2",
        reported=(Reported("fid", fid, f"{KARRAS_2022}, Table 2, CIFAR-10 {cond}itional, VP, config F, NFE 35"),),
        config=f"edm/cifar10_{cond}", checkpoint_format="edm",
        checkpoint_url=f"https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-{cond}-vp.pkl",
        sampler="edm_heun", sampler_options={"steps": 18, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0},
        nfe=35, reference="CIFAR-10 training set; " + EDM_CIFAR10_STATS,
        note=("diffjax.convert.edm reads the state dict its docstring's snippet extracts from the pickle"
              + ("; it refuses this class-conditional DDPM++ for now (EDM adds the label before the "
                 "embedding MLP, diffjax after)" if cond == "cond" else "")))
      for cond, fid in (("cond", 1.79), ("uncond", 1.97))],
    Entry(
        key="adm_imagenet64", paper=DHARIWAL_2021, table="guided-diffusion README, 'Results'",
        reported=(Reported("fid", 2.07, f"{DHARIWAL_2021}: ImageNet 64x64 class-conditional, no guidance "
                                        "(guided-diffusion README, Results table: FID 2.07; EDM's abstract "
                                        "quotes the same 2.07)", "the paper's table row was not checked offline"),),
        config="improved_ddpm/cifar10",
        overrides={"model": dict(name="adm", prediction="eps", learn_sigma=True, ch=192, ch_mult=(1, 2, 3, 4),
                                 num_res_blocks=3, attn_resolutions=(32, 16, 8), num_head_channels=64,
                                 resblock_updown=True, use_scale_shift_norm=True, dropout=0.1,
                                 num_classes=1000),
                   "schedule": dict(name="ddpm_cosine", T=1000),
                   "data.source": "tfds:imagenet_resized/64x64", "data.image_size": 64,
                   "data.num_classes": 1000},
        checkpoint_format="adm",
        checkpoint_url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_diffusion.pt",
        sampler="ddpm", sampler_options={"steps": 250, "variance": "learned", "clip_denoised": True}, nfe=250,
        reference="ImageNet 64x64 training set; " + ADM_IMAGENET64_STATS,
        note=("network flags: guided-diffusion README's 64x64 MODEL_FLAGS; 250 respaced steps as its "
              "SAMPLE_FLAGS; ADM downsamples ImageNet with its own box filter, TFDS imagenet_resized "
              "with another, so the training-set statistics differ from the published batch")),
    Entry(
        key="iddpm_cifar10", paper=NICHOL_2021, table="CIFAR-10 NLL (table row not checked)",
        reported=(Reported("bpd", 2.94, f"{NICHOL_2021}, CIFAR-10 NLL of the L_vlb model",
                           "quoted from the abstract and secondary sources; the table row was not "
                           "checked against the paper offline"),),
        config="improved_ddpm/cifar10", checkpoint_format="adm",
        checkpoint_url=("https://openaipublic.blob.core.windows.net/diffusion/march-2021/"
                        "cifar10_uncond_vlb_50M_500K.pt"),
        sampler="ddpm", sampler_options={"variance": "learned", "clip_denoised": True}, nfe=4000,
        reference="CIFAR-10 training set",
        note=("improved-diffusion trained it with rescale_timesteps=True, which diffjax.convert.adm "
              "refuses for now; the entry documents the target")),
]}


def names() -> tuple[str, ...]:
    return tuple(sorted(ENTRIES))


def get(key: str) -> Entry:
    if key not in ENTRIES:
        raise KeyError(f"unknown entry {key!r}; entries: {', '.join(names())}")
    return ENTRIES[key]
