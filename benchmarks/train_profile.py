"""Where one training epoch's time goes, and what the step's two speed-ups buy, measured in one run.

1. Phases of one epoch of a recipe (default `fast`), each timed on its own: data loading, batch shuffling and
   gathering, augmentation, forward, loss, backward, optimizer (with schedule and weight averaging), evaluation
   of the test set. On a CPU each operation finishes before the next starts, so the clock splits them cleanly.
2. The operators that take the time (torch.profiler over 50 steps).
3. The step's achieved GFLOP/s against this CPU's bf16 (or float32) matrix-multiply peak.
4. Step time of the changes made after this profile, against what they replaced, alternated in rounds:
   pooling before ReLU (the notebook's order was ReLU then pool: same values, same gradients) and the fused
   AdamW kernel (against the default multi-tensor one).
5. The step's choices, one changed at a time against the recipe's step, alternated in rounds, as seconds of
   training steps per epoch of 60,000 images: memory format (channels_last or contiguous), oneDNN or native
   convolution, batch size, intra-op threads (one, and where the CPUs outnumber torch's default of one thread
   per physical core, as with hyperthreads, all of them), AdamW kernel, and the first layer whitened (never
   trained) or learned.

`--no-bf16` profiles the float32 step (what a CPU without AVX512-BF16/AMX runs) on any CPU.

    python benchmarks/train_profile.py --data-dir data --out benchmarks/results/train_profile.json
    python benchmarks/train_profile.py --data-dir data --no-bf16 --out benchmarks/results/train_profile_float32.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from toolkit import data as mnist
from toolkit import fileio, heap, sysinfo
from toolkit.augment import distort
from toolkit.bench import matmul_peak_gflops
from toolkit.model import ConvNet, layer_flops
from toolkit.preprocess import BACKGROUND
from toolkit.recipes import make_config
from toolkit.train import bf16_supported, evaluate
from toolkit.train_step import Step, build_training, first_layer, frozen_from, training_loss


class ReluThenPool(ConvNet):
    """The notebook's order of operations, for comparison only."""

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc_layer1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc_layer2(x), dim=1)


def phases(config, data_dir: str) -> dict:
    """Seconds per phase of one epoch of `config`, run the way `toolkit.train` runs it."""
    clock = {}

    def timed(name, fn, *args):
        t = time.perf_counter()
        value = fn(*args)
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - t
        return value

    def load():
        train_x, train_y = mnist.load_split(data_dir, "train")
        test_x, test_y = mnist.load_split(data_dir, "test")
        return (mnist.to_tensor(train_x, "cpu", config.channels_last), torch.from_numpy(train_y),
                mnist.to_tensor(test_x, "cpu", config.channels_last), torch.from_numpy(test_y))

    X, Y, X_test, Y_test = timed("data loading", load)
    steps = math.ceil(len(X) / config.batch_size)
    model, optimizer, scheduler, average = timed("model and optimizer set-up", build_training, config, "cpu", steps,
                                                 X)
    use_bf16 = config.bf16 and bf16_supported("cpu")
    freeze = frozen_from(config, steps, use_bf16)
    rng, shuffle = torch.Generator().manual_seed(1), torch.Generator().manual_seed(0)
    t_epoch = time.perf_counter()  # the epoch as `toolkit.train` times it: from shuffling to evaluation
    order = timed("shuffling and batch gathering", lambda: torch.randperm(len(X), generator=shuffle))
    model.train()
    for i, start in enumerate(range(0, len(X), config.batch_size)):
        if i == freeze:
            first_layer(model).requires_grad_(False)
        x, y = timed("shuffling and batch gathering", lambda: (X[order[start:start + config.batch_size]],
                                                              Y[order[start:start + config.batch_size]]))
        if config.distortion.active:
            x = timed("augmentation", lambda: distort(x, config.distortion, rng, BACKGROUND)
                      .contiguous(memory_format=torch.channels_last))

        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                return model(x).float()
        out = timed("forward", forward)
        loss = timed("loss", training_loss, out, y, config.label_smoothing)
        timed("backward", lambda: (optimizer.zero_grad(set_to_none=True), loss.backward()))

        def update():
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if average is not None:
                average.update_parameters(model)
        timed("optimizer step", update)
    timed("evaluation (10,000 test images)", evaluate, average.module if average else model, X_test, Y_test,
          config.eval_batch_size)
    epoch = time.perf_counter() - t_epoch
    return {"phases_seconds": clock, "epoch_seconds": epoch, "steps": steps, "bf16": use_bf16,
            "first_layer_frozen_from_step": freeze}


def operator_table(config, steps: int = 50) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    x, y = _batch(config)
    # a whitened first layer is set from this random batch here: the weights' values do not change a step's time
    model, optimizer, scheduler, average = build_training(config, "cpu", 10_000, x)
    step = Step(config, model, optimizer, scheduler, average, torch.Generator(), config.bf16 and bf16_supported("cpu"))
    for _ in range(10):
        step(x, y)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step(x, y)
    rows = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [{"operator": e.key, "input_shapes": str(e.input_shapes)[:120], "self_ms_per_step": e.self_cpu_time_total
             / 1000 / steps, "share": e.self_cpu_time_total / total} for e in rows[:12]]


def _batch(config):
    """A random batch of the recipe's size and memory format."""
    x = torch.randn(config.batch_size, 1, 28, 28)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (config.batch_size,))


def compare_steps(config, rounds: int, steps: int) -> dict:
    """Median step time of each variant; variants alternate within each round, so drift hits all alike."""
    x, y = _batch(config)
    bf16 = config.bf16 and bf16_supported("cpu")

    def variant(model_cls, fused):
        """The trainer's own step, on this model class and AdamW kernel, without schedule or augmentation."""
        model = model_cls().to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=fused)
        step = Step(dataclasses.replace(config, rotate=0.0, scale=0.0, shift=0.0, elastic=0.0), model, optimizer,
                     None, None, None, bf16)
        return lambda: step(x, y)

    variants = {"relu then pool, multi-tensor AdamW (before)": variant(ReluThenPool, False),
                "pool then relu, multi-tensor AdamW": variant(ConvNet, False),
                "relu then pool, fused AdamW": variant(ReluThenPool, True),
                "pool then relu, fused AdamW (now)": variant(ConvNet, True)}
    times = {name: [] for name in variants}
    for step in variants.values():
        for _ in range(5):
            step()
    for _ in range(rounds):
        for name, step in variants.items():
            t = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - t) / steps * 1000)
    medians = {name: statistics.median(v) for name, v in times.items()}
    before = medians["relu then pool, multi-tensor AdamW (before)"]
    return {"batch_size": config.batch_size, "rounds": rounds, "steps_per_round": steps,
            "median_ms_per_step": medians, "ms_per_step_each_round": times,
            "speedup_vs_before": {name: before / m for name, m in medians.items()}}


def step_choices(config, rounds: int, images: int = 2560) -> dict:
    """Seconds of training steps per 60,000 images for the recipe's step and for each choice changed alone,
    alternated in rounds; `images` per variant per round."""
    bf16 = config.bf16 and bf16_supported("cpu")
    threads = torch.get_num_threads()  # torch's default: one per physical core
    usable = sysinfo.usable_cores()  # more where each core has two hyperthreads

    def variant(*, batch_size=config.batch_size, channels_last=config.channels_last, mkldnn=True,
                num_threads=threads, fused=True, whitened=config.whitened_first_layer):
        changed = dataclasses.replace(config, batch_size=batch_size, channels_last=channels_last, rotate=0.0,
                                      scale=0.0, shift=0.0, elastic=0.0, whitened_first_layer=whitened)
        x, y = _batch(changed)
        model, _, _, _ = build_training(changed, "cpu", 10_000, x)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=fused,
                                      foreach=None if fused else True)
        step = Step(changed, model, optimizer, None, None, None, bf16)

        def run():
            torch.set_num_threads(num_threads)
            with torch.backends.mkldnn.flags(enabled=mkldnn):
                for _ in range(max(1, images // batch_size)):
                    step(x, y)
            torch.set_num_threads(threads)
        return run, max(1, images // batch_size) * batch_size

    variants = {"recipe step": variant(),
                "contiguous (not channels_last)" if config.channels_last else "channels_last":
                    variant(channels_last=not config.channels_last),
                "native convolution (oneDNN off)": variant(mkldnn=False),
                **{f"batch {b}": variant(batch_size=b) for b in (64, 256, 512) if b != config.batch_size},
                **({"1 thread": variant(num_threads=1)} if threads > 1 else {}),
                **({f"{usable} threads (every CPU, hyperthreads too)": variant(num_threads=usable)}
                   if usable > threads else {}),
                "multi-tensor AdamW (not fused)": variant(fused=False),
                "first layer learned (not whitened)" if config.whitened_first_layer else
                "first layer whitened (never trained)": variant(whitened=not config.whitened_first_layer)}
    seconds = {name: [] for name in variants}
    for run, _ in variants.values():
        run()
    for _ in range(rounds):
        for name, (run, n) in variants.items():
            t = time.perf_counter()
            run()
            seconds[name].append((time.perf_counter() - t) / n * 60_000)
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    return {"compute": "bfloat16" if bf16 else "float32", "threads": threads, "rounds": rounds,
            "images_per_round": images, "median_step_seconds_per_epoch": medians,
            "step_seconds_per_epoch_each_round": seconds,
            "time_vs_recipe_step": {name: m / medians["recipe step"] for name, m in medians.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-bf16", action="store_true", help="profile the float32 step even where bf16 is native")
    parser.add_argument("--out", default="benchmarks/results/train_profile.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = make_config(args.recipe, device="cpu", bf16=False if args.no_bf16 else None)
    heap.keep_freed_memory()  # as `toolkit train` does on the CPU

    load_before = os.getloadavg()  # the machine may be shared: its load is part of the result
    epoch = phases(config, args.data_dir)
    ops = operator_table(config)
    comparison = compare_steps(config, args.rounds, steps=20)
    choices = step_choices(config, args.rounds)
    bf16 = epoch["bf16"]
    peak = matmul_peak_gflops(torch.bfloat16 if bf16 else torch.float32)
    # a training step costs about three forward passes (backward: gradients for inputs and weights), less the
    # first convolution's input gradient, which nobody needs
    flops = layer_flops(ConvNet())
    train_flops = 3 * sum(flops.values()) - flops["conv1"]
    step_s = comparison["median_ms_per_step"]["pool then relu, fused AdamW (now)"] / 1000
    achieved = train_flops * config.batch_size / step_s / 1e9
    result = {"benchmark": "train_profile", "recipe": args.recipe, "compute": "bfloat16" if bf16 else "float32",
              "config": dataclasses.asdict(config), "machine": sysinfo.machine(),
              "versions": sysinfo.versions("torch", "numpy"), "torch_threads": torch.get_num_threads(),
              "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
              "epoch": epoch, "top_operators": ops, "step_comparison": comparison, "step_choices": choices,
              "efficiency": {"train_mflop_per_image": train_flops / 1e6, "step_gflops": achieved,
                             "matmul_peak_gflops": peak, "peak_dtype": "bfloat16" if bf16 else "float32",
                             "fraction_of_peak": achieved / peak}}
    fileio.write_json(args.out, result)
    total = sum(epoch["phases_seconds"].values())
    for name, seconds in sorted(epoch["phases_seconds"].items(), key=lambda kv: -kv[1]):
        print(f"{name:34s} {seconds:6.2f} s  {100 * seconds / total:5.1f}%")
    print(json.dumps({k: v for k, v in comparison.items() if k != "ms_per_step_each_round"}, indent=2))
    print(json.dumps(result["efficiency"], indent=2))
    print(json.dumps(choices["median_step_seconds_per_epoch"], indent=2))


if __name__ == "__main__":
    main()
