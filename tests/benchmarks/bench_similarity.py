"""Benchmark of top_concepts against the reference repository's approach, measured in the same run.

The baseline follows CLIP-Dissect's code path: the whole N×M matrix (and its softmax) in memory and a
Python loop over neurons (rank-reorder: two sorts per column). For (soft-)WPMI a tighter per-neuron
loop is timed too ("baseline_lean"). Ours streams concept blocks. All get the same P; ours is also run
with P given implicitly by embeddings. Timings are the best of --repeat runs (all listed), all in this
process. Memory is measured as users run the code: each call once more in a fresh process (spawned,
no environment variable set by us) that rebuilds the same seeded inputs and runs with glibc's default
allocator policy. It reports the peak resident set size during the call (the kernel's high-water mark
``VmHWM``, reset just before the call; it includes the interpreter, torch and the inputs), the part
above what was resident before the call, the child's peak over its whole life (building the inputs
included) and the call's wall time there. (``ru_maxrss`` is not used: in a spawned child it starts at
the parent's resident size when it forked, which exec carries over.) ``--allocator`` measures
with the old tweaks instead, for comparison. Prints one JSON document.

    python tests/benchmarks/bench_similarity.py                       # N=20 000, K=512, M=5 000 on CPU
    python tests/benchmarks/bench_similarity.py --scale imagenet      # N=50 000, K=2 048, M=20 000
    python tests/benchmarks/bench_similarity.py --device cuda --scale imagenet
    # memory and time of each call in a fresh process only (no in-process timing pass):
    python tests/benchmarks/bench_similarity.py --scale imagenet --no-baseline --memory-only \
        --methods soft_wpmi wpmi cos cos3
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import multiprocessing
import os
import platform
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from discover_ray.similarity import METHODS, rank_reorder_permutations, top_concepts  # noqa: E402
from tests.benchmarks._measure import emit, fix_allocator, time_call  # noqa: E402

SCALES = {"20k": (20_000, 512, 5_000), "imagenet": (50_000, 2_048, 20_000), "small": (4_000, 128, 1_000)}
EMBED_DIM = 512


# ----- baselines: the reference approach ------------------------------------------------------------
def baseline_cos(A, P, k, chunk=10_000):
    a_hat = A / A.norm(dim=0, keepdim=True)
    p_hat = P / P.norm(dim=0, keepdim=True)
    S = torch.cat([a_hat.T @ p_hat[:, s : s + chunk] for s in range(0, P.shape[1], chunk)], dim=1)
    return S.topk(k, dim=1)


def baseline_cos3(A, P, k, min_norm=1e-3, chunk=10_000):
    def transform(x):
        x = (x - x.mean(dim=0, keepdim=True)) ** 3
        return x / x.norm(dim=0, keepdim=True).clamp_min(min_norm)

    a_t, p_t = transform(A), transform(P)
    S = torch.cat([a_t.T @ p_t[:, s : s + chunk] for s in range(0, P.shape[1], chunk)], dim=1)
    return S.topk(k, dim=1)


def baseline_soft_wpmi(A, P, k, top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97, soft=True):
    """The reference code path: whole N×M softmax, then per neuron a gather with an expanded index."""
    Q = torch.softmax(a * P, dim=1)
    inds = torch.topk(A, k=top_k, dim=0).indices  # [top_k, K]
    if soft:
        p = (p_start - torch.arange(top_k, dtype=A.dtype) / top_k * (p_start - p_end))[:, None]
    else:
        p = torch.ones(top_k, 1, dtype=A.dtype)
    rows = []
    for neuron in range(A.shape[1]):  # one neuron at a time
        q = Q.gather(0, inds[:, neuron : neuron + 1].expand(-1, Q.shape[1]))
        q = 1 + p * (q - 1)
        rows.append(torch.log(q + min_prob).sum(dim=0, keepdim=True))
    log_cond = torch.cat(rows)
    log_prior = torch.logsumexp(log_cond, dim=0) - math.log(A.shape[1])
    return (log_cond - lam * log_prior).topk(k, dim=1)


def lean_soft_wpmi(A, P, k, top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97, soft=True):
    """A tighter per-neuron loop than the reference (row index_select, fused constants), for comparison."""
    Q = torch.softmax(a * P, dim=1)
    inds = torch.topk(A, k=top_k, dim=0).indices
    if soft:
        p = (p_start - torch.arange(top_k, dtype=A.dtype) / top_k * (p_start - p_end))[:, None]
    else:
        p = torch.ones(top_k, 1, dtype=A.dtype)
    log_cond = torch.empty(A.shape[1], P.shape[1], dtype=A.dtype)
    for neuron in range(A.shape[1]):
        log_cond[neuron] = torch.log(1 + p * (Q[inds[:, neuron]] - 1) + min_prob).sum(dim=0)
    log_prior = torch.logsumexp(log_cond, dim=0) - math.log(A.shape[1])
    return (log_cond - lam * log_prior).topk(k, dim=1)


def baseline_wpmi(A, P, k):
    return baseline_soft_wpmi(A, P, k, top_k=28, a=2.0, lam=0.6, soft=False)


def lean_wpmi(A, P, k):
    return lean_soft_wpmi(A, P, k, top_k=28, a=2.0, lam=0.6, soft=False)


def baseline_rank_reorder(A, P, k, p=3.0, top_fraction=0.05, scale_p=0.5, chunk=1_500):
    n = int(A.shape[0] * top_fraction)
    top_values, inds = torch.topk(A, k=n, dim=0)  # [n, K]
    perms = rank_reorder_permutations(n, 5, 0)
    S = torch.empty(A.shape[1], P.shape[1])
    for s in range(0, P.shape[1], chunk):
        for neuron in range(A.shape[1]):
            acts = top_values[:, neuron : neuron + 1]
            clip = P[inds[:, neuron], s : s + chunk]
            ranks = clip.argsort(dim=0, descending=True).argsort(dim=0)  # two sorts per column
            reordered = acts[:, 0][ranks]
            err = (acts - reordered).abs().pow(p).mean(dim=0)
            base = torch.stack([(acts[:, 0] - acts[perm, 0]).abs().pow(p).mean() for perm in perms]).mean()
            err = err / base / clip.mean(dim=0).clamp_min(1e-6) ** scale_p
            S[neuron, s : s + chunk] = -err
    return S.topk(k, dim=1)


LEAN_BASELINES = {"wpmi": lean_wpmi, "soft_wpmi": lean_soft_wpmi}

BASELINES = {
    "cos": baseline_cos,
    "cos3": baseline_cos3,
    "rank_reorder": baseline_rank_reorder,
    "wpmi": baseline_wpmi,
    "soft_wpmi": baseline_soft_wpmi,
}


# ----- data -------------------------------------------------------------------------------------------
def make_inputs(n, k, m, seed=0):
    """CLIP-like inputs: unit embeddings with shared structure, non-negative activations tied to them."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(64, EMBED_DIM, generator=g)
    image_emb = torch.nn.functional.normalize(
        torch.randn(n, 64, generator=g) @ basis + 2 * torch.randn(n, EMBED_DIM, generator=g), dim=1
    )
    concept_emb = torch.nn.functional.normalize(
        torch.randn(m, 64, generator=g) @ basis + 2 * torch.randn(m, EMBED_DIM, generator=g), dim=1
    )
    readout = torch.randn(EMBED_DIM, k, generator=g)
    acts = image_emb @ readout  # built in place: the harness should not need more memory than the inputs
    for start in range(0, n, 4096):
        acts[start : start + 4096].add_(torch.randn(min(4096, n - start), k, generator=g), alpha=0.5)
    return acts.relu_(), image_emb, concept_emb


def agreement(ours, theirs):
    same_top1 = float((ours[1][:, 0] == theirs[1][:, 0]).float().mean())
    scale = float(theirs[0].max() - theirs[0].min()) or 1.0
    return {
        "top1_agreement": round(same_top1, 5),
        "max_value_diff_over_range": float((ours[0] - theirs[0]).abs().max()) / scale,
    }


def make_calls(method, a, scores, dev_emb, device, run_baseline) -> dict:
    """The measured calls of one method: baseline(s) on the given P, ours on P and on embeddings."""
    calls = {}
    if run_baseline:
        calls["baseline"] = lambda: BASELINES[method](a, scores, 5)
        if method in LEAN_BASELINES:
            calls["baseline_lean"] = lambda: LEAN_BASELINES[method](a, scores, 5)
    if scores is not None:
        calls["ours_given_P"] = lambda: top_concepts(method, a, concept_scores=scores, k=5, device=device)
    calls["ours_embeddings"] = lambda: top_concepts(
        method, a.to(device), image_emb=dev_emb[0], concept_emb=dev_emb[1], k=5
    )
    return calls


ALLOCATORS = {
    "default": "glibc's defaults, as users run the code",
    "mmap-threshold": "mallopt(M_MMAP_THRESHOLD, 128 KiB) in the child before the call (the old harness)",
    "arena-max-2": "MALLOC_ARENA_MAX=2 in the child's environment",
}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class _RssSampler(threading.Thread):
    """Samples /proc/self/status every ``interval`` s: the largest VmRSS seen and its anonymous and file parts."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval = interval
        self.done = threading.Event()
        self.peak = dict.fromkeys(self.FIELDS, 0.0)

    def sample(self) -> None:
        with open("/proc/self/status") as status:
            now = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status if line.startswith(self.FIELDS)}
        if now.get("VmRSS", 0.0) >= self.peak["VmRSS"]:
            self.peak.update(now)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join()
        self.sample()
        return {f"sampled_peak_{name}_mib": round(value, 1) for name, value in self.peak.items()}


def child_memory(arg_values: dict, method: str, name: str) -> dict:
    """Runs in a fresh process: rebuild the inputs, then one call's peak resident memory and wall time.

    Nothing is done to the allocator unless ``--allocator`` asks for it (no trim, no mallopt): the
    call meets the heap that building its inputs left, as it would in a user's process.
    """
    args = argparse.Namespace(**arg_values)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    n, k, m = SCALES[args.scale]
    acts, image_emb, concept_emb = make_inputs(n, k, m)
    if method == "rank_reorder" and 0 < args.rank_reorder_neurons < k:
        acts = acts[:, : args.rank_reorder_neurons]
    scores = image_emb @ concept_emb.T if name in ("baseline", "baseline_lean", "ours_given_P") else None
    dev_emb = (image_emb.to(args.device), concept_emb.to(args.device))
    device = "cpu" if name.startswith("baseline") else args.device
    call = make_calls(method, acts, scores, dev_emb, args.device, name.startswith("baseline"))[name]
    gc.collect()
    if args.allocator == "mmap-threshold":  # the old harness: large buffers by mmap, the heap trimmed first
        fix_allocator()
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    inputs_peak = _status_mib("VmHWM")  # the child's peak so far: interpreter, torch and building the inputs
    before = _status_mib("VmRSS")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the high-water mark VmHWM to the current resident size
    sampler = _RssSampler()
    sampler.start()
    start = time.perf_counter()
    call()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    sampled = sampler.stop()
    stats = {
        "seconds_fresh_process": round(seconds, 2),
        "peak_rss_mib": round(peak, 1),
        "extra_mib": round(peak - before, 1),
        "rss_before_mib": round(before, 1),
        "process_peak_rss_mib": round(max(peak, inputs_peak), 1),
        **sampled,
        "threads": torch.get_num_threads(),
        "allocator": args.allocator,
    }
    if device == "cuda":
        stats["cuda_extra_mib"] = round((torch.cuda.max_memory_allocated() - cuda_before) / 2**20, 1)
    return stats


def _malloc_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith(("MALLOC_", "GLIBC_TUNABLES"))}


@contextlib.contextmanager
def _child_environment(allocator: str):
    """The environment a spawned child starts with: ours without any glibc malloc variable (so that the
    default really is glibc's default), plus MALLOC_ARENA_MAX=2 for ``arena-max-2``."""
    saved = _malloc_env()
    for name in saved:
        del os.environ[name]
    if allocator == "arena-max-2":
        os.environ["MALLOC_ARENA_MAX"] = "2"
    try:
        yield
    finally:
        os.environ.pop("MALLOC_ARENA_MAX", None)
        os.environ.update(saved)


def run(args) -> dict:
    n, k, m = SCALES[args.scale]
    torch.set_num_threads(args.threads or torch.get_num_threads())
    # With --memory-only every call runs in a child that builds its own inputs; this process needs none.
    acts, image_emb, concept_emb = (None, None, None) if args.memory_only else make_inputs(n, k, m)
    report = {
        "benchmark": "similarity.top_concepts",
        "scale": {"N": n, "K": k, "M": m, "embed_dim": EMBED_DIM},
        "device": args.device,
        "threads": torch.get_num_threads(),
        "repeat": args.repeat,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "results": {},
    }
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    run_baseline = not args.no_baseline and args.scale != "imagenet" and not args.memory_only
    scores = image_emb @ concept_emb.T if (run_baseline or args.given_p) and not args.memory_only else None
    dev_emb = None if args.memory_only else (image_emb.to(args.device), concept_emb.to(args.device))
    report["memory"] = {
        "allocator": args.allocator,
        "how": ALLOCATORS[args.allocator],
        "malloc_env_removed_for_children": sorted(_malloc_env()),
    }
    # Phase 1: timings (default allocator) and answers, all in this process.
    for method in [] if args.memory_only else args.methods:
        a = acts
        entry: dict = {}
        if method == "rank_reorder" and 0 < args.rank_reorder_neurons < k:
            a = acts[:, : args.rank_reorder_neurons]  # no layer-wide coupling: a subset times both sides alike
            entry["neurons_timed"] = args.rank_reorder_neurons
        calls = make_calls(method, a, scores, dev_emb, args.device, run_baseline)
        answers = {}
        for name, call in calls.items():
            device = "cpu" if name.startswith("baseline") else args.device
            answer, entry[name] = time_call(call, device, args.repeat)
            answers[name] = tuple(t.cpu() for t in answer)
            print(json.dumps({method: {name: entry[name]}}), file=sys.stderr, flush=True)
        if run_baseline:
            for name in ("ours_given_P", "ours_embeddings"):
                if name in answers:
                    entry[name].update(agreement(answers[name], answers["baseline"]))
            entry["speedup_given_P"] = round(entry["baseline"]["seconds"] / entry["ours_given_P"]["seconds"], 2)
            if "baseline_lean" in entry:
                entry["speedup_given_P_vs_lean_loop"] = round(
                    entry["baseline_lean"]["seconds"] / entry["ours_given_P"]["seconds"], 2
                )
            if args.check_float64 and method != "rank_reorder":
                # Where the float32 answers disagree, which one is right? Ask a float64 run.
                truth = top_concepts(method, a.double(), concept_scores=scores.double(), k=1, dtype=torch.float64)[1][
                    :, 0
                ]
                entry["top1_agreement_with_float64"] = {
                    name: round(float((answers[name][1][:, 0] == truth).float().mean()), 5) for name in answers
                }
        report["results"][method] = entry

    # Phase 2: peak memory of each call, each in a fresh process that rebuilds the same seeded inputs, so
    # that no call's measurement inherits what an earlier one left in the allocator, under glibc's
    # default policy unless --allocator asks for an old tweak.
    spawn = multiprocessing.get_context("spawn")
    for method in args.methods:
        entry = report["results"].setdefault(method, {})
        names = ("baseline", "baseline_lean", "ours_given_P", "ours_embeddings")
        if args.memory_only:
            names = ("ours_given_P", "ours_embeddings") if args.given_p else ("ours_embeddings",)
        for name in [n for n in names if n in entry or args.memory_only]:
            with _child_environment(args.allocator), ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                entry.setdefault(name, {}).update(pool.submit(child_memory, vars(args), method, name).result())
        if "baseline" in entry:
            entry["extra_memory_ratio_embeddings_vs_baseline"] = round(
                entry["ours_embeddings"]["extra_mib"] / max(entry["baseline"]["extra_mib"], 1e-9), 4
            )
        print(json.dumps({method: entry}), file=sys.stderr, flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="20k")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--given-p", action="store_true", help="also run ours with P given (always on with baselines)")
    parser.add_argument(
        "--rank-reorder-neurons", type=int, default=0, help="neurons timed for rank_reorder (0: the whole layer)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best time is reported")
    parser.add_argument("--no-check-float64", dest="check_float64", action="store_false")
    parser.add_argument(
        "--allocator",
        choices=sorted(ALLOCATORS),
        default="default",
        help="allocator policy of the memory children: default (as users run), or an old tweak to compare",
    )
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="skip the in-process timing pass: each of ours runs once, in a fresh process (memory and seconds)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
