"""The commands that use the files: bench, compare, predict and web."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.artifacts import DEFAULT_EXPORT_DIR
from toolkit.bench.config import BenchConfig
from toolkit.cli.common import (
    RUNTIME_NAMES,
    DataDir,
    DeviceOption,
    JsonOption,
    TimeLimit,
    _config,
    _csv,
    _ints,
    _outputs,
    _path,
    _print_result,
    _state,
    _write_json,
    defaults,
    export_inputs,
    given,
    openvino_options,
    out,
)
from toolkit.cli.progress import stage
from toolkit.cli.tables import (
    _compare_many_table,
    _compare_table,
    _predictions_table,
    _print_bench,
    _print_compared_on,
)
from toolkit.devices import CPU
from toolkit.formats import FORMATS
from toolkit.metadata import MAX_ABS_MEAN, MAX_STD, MIN_STD
from toolkit.preprocess import MEAN, STD
from toolkit.runners.base import DEFAULT_TIME_LIMIT_S
from toolkit.web import DEFAULT_MODEL, DEFAULT_PORT

MEAN_STD_RANGES = f"mean in [{-MAX_ABS_MEAN:g}, {MAX_ABS_MEAN:g}], std in [{MIN_STD:g}, {MAX_STD:g}]"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


BENCH = defaults(BenchConfig)


def compare(
    ctx: typer.Context,
    a: Annotated[Path, typer.Argument(
        parser=_path, metavar="A",
        help="The reference model: .onnx, TorchScript, .pt2, .aoti.pt2, or a toolkit IR .xml, .pte or .tflite.")],
    b: Annotated[Path, typer.Argument(parser=_path, metavar="B", help="The model judged against A: like A.")],
    more: Annotated[Optional[list[Path]], typer.Argument(
        parser=_path, metavar="C", show_default=False, help="Further models, each judged against A like B.")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(
        metavar="FIELD=VALUE", help="Over --judge-as's limits: max_abs_diff, min_agreement, max_accuracy_change (none "
             "switches off max_abs_diff or max_accuracy_change).")] = None,
    judge_as: Annotated[str, typer.Option(
        metavar="PRECISION", help="Start from verify's limits for this precision: fp32, fp16, bf16, int8.")] = "fp32",
    compare_as: Annotated[str, typer.Option(
        "--as", metavar="KIND",
        help="What |diff| is taken on: auto (same kind as given, else both as probabilities if either is, "
             "else log-softmax), log_probs, probabilities, raw.")] = "auto",
    mean: Annotated[float, typer.Option(
        metavar="MEAN", help=f"Foreign files: input = (pixel/255 - mean) / std (integer inputs get raw pixels); "
                             f"{MEAN_STD_RANGES}. Refused, as --std, --layout and --shape are, where no file "
                             "takes it.")] = MEAN,
    std: Annotated[float, typer.Option(metavar="STD", help="Foreign files: see --mean.")] = STD,
    layout: Annotated[str, typer.Option(
        metavar="LAYOUT",
        help="Foreign files: auto (ONNX: from the input's shape; torch files: nchw), nchw [N,1,28,28], nhwc "
             "[N,28,28,1], nhw [N,28,28], flat [N,784]; one for all files, or A,B (B's for every file after A; "
             "either, unless auto, refused where its own files take no layout).")
    ] = "auto",
    shape: Annotated[Optional[list[str]], typer.Option(
        metavar="INPUT=DIMS", help="A foreign .onnx fed random data: an input's dynamic dimensions after the "
                                   "batch, e.g. x=3x16.")] = None,
    provider: DeviceOption = CPU,
    limit: Annotated[Optional[int], typer.Option(
        metavar="N", show_default="all 10,000", help="Only the first N test images.")] = None,
    json_path: JsonOption = None,
    time_limit: TimeLimit = DEFAULT_TIME_LIMIT_S,
    data_dir: DataDir = Path("data"),
) -> None:
    """Run model files on the MNIST test set and judge B (and each further file) against A like verify; exit 1 if
    any fails. A runs once; with more than two files, one table holds every file's verdict.

    Any may be toolkit-made or not. TorchScript, torch.export (.pt2) and AOTInductor (.aoti.pt2, a compiled
    shared library) files are code: loading one runs whatever its author put in it, so give only files you
    trust like a script you would run.
    """
    _outputs(json_path, inputs=(a, b, *(more or ())))
    from toolkit.compare import CompareConfig, compare_all, parse_tolerance, raise_for_failures, reports_json
    from toolkit.errors import ConfigError
    from toolkit.runners.feeding import Preprocessing, parse_shapes

    layouts = _csv([layout]) or ["auto"]
    if len(layouts) > 2:
        raise ConfigError(f"--layout takes one layout or two (A,B), not {layout!r}")
    prep_a, prep_b = (Preprocessing(mean=mean, std=std, layout=lay) for lay in (layouts[0], layouts[-1]))
    config = CompareConfig(a=str(a), b=str(b), data_dir=str(data_dir), provider=provider, prep_a=prep_a,
                           prep_b=prep_b, as_=compare_as, tolerance=parse_tolerance(_csv(tolerance), judge_as),
                           limit=limit, time_limit_s=time_limit, more=tuple(str(m) for m in more or ()),
                           shapes=parse_shapes(_csv(shape)), options_given=_file_options(ctx),
                           layout_per_file=len(layouts) == 2)
    with stage("comparing") as on_progress:  # counts the images run, A's then the others'
        reports = compare_all(config, on_progress)
    report = reports[0]
    out.print(_compare_table(report) if len(reports) == 1 else _compare_many_table(reports))
    on = report.inputs if report.inputs == "MNIST test images" else f"{report.inputs} (no accuracy: not MNIST)"
    compared = ", ".join(dict.fromkeys(r.compared for r in reports))
    out.print(f"compared {compared} on {report.n:,} {on} in {reports[-1].seconds:.1f} s", highlight=False)
    _print_compared_on(reports)
    if json_path:
        _write_json(json_path, reports_json(reports))
    raise_for_failures(reports)


def bench(
    ctx: typer.Context,
    files: Annotated[Optional[list[Path]], typer.Argument(
        parser=_path, metavar="FILE", show_default=False,
        help="Time these model files alone (any .onnx, TorchScript, .pt2 or .aoti.pt2; a toolkit .pte, .tflite or IR "
             ".xml), each in every runtime that opens it, instead of the artifacts folder.")] = None,
    runtime: Annotated[Optional[list[str]], typer.Option(
        metavar="RUNTIMES", show_default="every installed one",
        help=f"{', '.join(RUNTIME_NAMES)} or all.")] = None,
    provider: Annotated[Optional[list[str]], typer.Option(
        "--device", "--provider", metavar="DEVICES",
        help="cpu, cuda, tensorrt or all (comma list or repeated).")] = BENCH["providers"],
    artifacts: Annotated[Path, typer.Option(
        parser=_path, metavar="FOLDER", help="Folder with manifest.json.")] = DEFAULT_EXPORT_DIR,
    checkpoint: Annotated[Optional[Path], typer.Option(
        parser=_path, metavar="PATH", show_default="the artifacts' source",
        help="Checkpoint for the PyTorch eager baseline.")] = None,
    format: Annotated[Optional[list[str]], typer.Option(
        "--format", metavar="FORMATS", show_default="all",
        help=f"Narrow to these: {', '.join(FORMATS)}, pytorch.")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(
        metavar="PRECISIONS", show_default="all", help="Narrow to these precisions.")] = None,
    batch_sizes: Annotated[Optional[list[str]], typer.Option(
        metavar="SIZES", help="The batch ladder for throughput (batch 1 is always timed too; with --sweep: exactly "
                              "these).")] = BENCH["batch_sizes"],
    iterations: Annotated[Optional[int], typer.Option(
        metavar="N", show_default="by --seconds", help="Timed calls per point (instead of --seconds).")] = None,
    seconds: Annotated[float, typer.Option(
        metavar="SECONDS", help="Time budget per point.")] = BENCH["seconds"],
    warmup: Annotated[int, typer.Option(
        metavar="N",
        help="Untimed calls before a configuration's first timed block (one before each later "
             "round's).")] = BENCH["warmup"],
    rounds: Annotated[int, typer.Option(
        metavar="N",
        help="Interleaved rounds over all configurations.")] = BENCH["rounds"],
    threads: Annotated[Optional[int], typer.Option(
        metavar="N", show_default="the runtimes' own", help="Intra-op threads on the CPU.")] = None,
    optimization: Annotated[Optional[list[str]], typer.Option(
        metavar="LEVELS", help="ONNX Runtime graph optimization levels to try: all, extended, basic, "
                               "none.")] = BENCH["optimizations"],
    concurrency: Annotated[Optional[list[str]], typer.Option(
        metavar="COUNTS", help="ONNX Runtime CPU: calls in flight at once to try, e.g. 1,2 (each gets "
                               "cores/N threads; one call alone is tried at the default, at one "
                               "thread, and on every CPU where cores have hyperthreads).")] = BENCH["concurrency"],
    mode: Annotated[Optional[list[str]], typer.Option(
        metavar="MODES", show_default="f32, and bf16 where the CPU computes it natively",
        help="OpenVINO inference precisions: f32, bf16 (bf16 on fp32 files only; one this CPU only emulates is "
             "timed when named).")] = None,
    hint: Annotated[Optional[list[str]], typer.Option(
        metavar="HINTS",
        help="OpenVINO performance hints to try: latency, throughput.")] = BENCH["hints"],
    sweep: Annotated[bool, typer.Option(
        help="Time every combination of the settings above at every batch size, and print every point, instead "
             "of each runtime and file at the best settings a short search finds.")] = BENCH["sweep"],
    cuda_graph: Annotated[bool, typer.Option(
        "--cuda-graph/--no-cuda-graph",
        help="Also time ONNX Runtime CUDA with CUDA graphs.")] = BENCH["cuda_graph"],
    verify: Annotated[bool, typer.Option(
        "--verify/--no-verify",
        help="Check each configuration on the test set first (fastest names verified ones only).")] = BENCH["verify"],
    verify_images: Annotated[int, typer.Option(
        metavar="N", help="Test images that check runs on, spread over the set (toolkit verify uses all "
                          "10,000).")] = BENCH["verify_images"],
    matmul_peak: Annotated[bool, typer.Option(
        "--matmul-peak/--no-matmul-peak",
        help="Also measure the CPU's float32 and int8 matmul peaks (for the efficiency targets in the "
             "JSON).")] = BENCH["matmul_peak"],
    json_path: JsonOption = None,
    markdown: Annotated[Optional[Path], typer.Option(
        parser=_path, metavar="PATH", help="Write a markdown table here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        parser=_path, metavar="PATH", help="Write a PNG of throughput against batch size here.")] = None,
    mean: Annotated[float, typer.Option(
        metavar="MEAN", help=f"With FILE: input = (pixel/255 - mean) / std for a foreign file's float image input; "
                             f"{MEAN_STD_RANGES}. Refused, as --std, --layout and --shape are, where no file takes "
                             "it.")] = MEAN,
    std: Annotated[float, typer.Option(metavar="STD", help="With FILE: see --mean.")] = STD,
    layout: Annotated[str, typer.Option(
        metavar="LAYOUT", help="With FILE: auto, nchw, nhwc, nhw or flat (the layout of a foreign "
                               "file's image input).")] = "auto",
    shape: Annotated[Optional[list[str]], typer.Option(
        metavar="INPUT=DIMS", help="With FILE: a foreign .onnx input's dynamic dimensions after the batch, e.g. "
                                   "x=3x16.")] = None,
    time_limit: TimeLimit = DEFAULT_TIME_LIMIT_S,
    data_dir: DataDir = Path("data"),
) -> None:
    """What to deploy here: each runtime and file at its best settings (found by a short search), its batch-1
    latency and most images/s, and the fastest verified configuration for latency and for throughput.

    Every point goes to --json and --markdown; --sweep times every combination of settings instead. With FILE...:
    each file in every runtime and device here that opens it (an .onnx in ONNX Runtime, OpenVINO and OpenCV; any
    other in its own runtime), side by side, fed MNIST test images when its input fits an MNIST layout and the
    data is here, else random inputs of its declared shapes and types. A toolkit file (listed in the manifest beside
    it) is checked and verified as over its folder; any other file has no reference, and is not verified.
    TorchScript, .pt2 and .aoti.pt2 files are code: loading one runs what its author put in it.
    """
    _outputs(json_path, markdown, plot, inputs=(*(files or ()), *export_inputs(artifacts, checkpoint)))
    openvino_options(_csv(runtime), mode=mode is not None, hint=given(ctx, "hint"))
    file_options = _file_options(ctx)
    if not files and file_options:  # over a folder, every file feeds itself from its metadata
        from toolkit.runners.feeding import refuse_unused

        refuse_unused(file_options, [], "no FILE is given")
    from toolkit import bench as bench_lib

    config = _config(  # BenchConfig checks every number, the time limit too
        bench_lib.BenchConfig, artifacts=str(artifacts), checkpoint=str(checkpoint) if checkpoint else None,
        data_dir=str(data_dir), runtimes=tuple(_csv(runtime)), providers=tuple(_csv(provider)),
        formats=tuple(_csv(format)), precisions=tuple(_csv(precision)),
        batch_sizes=tuple(_ints(batch_sizes, "batch sizes")), warmup=warmup, iterations=iterations, seconds=seconds,
        rounds=rounds, threads=threads, optimizations=tuple(_csv(optimization)),
        concurrency=tuple(_ints(concurrency, "concurrency")), modes=tuple(_csv(mode)), hints=tuple(_csv(hint)),
        cuda_graph=cuda_graph, sweep=sweep, verify=verify, verify_images=verify_images, matmul_peak=matmul_peak,
        time_limit_s=time_limit)
    with stage("benchmarking") as on_progress:
        if not files:
            report = bench_lib.bench(config, on_progress=on_progress)
        else:
            from toolkit.runners.feeding import Preprocessing, parse_shapes

            report = bench_lib.bench_files(config, [str(f) for f in files],
                                           Preprocessing(mean=mean, std=std, layout=layout),
                                           parse_shapes(_csv(shape)), on_progress, file_options)
    _print_bench(report, bench_lib, sweep)
    if json_path:
        _write_json(json_path, report.to_json())
    if markdown:
        from toolkit.fileio import write_bytes

        write_bytes(markdown, bench_lib.markdown_table(report).encode())
    if plot:
        bench_lib.plot(report, plot)


def _file_options(ctx: typer.Context) -> tuple[str, ...]:
    """The options of how a foreign file is fed (--shape, --layout, --mean, --std) that were given."""
    from toolkit.runners.feeding import FILE_OPTIONS

    return tuple(name for name in FILE_OPTIONS if given(ctx, name))


def predict(
    images: Annotated[list[Path], typer.Argument(parser=_path, metavar="IMAGES", help="PNG or JPEG files.")],
    model: Annotated[Optional[Path], typer.Option(
        parser=_path, metavar="PATH", show_default="exported/model.app.onnx, else exported/model.onnx",
        help="A toolkit .onnx, .tflite, or OpenVINO IR .xml with its .bin beside it; checked against the "
             "manifest.json beside it, if any.")] = None,
    invert: Annotated[Optional[bool], typer.Option(
        "--invert/--no-invert", show_default="detect",
        help="Force (or forbid) inverting dark-on-light images.")] = None,
    provider: DeviceOption = CPU,
    json_path: JsonOption = None,
    time_limit: TimeLimit = DEFAULT_TIME_LIMIT_S,
) -> None:
    """Classify digit images with the exported .onnx alone (ONNX Runtime, numpy and Pillow; no torch), or an IR
    (OpenVINO) or .tflite (LiteRT), also without torch."""
    from toolkit.errors import ConfigError
    from toolkit.runners.base import check_time_limit
    from toolkit.runtime import predict_files

    check_time_limit(time_limit)
    if json_path is not None and str(json_path) != "-" and (
            json_path.suffix.lower() in IMAGE_SUFFIXES or any(json_path.resolve() == i.resolve() for i in images)):
        # `--json` used to be a flag: `predict --json digit.png` must not overwrite the image with JSON
        raise ConfigError(f"--json takes the path to write the JSON to (- for stdout), not the image {json_path}")
    if model is None:
        candidates = [Path("exported/model.app.onnx"), Path("exported/model.onnx")]
        model = next((c for c in candidates if c.is_file()), candidates[0])
    _outputs(json_path, inputs=(model, *export_inputs(model.parent)))
    predictions = predict_files(images, model, invert=invert, provider=provider, time_limit_s=time_limit)
    if json_path is not None:
        _write_json(json_path, [p.__dict__ for p in predictions])
    if json_path is not None and str(json_path) == "-":
        return  # the JSON is all there is on stdout
    if _state["quiet"]:  # the digits alone, one per image: what a script reads
        _print_result("\n".join(str(p.digit) for p in predictions))
    else:
        _print_result(_predictions_table(predictions, model))


def web(
    model: Annotated[Path, typer.Option(
        parser=_path, metavar="PATH",
        help="The app-ready model (any name), checked at startup and served from memory at /model/model.app.onnx, "
             "where the page fetches it.")] = DEFAULT_MODEL,
    port: Annotated[int, typer.Option(metavar="PORT", help="Port on 127.0.0.1 (0 picks a free one).")] = DEFAULT_PORT,
    ort: Annotated[Optional[Path], typer.Option(
        parser=_path, metavar="FOLDER",
        show_default="node_modules/onnxruntime-web/dist beside the page, else in the current folder",
        help="ONNX Runtime Web's dist folder (npm install onnxruntime-web), or a folder holding node_modules.")] = None,
    site: Annotated[Optional[Path], typer.Option(
        parser=_path, metavar="FOLDER", show_default="the page installed with toolkit",
        help="Serve another copy of the page.")] = None,
) -> None:
    """Serve the draw-a-digit page on 127.0.0.1 (cross-origin isolated for multi-threaded wasm) until Ctrl-C."""
    from toolkit.web import DEFAULT_SITE, WebConfig, make_server, url

    config = WebConfig(site=site or DEFAULT_SITE, model=model, port=port, ort=ort)
    server = make_server(config)
    out.print(f"serving {model} and the demo page ({config.site}) at {url(server)} (Ctrl-C to stop)",
              highlight=False, soft_wrap=True)
    out.file.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
