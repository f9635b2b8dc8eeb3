"""The commands that use the files: bench, compare, predict and web."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.artifacts import DEFAULT_EXPORT_DIR
from toolkit.cli.common import DataDir, _config, _csv, _ints, _outputs, _status, _write_json, out
from toolkit.cli.tables import _bench_progress, _compare_table, _predictions_table, _print_bench
from toolkit.preprocess import MEAN, STD
from toolkit.web import DEFAULT_MODEL, DEFAULT_PORT


def compare(
    a: Annotated[Path, typer.Argument(help="The reference model: .onnx or TorchScript.")],
    b: Annotated[Path, typer.Argument(help="The model judged against A: .onnx or TorchScript.")],
    tolerance: Annotated[Optional[list[str]], typer.Option(
        help="FIELD=VALUE over --judge-as's limits: max_abs_diff, min_agreement, max_accuracy_change (none "
             "switches one off).")] = None,
    judge_as: Annotated[str, typer.Option(
        help="Start from verify's limits for this precision: fp32, fp16, bf16, int8.")] = "fp32",
    compare_as: Annotated[str, typer.Option(
        "--as", help="What |diff| is taken on: auto (same kind as given, else both as probabilities if either is, "
                     "else log-softmax), log_probs, probabilities, raw.")] = "auto",
    mean: Annotated[float, typer.Option(
        help="Foreign files: input = (pixel/255 - mean) / std (uint8 inputs get raw pixels).")] = MEAN,
    std: Annotated[float, typer.Option(help="Foreign files: see --mean.")] = STD,
    layout: Annotated[str, typer.Option(
        help="Foreign files: auto (ONNX: from the input's shape; TorchScript: nchw), nchw [N,1,28,28], nhwc "
             "[N,28,28,1], nhw [N,28,28], flat [N,784]; one for both, or A,B.")] = "auto",
    provider: Annotated[str, typer.Option(help="Device: cpu or cuda.")] = "cpu",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N test images.")] = None,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", help="Write the report as JSON here (- for stdout).")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Run two model files on the MNIST test set and judge B against A like verify; exit 1 if B fails.

    Either may be toolkit-made or not. A TorchScript file is code: loading it runs whatever its author
    wrote, so give only files you trust like a script you would run.
    """
    _outputs(json_path)
    from toolkit.compare import CompareConfig, parse_tolerance
    from toolkit.compare import compare as run_compare
    from toolkit.errors import ConfigError
    from toolkit.runners.foreign import Preprocessing

    layouts = _csv([layout]) or ["auto"]
    if len(layouts) > 2:
        raise ConfigError(f"--layout takes one layout or two (A,B), not {layout!r}")
    prep_a, prep_b = (Preprocessing(mean=mean, std=std, layout=lay) for lay in (layouts[0], layouts[-1]))
    config = CompareConfig(a=str(a), b=str(b), data_dir=str(data_dir), provider=provider, prep_a=prep_a,
                           prep_b=prep_b, as_=compare_as, tolerance=parse_tolerance(_csv(tolerance), judge_as),
                           limit=limit)
    with _status("comparing"):
        report = run_compare(config)
    out.print(_compare_table(report))
    out.print(f"compared {report.compared} on {report.n:,} MNIST test images in {report.seconds:.1f} s",
              highlight=False)
    if json_path:
        _write_json(json_path, report.to_json())
    report.raise_for_failures()


def bench(
    file: Annotated[Optional[Path], typer.Argument(
        help="Time this .onnx alone (toolkit-made or not) instead of the artifacts folder.")] = None,
    runtime: Annotated[Optional[list[str]], typer.Option(
        help="onnxruntime, pytorch, torchscript, openvino, opencv or all (default: every installed one).")] = None,
    provider: Annotated[Optional[list[str]], typer.Option(
        help="cpu, cuda, tensorrt or all (comma list or repeated).")] = None,
    artifacts: Annotated[Path, typer.Option(help="Folder with manifest.json.")] = DEFAULT_EXPORT_DIR,
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="Checkpoint for the PyTorch eager baseline (default: the artifacts' source).")] = None,
    format: Annotated[Optional[list[str]], typer.Option(
        "--format", help="Narrow to these: onnx, onnx-app, torchscript, pytorch.")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(help="Narrow to these precisions.")] = None,
    batch_sizes: Annotated[Optional[list[str]], typer.Option(
        help="The batch ladder for throughput, e.g. 8,64,256 (batch 1 is always timed; with --sweep: exactly "
             "these).")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Timed calls per point (instead of --seconds).")] = None,
    seconds: Annotated[Optional[float], typer.Option(help="Time budget per point, in seconds.")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Untimed calls before each timed block.")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="Interleaved rounds over all configurations.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        help="Intra-op threads on the CPU (default: the runtimes' own).")] = None,
    optimization: Annotated[Optional[list[str]], typer.Option(
        help="ONNX Runtime graph optimization levels to try: all, extended, basic, none (default: all,extended).")
    ] = None,
    concurrency: Annotated[Optional[list[str]], typer.Option(
        help="ONNX Runtime CPU: calls in flight at once to try, e.g. 1,2 (each gets cores/N threads; default: 1,2).")
    ] = None,
    mode: Annotated[Optional[list[str]], typer.Option(
        help="OpenVINO inference precisions: f32, bf16 (bf16 on fp32 files only; default: f32, and bf16 where the "
             "CPU has it natively).")] = None,
    hint: Annotated[Optional[list[str]], typer.Option(
        help="OpenVINO performance hints to try: latency, throughput (default: both).")] = None,
    sweep: Annotated[bool, typer.Option(
        "--sweep", help="Time every combination of the settings above at every batch size, and print every point, "
                        "instead of each runtime and file at the best settings a short search finds.")] = False,
    cuda_graph: Annotated[Optional[bool], typer.Option(
        "--cuda-graph/--no-cuda-graph", help="Also time ONNX Runtime CUDA with CUDA graphs.")] = None,
    verify: Annotated[Optional[bool], typer.Option(
        "--verify/--no-verify",
        help="Check each configuration on the test set first (fastest names verified ones only).")] = None,
    matmul_peak: Annotated[Optional[bool], typer.Option(
        "--matmul-peak/--no-matmul-peak",
        help="Also measure the CPU's float32 and int8 matmul peaks (for the efficiency targets in the JSON).")
    ] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the full results as JSON here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write a markdown table here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of throughput against batch size here.")] = None,
    mean: Annotated[float, typer.Option(
        help="With FILE: input = (pixel/255 - mean) / std for a float image input.")] = MEAN,
    std: Annotated[float, typer.Option(help="With FILE: see --mean.")] = STD,
    layout: Annotated[str, typer.Option(
        help="With FILE: auto, nchw, nhwc, nhw or flat (the image input's layout).")] = "auto",
    shape: Annotated[Optional[list[str]], typer.Option(
        help="With FILE: INPUT=DxD... for an input's dynamic dimensions after the batch.")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """What to deploy here: each runtime and file at its best settings (found by a short search), its batch-1
    latency and most images/s, and the fastest verified configuration for latency and for throughput.

    Every point goes to --json and --markdown; --sweep times every combination of settings instead. With FILE:
    that .onnx alone in ONNX Runtime on the CPU, fed MNIST test images when its input fits an MNIST layout,
    else random data of its declared shapes and types (not verified: there is no reference).
    """
    _outputs(json_path, markdown, plot)
    from toolkit import bench as bench_lib

    config = _config(
        bench_lib.BenchConfig, artifacts=str(artifacts), checkpoint=str(checkpoint) if checkpoint else None,
        data_dir=str(data_dir), runtimes=tuple(_csv(runtime)), providers=tuple(_csv(provider)),
        formats=tuple(_csv(format)), precisions=tuple(_csv(precision)),
        batch_sizes=tuple(_ints(batch_sizes, "batch sizes")), warmup=warmup, iterations=iterations, seconds=seconds,
        rounds=rounds, threads=threads, optimizations=tuple(_csv(optimization)),
        concurrency=tuple(_ints(concurrency, "concurrency")), modes=tuple(_csv(mode)), hints=tuple(_csv(hint)),
        cuda_graph=cuda_graph, sweep=sweep, verify=verify, matmul_peak=matmul_peak)
    with _bench_progress() as on_progress:
        if file is None:
            report = bench_lib.bench(config, on_progress=on_progress)
        else:
            from toolkit.runners.foreign import Preprocessing, parse_shapes

            report = bench_lib.bench_file(config, str(file), Preprocessing(mean=mean, std=std, layout=layout),
                                          parse_shapes(_csv(shape)), on_progress=on_progress)
    _print_bench(report, bench_lib, sweep)
    if json_path:
        _write_json(json_path, report.to_json())
    if markdown:
        from toolkit.fileio import write_bytes

        write_bytes(markdown, bench_lib.markdown_table(report).encode())
    if plot:
        bench_lib.plot(report, plot)


def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files.")],
    model: Annotated[Optional[Path], typer.Option(
        help="A toolkit .onnx (default: exported/model.app.onnx, else exported/model.onnx); checked against the "
             "manifest.json beside it, if any.")] = None,
    invert: Annotated[Optional[bool], typer.Option(
        "--invert/--no-invert", help="Force (or forbid) inverting dark-on-light images; default: detect.")] = None,
    provider: Annotated[str, typer.Option(help="ONNX Runtime provider.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Classify digit images with the exported .onnx alone (ONNX Runtime, numpy and Pillow; no torch)."""
    from toolkit.runtime import predict_files

    if model is None:
        candidates = [Path("exported/model.app.onnx"), Path("exported/model.onnx")]
        model = next((c for c in candidates if c.is_file()), candidates[0])
    predictions = predict_files(images, model, invert=invert, provider=provider)
    if as_json:
        out.print_json(json.dumps([p.__dict__ for p in predictions], allow_nan=False))
        return
    out.print(_predictions_table(predictions, model))


def web(
    model: Annotated[Path, typer.Option(
        help="The app-ready model to serve at /model/model.app.onnx.")] = DEFAULT_MODEL,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = DEFAULT_PORT,
    site: Annotated[Optional[Path], typer.Option(
        help="The page's folder (default: the repository's examples/web).")] = None,
) -> None:
    """Serve the draw-a-digit page on 127.0.0.1 (cross-origin isolated for multi-threaded wasm) until Ctrl-C."""
    from toolkit.web import DEFAULT_SITE, WebConfig, make_server, url

    server = make_server(WebConfig(site=site or DEFAULT_SITE, model=model, port=port))
    out.print(f"serving {model} and the demo page at {url(server)} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
