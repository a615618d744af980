"""``python -m diffjax.reproduce ENTRY --workdir=DIR``: a paper's numbers, measured by diffjax.

    python -m diffjax.reproduce --list
    python -m diffjax.reproduce ddpm_cifar10 --workdir=runs/ddpm_cifar10 --checkpoint=ddpm-cifar10-32/
    python -m diffjax.reproduce edm_cifar10_cond --workdir=runs/edm --checkpoint=edm-cifar10-32x32-cond-vp.pkl \\
        --reference_stats=cifar10-32x32.npz
    python -m diffjax.reproduce ddpmpp_vp_cifar10_deep --workdir=runs/vp_deep --nfe_sweep

``ENTRY`` is a key of :mod:`diffjax.papers`. With ``--checkpoint`` the published checkpoint is
first imported into ``DIR`` (``diffjax.convert``; ``--format`` defaults to the entry's). The run
in ``DIR`` must hold the paper's model (same network, schedule and data shape as the entry's
config), else the command stops with one line naming the first difference. Then
``diffjax.evaluate.evaluate`` draws the entry's number of samples (50,000; ``--num_samples``) with
the paper's sampler and options and computes the metrics the paper reports by docs/evaluation.md
(FID / IS against the training-set statistics, or ``--reference_stats``, which may be a file
published by the paper's repository: see ``diffjax.metrics.reference``; bits/dim on the test
split). ``--nfe_sweep`` adds the entry's few-step table (DPM-Solver's FID at 10 and 20 NFE).

The table (metric, paper value, diffjax value, N, NFE, wall time, devices, processes) is printed
and written to ``DIR/reproduce/<entry>.json`` and ``DIR/reproduce/<entry>.md``.
"""
from __future__ import annotations

import argparse
import json
import re
from typing import Any, Sequence

from diffjax import fileio, papers
from diffjax.convert import MODULES
from diffjax.metrics import reference

# The fields that make two configs the same model.
_DATA_FIELDS = ("image_size", "num_channels", "num_classes", "centered")


# ---------------------------------------------------------------------------- the run directory

def import_checkpoint(path: str, workdir: str, fmt: str) -> str:
    """Import a published checkpoint into the run directory ``workdir`` (``diffjax.convert``)."""
    from diffjax import convert

    try:
        return convert.convert(path, workdir, fmt)
    except ModuleNotFoundError as e:
        if e.name != f"diffjax.convert.{convert.MODULES.get(fmt)}":
            raise
        raise ValueError(f"diffjax has no importer for {fmt!r} checkpoints yet") from None


def run_config(workdir: str) -> tuple[Any, int]:
    """The config and step of the latest checkpoint in ``workdir`` (parameters not read)."""
    from diffjax import checkpoint
    from diffjax.sampling import config_from_dict

    ckpt = checkpoint.Checkpointer(fileio.join(workdir, "checkpoints"), asynchronous=False)
    step = ckpt.latest_step()
    if step is None:
        ckpt.close()
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; import the published one "
                                "with --checkpoint=PATH, or train one with python -m diffjax.train")
    saved = ckpt.saved_config(step)
    ckpt.close()
    return config_from_dict(saved), step


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def differences(expected: Any, actual: Any) -> list[str]:
    """Where the run's config is not the paper's model: the network fields both configs set, the
    schedule, and the data shape."""
    fields = [("model", k) for k in expected.model] + [("schedule", k) for k in expected.schedule]
    fields += [("data", k) for k in _DATA_FIELDS]
    found = []
    for section, key in fields:
        want, have = expected[section].get(key), actual[section].get(key)
        if want is not None and have is not None and _plain(want) != _plain(have):
            found.append(f"{section}.{key} is {have!r} there, {want!r} in the paper's model")
    return found


def check_model(entry: papers.Entry, config: Any, workdir: str) -> None:
    found = differences(entry.get_config(), config)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ValueError(f"the checkpoint in {workdir} is not the model of {entry.key} "
                         f"({entry.config}): {found[0]}{more}")


# ---------------------------------------------------------------------------- measuring

def _row(label: str, metric: str, paper: float | None, source: str, note: str, results: dict,
         sampler: str | None, options: dict | None) -> dict:
    """One line of the table from what ``diffjax.evaluate.evaluate`` returned: for a sample
    metric N is the number of samples and NFE the sampler's evaluations per sample, for bits/dim
    N is the number of test examples."""
    sampled = sampler is not None
    return {
        "label": label, "metric": metric, "paper": paper, "diffjax": results[metric],
        "num_samples": results["num_samples"] if sampled else results["bpd_num_examples"],
        "nfe": results["nfe"] if sampled else None, "wall_time_s": results["wall_time_s"],
        "num_devices": results["num_devices"], "num_processes": results["num_processes"],
        "sampler": sampler, "sampler_options": options, "source": source, "note": note, "step": results["step"],
    }


def reproduce(entry: papers.Entry, workdir: str, *, num_samples: int | None = None,
              metrics: Sequence[str] | None = None, nfe_sweep: bool = False, seed: int | None = None,
              inception: str | None = None, reference_stats: str | None = None,
              bpd_num_examples: int | None = None) -> list[dict]:
    """Measure ``entry``'s numbers on the run in ``workdir``; returns the table's rows."""
    from diffjax import evaluate

    config, _ = run_config(workdir)
    check_model(entry, config, workdir)
    if nfe_sweep and not entry.nfe_sweep:
        with_sweep = [k for k in papers.names() if papers.get(k).nfe_sweep]
        raise ValueError(f"{entry.key} has no few-step table; entries with one: {', '.join(with_sweep)}")
    if reference_stats:
        reference_stats = reference.as_diffjax(reference_stats, fileio.join(workdir, "reproduce"))
    targets = {r.metric: (r.value, r.source, r.note or entry.note) for r in entry.reported} or {
        "fid": (None, "the paper reports no number for this model", entry.note)}
    unknown = sorted(set(metrics or ()) - set(targets))
    if unknown:
        raise ValueError(f"{entry.key} reports no {', '.join(unknown)}; its metrics: {', '.join(targets)}")

    common = {"num_samples": num_samples or entry.num_samples, "seed": seed, "inception": inception,
              "reference_stats": reference_stats, "bpd_num_examples": bpd_num_examples}
    wanted = [m for m in targets if not metrics or m in metrics]
    rows = []
    for group in (evaluate.SAMPLE_METRICS, evaluate.DATA_METRICS):
        group = tuple(m for m in wanted if m in group)
        if not group:
            continue
        sampler = (entry.sampler, entry.sampler_options) if group[0] in evaluate.SAMPLE_METRICS else (None, None)
        results = evaluate.evaluate(workdir, {**common, "metrics": group, "sampler": sampler[0],
                                              "sampler_options": sampler[1]})
        rows += [_row(m, m, *targets[m], results, *sampler) for m in group]
    for point in entry.nfe_sweep if nfe_sweep else ():
        results = evaluate.evaluate(workdir, {**common, "metrics": ("fid",), "sampler": point.sampler,
                                              "sampler_options": point.options})
        rows.append(_row(f"fid (NFE {point.nfe}, {point.sampler})", "fid", point.paper, point.source,
                         point.note, results, point.sampler, point.options))
    return rows


# ---------------------------------------------------------------------------- the table

def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    return str(value)


def _short(paper: str) -> str:
    """'Ho, Jain & Abbeel 2020, Denoising ...' -> 'Ho, Jain & Abbeel 2020'."""
    match = re.match(r".*?\d{4}", paper)
    return match.group(0) if match else paper


def markdown(entry: papers.Entry, workdir: str, rows: list[dict]) -> str:
    lines = [f"# {entry.key}: {_short(entry.paper)}, {entry.table}", "",
             f"Run: `{workdir}` (step {rows[0]['step'] if rows else '-'}), config `{entry.config}`"
             + (f" with {entry.overrides}" if entry.overrides else "") + ".", "",
             "| metric | paper | diffjax | N | NFE | wall time (s) | devices | processes | sampler |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        sampler = f"{row['sampler']} {row['sampler_options']}" if row["sampler"] else "-"
        lines.append(f"| {row['label']} | {_fmt(row['paper'])} | {_fmt(row['diffjax'], 3)} | "
                     f"{_fmt(row['num_samples'])} | {_fmt(row['nfe'])} | {_fmt(row['wall_time_s'], 1)} | "
                     f"{_fmt(row['num_devices'])} | {_fmt(row['num_processes'])} | {sampler} |")
    lines += ["", "Sources:"]
    lines += [f"- {row['label']}: {row['source']}" + (f" ({row['note']})" if row["note"] else "") for row in rows]
    return "\n".join(lines) + "\n"


def write(entry: papers.Entry, workdir: str, rows: list[dict], reference_stats: str | None) -> dict[str, str]:
    out_dir = fileio.join(workdir, "reproduce")
    fileio.makedirs(out_dir)
    paths = {"json": fileio.join(out_dir, f"{entry.key}.json"), "md": fileio.join(out_dir, f"{entry.key}.md")}
    record = {"entry": entry.key, "paper": entry.paper, "table": entry.table, "config": entry.config,
              "overrides": entry.overrides, "checkpoint_url": entry.checkpoint_url, "workdir": workdir,
              "reference_stats": reference_stats or "training split (docs/evaluation.md)", "rows": rows}
    fileio.write_atomic(paths["json"], json.dumps(record, indent=1, default=str))
    fileio.write_atomic(paths["md"], markdown(entry, workdir, rows))
    return paths


def listing() -> str:
    """Every entry: paper, table, numbers, sampler and checkpoint location (``--list``)."""
    lines = ["| entry | paper, table | reported | config | sampler (NFE) | checkpoint |", "|---|---|---|---|---|---|"]
    for key in papers.names():
        e = papers.get(key)
        numbers = ", ".join(f"{r.metric} {r.value:g}" for r in e.reported) or "none (samples only)"
        if e.nfe_sweep:
            numbers += "; " + ", ".join(f"fid {p.paper:g} at NFE {p.nfe}" for p in e.nfe_sweep)
        config = e.config + (" + " + ", ".join(sorted(e.overrides)) if e.overrides else "")
        lines.append(f"| {key} | {_short(e.paper)}, {e.table} | {numbers} | {config} | "
                     f"{e.sampler} {e.sampler_options} ({e.nfe}) | {e.checkpoint_format}: {e.checkpoint_url} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffjax.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("entry", nargs="?", help="a diffjax.papers entry (see --list)")
    parser.add_argument("--list", action="store_true", help="list the entries and exit")
    parser.add_argument("--workdir", help="the run directory (written by --checkpoint or diffjax.train)")
    parser.add_argument("--checkpoint", help="a published checkpoint to import into --workdir first")
    parser.add_argument("--format", choices=sorted(MODULES), help="its format (default: the entry's)")
    parser.add_argument("--num_samples", type=int, help="samples for FID / IS (default: the entry's, 50,000)")
    parser.add_argument("--metrics", help="comma-separated subset of the entry's metrics")
    parser.add_argument("--nfe_sweep", action="store_true", help="also the entry's few-step FID table")
    parser.add_argument("--seed", type=int, help="sampling seed (default: the config's, 0)")
    parser.add_argument("--inception", help="FID Inception weights (.pth or .npz)")
    parser.add_argument("--reference_stats", help="reference statistics: diffjax's or a published file")
    parser.add_argument("--bpd_num_examples", type=int, help="bits/dim on the first N test examples")
    args = parser.parse_args(argv)
    if args.list:
        print(listing())
        return
    if not args.entry:
        parser.error("name an entry (python -m diffjax.reproduce --list shows them)")
    if args.entry not in papers.ENTRIES:
        raise SystemExit(f"error: unknown entry {args.entry!r}; entries: {', '.join(papers.names())}")
    if not args.workdir:
        parser.error("--workdir is required")
    entry = papers.get(args.entry)
    try:
        if args.checkpoint:
            import_checkpoint(args.checkpoint, args.workdir, args.format or entry.checkpoint_format)
        rows = reproduce(entry, args.workdir, num_samples=args.num_samples,
                         metrics=args.metrics.split(",") if args.metrics else None, nfe_sweep=args.nfe_sweep,
                         seed=args.seed, inception=args.inception, reference_stats=args.reference_stats,
                         bpd_num_examples=args.bpd_num_examples)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {reference.one_line(e)}")
    paths = write(entry, args.workdir, rows, args.reference_stats)
    print(markdown(entry, args.workdir, rows) + f"\nwrote {paths['json']} and {paths['md']}")


if __name__ == "__main__":
    main()
