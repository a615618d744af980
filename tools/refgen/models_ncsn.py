"""Reference outputs of NCSN's CondRefineNetDilated, from the upstream code itself.

Writes ``tests/data/models_ncsn.npz`` for ``tests/test_models_ncsn.py``: random weights drawn
here (in PyTorch, by upstream parameter name), the same weights under diffjax's parameter paths
(the mapping is :func:`diffjax_path`), inputs, and the upstream network's output on them. Nothing
here imports diffjax: the numbers come from upstream alone.

Upstream: https://github.com/ermongroup/ncsn at commit 7f27f4a16471d20a0af3be8b8b4c2ec57c8a0bc1,
``models/cond_refinenet_dilated.py`` (needs only torch):

    git clone https://github.com/ermongroup/ncsn /tmp/ncsn && git -C /tmp/ncsn checkout 7f27f4a
    python tools/refgen/models_ncsn.py --upstream /tmp/ncsn

The weights are drawn so that every part of the network shows in the output: the conditional
instance norm++ tables have per-level scales ``gamma ~ N(1, 0.3)``, mean-mixing ``alpha ~ N(0.5,
0.5)`` and shifts ``beta ~ N(0, 0.3)`` (upstream initialises them to ~1, ~1, 0), so the noise
level, the average pooling of the chained residual pooling and the ELUs all change the result; the
script checks that a max pool, ReLUs or a halved dilation would move the output by more than 1%.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import types

import numpy as np

COMMIT = "7f27f4a16471d20a0af3be8b8b4c2ec57c8a0bc1"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "models_ncsn.npz")
NGF, CHANNELS, LEVELS, SIZE, BATCH = 8, 3, 10, 16, 3


def diffjax_path(name: str) -> tuple[str, bool]:
    """Upstream state-dict name -> (diffjax parameter path, is a conv kernel to transpose)."""
    rules = [
        (r"^begin_conv\.(weight|bias)$", r"begin_conv/conv/\1"),
        (r"^end_conv\.(weight|bias)$", r"end_conv/conv/\1"),
        (r"^normalizer\.embed\.weight$", r"norm_out/embedding"),
        (r"^res(\d)\.(\d)\.normalize(\d)\.embed\.weight$", r"res\1_\2/norm\3/embedding"),
        (r"^res(\d)\.(\d)\.conv(\d)\.(?:conv\.)?(weight|bias)$", r"res\1_\2/conv\3/conv/\4"),
        (r"^res(\d)\.(\d)\.shortcut\.(?:conv\.)?(weight|bias)$", r"res\1_\2/shortcut/conv/\3"),
        (r"^refine(\d)\.adapt_convs\.(\d)\.", r"refine\1/adapt_\2/"),
        (r"^refine(\d)\.output_convs\.", r"refine\1/output/"),
        (r"^refine(\d)\.(msf|crp)\.", r"refine\1/\2/"),
    ]
    path = name
    for pattern, repl in rules:
        path = re.sub(pattern, repl, path)
    # inside RCU / MSF / CRP blocks: "1_2_norm.embed.weight" (1-based) -> "norm_0_1/embedding", ...
    path = re.sub(r"(\d)_(\d)_norm\.embed\.weight$", lambda m: f"norm_{int(m[1]) - 1}_{int(m[2]) - 1}/embedding", path)
    path = re.sub(r"(\d)_(\d)_conv\.weight$", lambda m: f"conv_{int(m[1]) - 1}_{int(m[2]) - 1}/conv/weight", path)
    path = re.sub(r"norms\.(\d)\.embed\.weight$", r"norm_\1/embedding", path)
    path = re.sub(r"convs\.(\d)\.(weight|bias)$", r"conv_\1/conv/\2", path)
    if "." in path:
        raise ValueError(f"no diffjax path for upstream parameter {name!r} (got {path!r})")
    kernel = path.endswith("/weight")
    return path.replace("/weight", "/kernel"), kernel


def build(upstream: str):
    sys.path.insert(0, upstream)
    import torch
    from models import cond_refinenet_dilated as crd

    config = types.SimpleNamespace(
        data=types.SimpleNamespace(logit_transform=False, channels=CHANNELS, image_size=SIZE),
        model=types.SimpleNamespace(ngf=NGF, num_classes=LEVELS))
    return torch, crd, config


def draw_weights(torch, net) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("embed.weight"):
                c = p.shape[1] // 3
                p[:, :c] = 1.0 + 0.3 * torch.randn(p.shape[0], c, generator=gen)
                p[:, c:2 * c] = 0.5 + 0.5 * torch.randn(p.shape[0], c, generator=gen)
                p[:, 2 * c:] = 0.3 * torch.randn(p.shape[0], c, generator=gen)
            elif p.ndim == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help=f"a checkout of ermongroup/ncsn at {COMMIT}")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    torch, crd, config = build(args.upstream)
    torch.manual_seed(0)
    net = crd.CondRefineNetDilated(config).eval()
    draw_weights(torch, net)

    rng = np.random.RandomState(1)
    x = rng.rand(BATCH, CHANNELS, SIZE, SIZE).astype(np.float32)     # data on [0, 1] (logit_transform False)
    levels = np.array([0, 4, 9], np.int64)
    with torch.no_grad():
        out = net(torch.from_numpy(x), torch.from_numpy(levels)).numpy()

    def moved(**patches) -> float:
        """Relative change of the output with upstream pieces swapped out (the bugs looked for)."""
        saved = {k: getattr(crd, k) for k in patches}
        for k, v in patches.items():
            setattr(crd, k, v)
        try:
            other = crd.CondRefineNetDilated(config).eval()
            other.load_state_dict(net.state_dict())
            with torch.no_grad():
                y = other(torch.from_numpy(x), torch.from_numpy(levels)).numpy()
        finally:
            for k, v in saved.items():
                setattr(crd, k, v)
        return float(np.abs(y - out).max() / np.abs(out).max())

    # every bug must move the output by far more than float32 noise; the test tolerance is 1e-4
    assert moved(nn=types.SimpleNamespace(**{**vars(torch.nn), "AvgPool2d": torch.nn.MaxPool2d})) > 0.01
    assert moved(nn=types.SimpleNamespace(**{**vars(torch.nn), "ELU": torch.nn.ReLU})) > 0.01
    half = lambda i, o, dilation, bias=True: torch.nn.Conv2d(i, o, 3, padding=max(dilation // 2, 1),  # noqa: E731
                                                            dilation=max(dilation // 2, 1), bias=bias)
    assert moved(dilated_conv3x3=half) > 0.01

    arrays = {"x": x.transpose(0, 2, 3, 1), "levels": levels.astype(np.int32), "out": out.transpose(0, 2, 3, 1)}
    for name, p in net.state_dict().items():
        path, kernel = diffjax_path(name)
        value = p.numpy()
        arrays["params/" + path] = value.transpose(2, 3, 1, 0) if kernel else value   # OIHW -> HWIO
    np.savez_compressed(args.out, upstream_commit=np.array(COMMIT), **arrays)
    print(f"wrote {args.out}: {len(arrays) - 3} parameters, output std {out.std():.3f}")


if __name__ == "__main__":
    main()
