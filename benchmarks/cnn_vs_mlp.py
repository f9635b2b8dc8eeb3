"""The notebook's comparison, rerun: ConvNet against an MLP of similar size, validation error per epoch.

Both models train with the notebook's own recipe (`--recipe seed`: SGD lr 0.01, batch 64, 10 epochs) and,
for contrast, with toolkit's default recipe; the MNIST test set serves as the validation set, as in the
notebook. Writes the JSON and a plot of validation error per epoch for every run.

    python benchmarks/cnn_vs_mlp.py --data-dir data --out benchmarks/results/cnn_vs_mlp.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from toolkit import fileio, sysinfo
from toolkit.model import build_model, count_parameters
from toolkit.plots import pyplot, save_figure
from toolkit.recipes import make_config
from toolkit.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/cnn_vs_mlp.json")
    args = parser.parse_args()

    runs = []
    for recipe in ("seed", "fast"):
        for model in ("convnet", "mlp"):
            with tempfile.TemporaryDirectory() as tmp:
                result = train(make_config(recipe, model=model, device=args.device), args.data_dir, Path(tmp) / "run")
            row = {"model": model, "recipe": recipe, "parameters": count_parameters(build_model(model)),
                   "validation_error_per_epoch": [round(100 - e.test_accuracy, 2) for e in result.history],
                   "train_error_per_epoch": [round(100 - e.train_accuracy, 2) for e in result.history],
                   "final_validation_error": round(100 - result.test_accuracy, 2),
                   "train_seconds": round(result.train_seconds, 1), "device": result.device}
            runs.append(row)
            print(f"{model} ({recipe}): validation error {row['final_validation_error']:.2f}% after "
                  f"{len(result.history)} epochs, {row['train_seconds']} s", flush=True)

    out = Path(args.out)
    fileio.write_json(out, {"benchmark": "cnn_vs_mlp", "machine": sysinfo.machine(),
                            "versions": sysinfo.versions("torch"), "runs": runs})
    _plot(runs, out.with_suffix(".png"))


def _plot(runs: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for row in runs:
        errors = row["validation_error_per_epoch"]
        ax.plot(range(1, len(errors) + 1), errors, "o-" if row["recipe"] == "seed" else "s--",
                label=f"{row['model']} ({row['parameters']:,} params), recipe {row['recipe']}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation error (%) on the MNIST test set")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("ConvNet vs MLP of similar size")
    fig.tight_layout()
    save_figure(plt, fig, path)


if __name__ == "__main__":
    main()
