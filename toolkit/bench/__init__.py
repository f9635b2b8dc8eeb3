"""What to deploy on this machine: latency and throughput of every runtime the toolkit knows, on every artifact
it opens, each at the settings a short search finds best (or, with `sweep`, at every combination of them).

Built for shared, noisy machines: every configuration and batch size is measured in several interleaved
rounds (so drift hits all of them alike), after warm-up, on real MNIST test images rotated among several
batches; the very first call is reported apart; results are percentiles of all timed calls. Each
configuration timed is first verified on all 10,000 test images (once per graph, device and compute mode:
threads and hints only schedule it), so "fastest" only ever names one that passes.

A run is one pipeline in parts, each its own module:
- config: BenchConfig and the bounds it checks;
- search: the candidates (runtime x device x source x settings) and opening their runners;
- tuning: the short search that keeps each runtime and file's best settings (the default; `sweep` times all);
- timing: warm-up, timed calls, interleaved rounds;
- results: points, the report, the summary (a row per runtime and file), the recommendation per regime and the
  targets (one table of goals, for benchmarks/);
- render: the markdown tables, the recommendation lines, the plot;
- peaks: the CPU's matmul peaks the efficiency targets divide by;
- files: bench FILE...'s candidates, each file in every runtime that opens it;
- pipeline: `bench` (candidates from the manifest) and `bench_files` (from files), through the same steps.
"""

from toolkit.bench.config import (
    DEFAULT_BATCH_SIZES,
    LIMITS,
    MAX_BATCH_SIZE,
    MAX_SECONDS,
    OPTIMIZATION_LEVELS,
    BenchConfig,
)
from toolkit.bench.peaks import int8_matmul_peak_gops, matmul_peak_gflops
from toolkit.bench.pipeline import bench, bench_files
from toolkit.bench.render import fastest_line, markdown_table, peaks_line, plot, summary_cells
from toolkit.bench.results import (
    GOALS,
    REGIMES,
    BenchPoint,
    BenchReport,
    fastest,
    file_name,
    summarize,
    target_goal,
    targets,
)
from toolkit.bench.timing import ROTATE

__all__ = [
    "DEFAULT_BATCH_SIZES", "GOALS", "LIMITS", "MAX_BATCH_SIZE", "MAX_SECONDS", "OPTIMIZATION_LEVELS", "REGIMES",
    "ROTATE", "BenchConfig", "BenchPoint", "BenchReport", "bench", "bench_files", "fastest", "fastest_line",
    "file_name", "int8_matmul_peak_gops", "markdown_table", "matmul_peak_gflops", "peaks_line", "plot", "summarize",
    "summary_cells", "target_goal", "targets",
]
