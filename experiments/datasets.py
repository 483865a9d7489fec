"""Every 2D dataset in one figure, with the metric floors a perfect model would score.

Writes ``<out>/datasets.png`` (2000 points per set), ``<out>/datasets.json`` (entropy where known,
and the floors of MMD, W2 and energy distance between two independent real sets of size
``--floor-n``) and ``<out>/datasets.md`` (the same as a table).

    python experiments/datasets.py            # full: 2000 points, floors at n = 1000
    python experiments/datasets.py --quick    # a few seconds: 500 points, floors at n = 500
"""

import argparse
import json
import time
from pathlib import Path

import jax.random as jr
import matplotlib

matplotlib.use("Agg")

from tqdm import tqdm  # noqa: E402

from diffeqgen import data, metrics, plotting  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"), help="output directory")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=None, help="points per panel (default 2000)")
    parser.add_argument("--floor-n", type=int, default=None, help="set size for metric floors")
    return parser.parse_args(argv)


def dataset_row(name: str, key, floor_n: int) -> dict:
    """Entropy (if known) and metric floors at ``floor_n`` for one dataset."""
    sampler = data.sampler(name)
    mmd_key, w_key, e_key = jr.split(key, 3)
    try:
        entropy = data.entropy(name)
    except ValueError:
        entropy = None
    return {
        "entropy": entropy,
        "mmd_floor": metrics.floor(metrics.mmd, sampler, floor_n, key=mmd_key).value,
        "w2_floor": metrics.floor(metrics.wasserstein, sampler, floor_n, key=w_key),
        "energy_floor": metrics.floor(metrics.energy_distance, sampler, floor_n, key=e_key),
    }


def write_summary(path: Path, rows: dict, n: int, floor_n: int) -> None:
    lines = [
        "# 2D datasets",
        "",
        f"![datasets](datasets.png) ({n} points per panel)",
        "",
        f"Floors: each metric between two independent real sets of {floor_n} points "
        "(MMD: unbiased, RBF, median-heuristic bandwidth; W2 exact; energy distance unbiased).",
        "",
        "| dataset | entropy (nats) | MMD^2 floor | W2 floor | energy floor |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ent = "-" if r["entropy"] is None else f"{r['entropy']:.4f}"
        lines.append(
            f"| {name} | {ent} | {r['mmd_floor']:.2e} | {r['w2_floor']:.3f} "
            f"| {r['energy_floor']:.2e} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    n = args.n or (500 if args.quick else 2000)
    floor_n = args.floor_n or (n if args.quick else 1000)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sample_key, floor_key = jr.split(jr.key(args.seed))
    names = data.names()
    sets, rows = {}, {}
    keys = zip(jr.split(sample_key, len(names)), jr.split(floor_key, len(names)), strict=True)
    for name, (k_sample, k_floor) in tqdm(list(zip(names, keys, strict=True)), desc="datasets"):
        sets[name] = data.sample(name, k_sample, n)
        rows[name] = dataset_row(name, k_floor, floor_n)
    fig = plotting.scatter_grid(sets, ncols=5, s=1.5, alpha=0.6, panel_size=2.0)
    fig.savefig(args.out / "datasets.png", dpi=90)
    record = {"n": n, "floor_n": floor_n, "seed": args.seed, "datasets": rows}
    record["wall_seconds"] = time.perf_counter() - start
    (args.out / "datasets.json").write_text(json.dumps(record, indent=2))
    write_summary(args.out / "datasets.md", rows, n, floor_n)
    print(f"wrote {args.out / 'datasets.png'} in {record['wall_seconds']:.1f} s")


if __name__ == "__main__":
    main()
