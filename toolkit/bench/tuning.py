"""The short search: per runtime, file, device and compute mode, the settings worth deploying, chosen by measuring.

A group is one source in one runtime on one device and compute mode; its candidates differ only in the settings
that runtime takes (ONNX Runtime's optimization level and concurrent calls, OpenVINO's hint). Each group with
more than one candidate is probed briefly, in interleaved rounds like the real timing: the ones that make one
call at a time at batch 1 (the latency regime), all of them at one probe batch (the throughput regime). The
lowest p50 and the most images/s are kept; then batch 1 is timed with the first and the batch ladder with the
second. The structure depends only on the candidates, never on what was measured; the report records every
probe, the choice and the rule that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolkit.bench.search import Candidate
from toolkit.bench.timing import Budget, Job, Series

PROBE_BATCH = 256  # large enough that per-call overhead no longer decides; the ladder's size nearest below it
# a probe gets this share of a point's time budget: at a quarter, noise on a shared machine picked ONNX Runtime's
# int8 setting and the int8 / fp32 ratio swung from x1.49 to x2.31 between runs (benchmarks/search_probes.py)
PROBE_SHARE = 0.5
PROBE_ROUNDS = 2
RULES = {"latency": "lowest p50 at batch 1, among the settings that make one call at a time",
         "throughput": "most images/s at the probe batch, among all settings"}


@dataclass
class Choice:
    """What the search keeps for one group: the setting for each regime (the same one when nothing differs)."""

    group: str
    candidates: list[Candidate]  # every setting the group was tried at
    latency: Candidate
    throughput: Candidate


def groups(candidates: list[Candidate]) -> dict[str, list[Candidate]]:
    """Candidates by group, in the order they were built."""
    out: dict[str, list[Candidate]] = {}
    for c in candidates:
        out.setdefault(c.group, []).append(c)
    return out


def probe_batch(ladder: tuple[int, ...]) -> int:
    """The batch the throughput probes run at: the ladder's largest size up to PROBE_BATCH, else its smallest
    (batch 1 only when the ladder has nothing else)."""
    sizes = [b for b in ladder if b != 1] or list(ladder)
    below = [b for b in sizes if b <= PROBE_BATCH]
    return max(below) if below else min(sizes)


def probe_budget(budget: Budget) -> Budget:
    """A probe's budget: a share of a point's, in at most PROBE_ROUNDS rounds."""
    rounds = min(PROBE_ROUNDS, budget.rounds)
    iterations = None if budget.iterations is None else max(rounds, int(budget.iterations * PROBE_SHARE))
    return Budget(rounds, budget.seconds * PROBE_SHARE, budget.warmup, iterations)


def _latency_pool(group: list[Candidate]) -> list[Candidate]:
    """The candidates the latency regime chooses from: one call at a time, else (none asked for) all."""
    return [c for c in group if c.one_call_at_a_time] or group


def probe_jobs(grouped: dict[str, list[Candidate]], batch: int) -> list[Job]:
    """What the probes time: per group, batch 1 where the latency regime has a choice, the probe batch where the
    throughput regime has one. A group with one candidate is not probed."""
    jobs = []
    for group in grouped.values():
        single = _latency_pool(group)
        for c in group:
            sizes = ((1,) if len(single) > 1 and c in single else ()) + ((batch,) if len(group) > 1 else ())
            if sizes:
                jobs.append((c, tuple(dict.fromkeys(sizes))))
    return jobs


def _p50(s: Series) -> float:
    times = sorted(s.times)
    return times[len(times) // 2]


def _rate(s: Series, batch: int) -> float:
    return batch * s.batches_per_call * len(s.times) / s.wall_s


def choose(grouped: dict[str, list[Candidate]], series: dict[tuple[str, int], Series], batch: int) -> list[Choice]:
    """Each group's choice by RULES from the probes' series; ties keep the earlier candidate."""
    choices = []
    for name, group in grouped.items():
        single = _latency_pool(group)
        latency = single[0] if len(single) == 1 else min(single, key=lambda c: _p50(series[(c.key, 1)]))
        throughput = group[0] if len(group) == 1 else max(group, key=lambda c: _rate(series[(c.key, batch)], batch))
        choices.append(Choice(name, group, latency, throughput))
    return choices


def final_jobs(choices: list[Choice], ladder: tuple[int, ...]) -> list[Job]:
    """Batch 1 with each group's latency setting, the ladder with its throughput setting (one job if the same)."""
    jobs: list[Job] = []
    rest = tuple(b for b in ladder if b != 1)
    for ch in choices:
        if ch.latency.key == ch.throughput.key:
            jobs.append((ch.latency, (1, *rest)))
        else:
            jobs += [(ch.latency, (1,)), (ch.throughput, rest or (1,))]
    return jobs


def _why(regime: str, pool: list[Candidate]) -> str:
    return RULES[regime] if len(pool) > 1 else "the only setting to choose from"


def record(choices: list[Choice], series: dict[tuple[str, int], Series], batch: int, budget: Budget
           ) -> dict[str, Any]:
    """The search as the report keeps it: the method, and per group every probe, the choice and why."""
    out: dict[str, Any] = {"probe_batch": batch, "probe_seconds": budget.seconds, "probe_rounds": budget.rounds,
                           "rules": RULES, "groups": {}}
    for ch in choices:
        probes = [{"setting": c.setting, "batch_size": bs, "p50_ms": _p50(s) * 1e3, "images_per_s": _rate(s, bs),
                   "calls": len(s.times)}
                  for c in ch.candidates for bs in dict.fromkeys((1, batch))
                  for s in [series.get((c.key, bs))] if s is not None]
        out["groups"][ch.group] = {
            "settings": [c.setting for c in ch.candidates], "probes": probes,
            "latency": {"setting": ch.latency.setting, "why": _why("latency", _latency_pool(ch.candidates))},
            "throughput": {"setting": ch.throughput.setting, "why": _why("throughput", ch.candidates)}}
    return out
