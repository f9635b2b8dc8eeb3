"""What each ingredient of the `fast` and `best` recipes adds, measured on a validation split, never the test set.

The last --holdout images of the MNIST training set (10,000 by default) are kept out of training; every variant
trains on the rest and is scored on them. A variant is its recipe with one ingredient taken out (or changed);
an ingredient pays when taking it out lowers the mean validation accuracy over the seeds. The test set is
evaluated by the trainer as always, but this script records none of it: choosing on it would overfit it.

The `fast in float32` variants train in float32 (as a CPU without native bf16 does) and are compared with
`fast in float32`, the recipe as it runs there: they weigh its whitened first layer, which never learns, against
a learned one, learning throughout or for part of the steps (the wall seconds beside each row;
benchmarks/train_profile.py --no-bf16 times the step alone).

    python benchmarks/recipes.py --data-dir data --out benchmarks/results/recipes.json
    python benchmarks/recipes.py --data-dir data --float32 --out benchmarks/results/recipes_float32.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from toolkit import fileio, sysinfo
from toolkit.recipes import RECIPES, make_config
from toolkit.train import train

NO_AUGMENTATION = dict(rotate=0.0, scale=0.0, shift=0.0, elastic=0.0)
# name -> (recipe, what is changed, whether the change takes an ingredient of the recipe out or adds one it lacks)
VARIANTS: dict[str, tuple[str, dict, str]] = {
    "best": ("best", {}, ""),
    "best without augmentation": ("best", NO_AUGMENTATION, "takes out"),
    "best with elastic distortion (1.5 px)": ("best", dict(elastic=1.5), "adds"),
    "best without label smoothing": ("best", dict(label_smoothing=0.0), "takes out"),
    "best with weight averaging (EMA 0.999)": ("best", dict(ema=0.999), "adds"),
    "best with half the epochs": ("best", dict(epochs=RECIPES["best"]["epochs"] // 2), "takes out"),
    "fast": ("fast", {}, ""),
    "fast without label smoothing": ("fast", dict(label_smoothing=0.0), "takes out"),
    "fast with batch 256": ("fast", dict(batch_size=256), "takes out"),
    "fast with its first layer learned (not whitened)": ("fast", dict(whitened_first_layer=False), "takes out"),
    "fast with SGD (Nesterov, lr 0.1)": ("fast", dict(optimizer="sgd", lr=0.1, nesterov=True, weight_decay=5e-4),
                                         "takes out"),
}
# variants of the recipe as it runs in float32, each compared with the first of them
FLOAT32: dict[str, tuple[str, dict, str]] = {
    "fast in float32": ("fast", dict(bf16=False), ""),
    "fast in float32, first layer learned throughout": ("fast", dict(bf16=False, whitened_first_layer=False),
                                                        "takes out"),
    "fast in float32, first layer learned, frozen after half the steps": (
        "fast", dict(bf16=False, whitened_first_layer=False, float32_first_layer_steps=0.5), "takes out"),
    "fast in float32, first layer as initialized, never learning": (
        "fast", dict(bf16=False, whitened_first_layer=False, float32_first_layer_steps=0.0), "takes out"),
}
VARIANTS.update(FLOAT32)


def _base(name: str, recipe: str) -> str:
    """The variant a variant is compared with: its recipe, or the recipe in float32."""
    return "fast in float32" if name in FLOAT32 else recipe


def run(recipe: str, overrides: dict, seed: int, data_dir: str, holdout: int) -> dict:
    curve = []
    t0 = time.perf_counter()

    def on_epoch(stats, total):
        curve.append({"epoch": stats.epoch, "val_accuracy": stats.val_accuracy,
                      "elapsed_seconds": time.perf_counter() - t0})

    config = make_config(recipe, seed=seed, holdout=holdout, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, data_dir, Path(tmp) / "run", on_epoch=on_epoch)
    return {"seed": seed, "val_accuracy": curve[-1]["val_accuracy"], "wall_seconds": time.perf_counter() - t0,
            "compute": result.compute, "curve": curve}


def summarize(variants: dict) -> dict:
    """Mean validation accuracy of each variant, its difference from the recipe it varies, and the verdict: an
    ingredient the recipe has pays when taking it out loses accuracy; one it lacks pays when adding it gains."""
    means = {name: statistics.mean(r["val_accuracy"] for r in v["runs"]) for name, v in variants.items() if v["runs"]}
    out = {}
    for name, mean in means.items():
        recipe, kind = _base(name, variants[name]["recipe"]), VARIANTS[name][2]
        row = {"mean_val_accuracy": mean, "min_val_accuracy": min(r["val_accuracy"] for r in variants[name]["runs"]),
               "mean_wall_seconds": statistics.mean(r["wall_seconds"] for r in variants[name]["runs"]),
               "seeds": len(variants[name]["runs"]), "change": kind}
        if kind and recipe in means:
            row["recipe_minus_variant"] = means[recipe] - mean  # positive: the recipe as it is does better
            pays = row["recipe_minus_variant"] > 0 if kind == "takes out" else row["recipe_minus_variant"] < 0
            row["verdict"] = {("takes out", True): "the recipe's choice pays",
                              ("takes out", False): "the recipe's choice does not pay",
                              ("adds", True): "would pay", ("adds", False): "does not pay: left out"}[kind, pays]
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--fast-seeds", default="0,1,2", help="the fast variants take seconds: more seeds")
    parser.add_argument("--holdout", type=int, default=10000)
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--float32", action="store_true", help="only the variants of the recipe in float32")
    parser.add_argument("--out", default="benchmarks/results/recipes.json")
    parser.add_argument("--summarize-only", action="store_true", help="recompute the summary of --out's runs")
    args = parser.parse_args()
    if args.summarize_only:
        result = json.loads(Path(args.out).read_text())
        result["summary"] = summarize(result["variants"])
        fileio.write_json(args.out, result)
        return
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    if args.float32:
        names = [n for n in names if n in FLOAT32]

    result = {"benchmark": "recipes", "holdout": args.holdout, "machine": sysinfo.machine(),
              "versions": sysinfo.versions("torch", "numpy"), "torch_threads": torch.get_num_threads(),
              "recipes": {name: RECIPES[name] for name in ("fast", "best")}, "variants": {}}
    for name in names:
        recipe, overrides, _ = VARIANTS[name]
        seeds = args.fast_seeds if recipe == "fast" else args.seeds
        entry = result["variants"].setdefault(name, {"recipe": recipe, "changes": overrides, "runs": []})
        for seed in map(int, seeds.split(",")):
            entry["runs"].append(run(recipe, overrides, seed, args.data_dir, args.holdout))
            print(f"{name}, seed {seed}: validation {entry['runs'][-1]['val_accuracy']:.2f}% "
                  f"in {entry['runs'][-1]['wall_seconds']:.0f} s", flush=True)
            result["summary"] = summarize(result["variants"])
            fileio.write_json(args.out, result)  # after every run: a long benchmark keeps what it measured
    for name, row in result["summary"].items():
        delta = f", recipe minus variant {row['recipe_minus_variant']:+.3f}" if "recipe_minus_variant" in row else ""
        print(f"{name}: mean {row['mean_val_accuracy']:.3f}% (lowest {row['min_val_accuracy']:.2f}%){delta}")


if __name__ == "__main__":
    main()
