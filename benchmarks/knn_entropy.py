"""Speed benchmark of the k-NN (Kozachenko–Leonenko) entropy estimator of ``ibcore``.

Usage::

    python benchmarks/knn_entropy.py [--n 10000 --d 256 --repeats 3 --big-n 60000] [--no-record]

For N points of dimension d (float32, CPU) and k = 1, 5 it times

(a) ``knn_entropy`` forward (on a tensor that requires grad, as in training),
(b) its backward pass (``estimate.backward()``),
(c) scikit-learn ``NearestNeighbors`` (``algorithm="brute"`` and the default) computing the
    same estimate from its neighbour distances,
(d) SciPy ``cKDTree`` computing the same estimates (one repeat, one query for all k: it is slow
    in high dimension),
(e) the bare matrix product ``x @ x.T``, the floor any exact all-pairs method pays,

interleaved repeat by repeat (so that every ratio compares timings taken under the same load),
and reports medians, ratios to (e), the largest absolute difference of the estimates from the
references, and the peak memory of one forward + backward pass at N = ``--big-n`` measured in a
fresh subprocess with ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (tracemalloc does not see
tensor memory). It records the run with :class:`ibcore.results.RunRecorder`
(``results/benchmarks/knn_entropy/cpu-seed0.json``) unless ``--no-record`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import scipy
import sklearn
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln
from sklearn.neighbors import NearestNeighbors

from ibcore.estimators.knn_entropy import knn_entropy

GIB = 2**30
GOAL_FORWARD_OVER_GEMM = 1.3
GOAL_BACKWARD_OVER_FORWARD = 2.0
GOAL_ABS_DIFF_NATS = 1e-5
GOAL_PEAK_BYTES = 4 * GIB


def estimate_from_distances(dist: np.ndarray, d: int, k: int) -> float:
    """Kozachenko–Leonenko estimate (L2) from k-th neighbour distances, in float64."""
    n = dist.shape[0]
    log_ball = 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1.0)
    return float(digamma(n) - digamma(k) + log_ball + d * np.mean(np.log(dist.astype(np.float64))))


def sklearn_estimate(x: np.ndarray, k: int, algorithm: str) -> float:
    nn = NearestNeighbors(n_neighbors=k, algorithm=algorithm).fit(x)
    dist, _ = nn.kneighbors()  # no query points: each point is excluded from its own list
    return estimate_from_distances(dist[:, k - 1], x.shape[1], k)


def ckdtree_estimates(x: np.ndarray, ks: list[int]) -> dict[int, float]:
    """One cKDTree query for all k (the query's first neighbour is the point itself)."""
    dist, _ = cKDTree(x).query(x, k=[k + 1 for k in ks], workers=-1)
    return {k: estimate_from_distances(dist[:, j], x.shape[1], k) for j, k in enumerate(ks)}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def forward_backward(z: torch.Tensor, k: int) -> tuple[float, float, float]:
    """Seconds of the forward and backward pass, and the estimate."""
    leaf = z.detach().clone().requires_grad_(True)
    t_fwd, h = timed(lambda: knn_entropy(leaf, k=k))
    t_bwd, _ = timed(lambda: h.backward())
    return t_fwd, t_bwd, float(h.detach())


def memory_child(n: int, d: int, k: int) -> None:
    """Run in a fresh process: peak resident memory of one forward + backward at N = n."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with open("/proc/self/statm") as fh:
        rss_before = int(fh.read().split()[1]) * resource.getpagesize()
    t_fwd, h = timed(lambda: knn_entropy(z, k=k))
    t_bwd, _ = timed(lambda: h.backward())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"rss_before_bytes": rss_before, "peak_rss_bytes": peak,
                      "forward_seconds": t_fwd, "backward_seconds": t_bwd,
                      "estimate_nats": float(h.detach())}))


def measure_memory(n: int, d: int, k: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-child", "--n", str(n), "--d", str(d), "--k", str(k)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> tuple[dict, list[dict], dict]:
    n, d, ks = args.n, args.d, args.ks
    load_start = os.getloadavg()[0]
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    x = z.numpy()
    gemm: list[float] = []
    fwd = {k: [] for k in ks}
    bwd = {k: [] for k in ks}
    sk_brute = {k: [] for k in ks}
    sk_auto = {k: [] for k in ks}
    ours = {k: 0.0 for k in ks}
    ref: dict[str, dict[int, float]] = {"brute": {}, "auto": {}, "ckdtree": {}}

    # warm-up (not timed): thread pools, allocator, BLAS
    _ = z @ z.T
    forward_backward(z[:2000], 1)
    for rep in range(args.repeats):
        gemm.append(timed(lambda: z @ z.T)[0])
        for k in ks:
            t_f, t_b, ours[k] = forward_backward(z, k)
            fwd[k].append(t_f)
            bwd[k].append(t_b)
            t, ref["brute"][k] = timed(lambda k=k: sklearn_estimate(x, k, "brute"))
            sk_brute[k].append(t)
            t, ref["auto"][k] = timed(lambda k=k: sklearn_estimate(x, k, "auto"))
            sk_auto[k].append(t)
        print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr)

    med = statistics.median
    metrics: dict[str, float] = {"gemm_seconds": med(gemm)}
    if not args.skip_kdtree:
        t, ref["ckdtree"] = timed(lambda: ckdtree_estimates(x, ks))
        metrics["ckdtree_seconds_all_k"] = t  # one repeat, one query for every k
        metrics["ckdtree_over_gemm_all_k"] = t / med(gemm)
    goals: list[dict] = []
    for k in ks:
        m_f, m_b = med(fwd[k]), med(bwd[k])
        metrics[f"forward_seconds_k{k}"] = m_f
        metrics[f"backward_seconds_k{k}"] = m_b
        metrics[f"sklearn_brute_seconds_k{k}"] = med(sk_brute[k])
        metrics[f"sklearn_auto_seconds_k{k}"] = med(sk_auto[k])
        metrics[f"forward_over_gemm_k{k}"] = m_f / med(gemm)
        metrics[f"backward_over_forward_k{k}"] = m_b / m_f
        metrics[f"sklearn_brute_over_gemm_k{k}"] = med(sk_brute[k]) / med(gemm)
        metrics[f"sklearn_auto_over_gemm_k{k}"] = med(sk_auto[k]) / med(gemm)
        metrics[f"estimate_nats_k{k}"] = ours[k]
        for name, values in ref.items():
            if k in values:
                metrics[f"abs_diff_vs_{name}_nats_k{k}"] = abs(ours[k] - values[k])
        worst32 = max(metrics[f"abs_diff_vs_{name}_nats_k{k}"] for name in ref if k in ref[name])
        # float32 spacing at the estimate: the resolution of a float32 result
        metrics[f"float32_spacing_at_estimate_nats_k{k}"] = float(
            np.spacing(np.float32(abs(ours[k])))
        )
        # The same points in float64: agreement of the algorithm, free of float32 output rounding
        z64 = z.double()
        ours64 = float(knn_entropy(z64, k=k))
        metrics[f"estimate_float64_nats_k{k}"] = ours64
        ref64 = {"brute": sklearn_estimate(z64.numpy(), k, "brute")}
        if k in ref["ckdtree"]:
            ref64["ckdtree"] = ref["ckdtree"][k]  # cKDTree works in float64 anyway
        for name, value in ref64.items():
            metrics[f"abs_diff_float64_vs_{name}_nats_k{k}"] = abs(ours64 - value)
        worst64 = max(abs(ours64 - value) for value in ref64.values())
        goals += [
            {"goal": f"forward <= {GOAL_FORWARD_OVER_GEMM}x bare GEMM", "k": k,
             "value": m_f / med(gemm), "met": m_f / med(gemm) <= GOAL_FORWARD_OVER_GEMM},
            {"goal": f"backward <= {GOAL_BACKWARD_OVER_FORWARD}x forward", "k": k,
             "value": m_b / m_f, "met": m_b / m_f <= GOAL_BACKWARD_OVER_FORWARD},
            {"goal": f"float32 estimate equals references to {GOAL_ABS_DIFF_NATS} nats", "k": k,
             "value": worst32, "met": worst32 <= GOAL_ABS_DIFF_NATS},
            {"goal": f"float64 estimate equals references to {GOAL_ABS_DIFF_NATS} nats", "k": k,
             "value": worst64, "met": worst64 <= GOAL_ABS_DIFF_NATS},
        ]

    if args.big_n > 0:
        mem = measure_memory(args.big_n, d, ks[0])
        n_big = args.big_n
        metrics[f"peak_rss_bytes_n{n_big}"] = mem["peak_rss_bytes"]
        metrics[f"peak_rss_delta_bytes_n{n_big}"] = mem["peak_rss_bytes"] - mem["rss_before_bytes"]
        metrics[f"forward_seconds_n{n_big}_k{ks[0]}"] = mem["forward_seconds"]
        metrics[f"backward_seconds_n{n_big}_k{ks[0]}"] = mem["backward_seconds"]
        goals.append({"goal": f"N = {n_big}, d = {d} forward + backward within 4 GiB",
                      "k": ks[0], "value": mem["peak_rss_bytes"],
                      "met": mem["peak_rss_bytes"] <= GOAL_PEAK_BYTES})

    config = {
        "n": n, "d": d, "ks": list(ks), "repeats": args.repeats, "dtype": "float32",
        "big_n": args.big_n, "torch_threads": torch.get_num_threads(),
        "timing": "median wall seconds over repeats, interleaved; cKDTree: one repeat",
        "memory": "ru_maxrss of a fresh subprocess (peak) and its delta over the RSS "
                  "(/proc/self/statm) just before the forward pass",
        "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_average_1min_start": load_start,
        "load_average_1min_end": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
    raw = {"gemm": gemm, "forward": fwd, "backward": bwd, "sklearn_brute": sk_brute,
           "sklearn_auto": sk_auto}
    history = goals + [{"raw_seconds": raw}]
    return metrics, history, config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="points (default 10000)")
    parser.add_argument("--d", type=int, default=256, help="dimension (default 256)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5], help="k values (1 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--big-n", type=int, default=60_000,
                        help="N of the memory measurement; 0 skips it (default 60000)")
    parser.add_argument("--skip-kdtree", action="store_true", help="skip the slow cKDTree run")
    parser.add_argument("--no-record", action="store_true", help="print only, write no file")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.n, args.d, args.k)
        return

    if args.no_record:
        metrics, history, config = run(args)
    else:
        from ibcore.results import RunRecorder

        with RunRecorder(chapter="benchmarks", experiment="knn_entropy", profile="cpu", seed=0,
                         device=torch.device("cpu"), config={}) as rec:
            metrics, history, config = run(args)
            rec.config.update(config)
            rec.metrics.update(metrics)
            rec.history.extend(history)
        print(f"recorded {rec.path}", file=sys.stderr)

    for name, value in metrics.items():
        if "bytes" in name:
            print(f"{name:42s} {value / GIB:10.3f} GiB")
        elif isinstance(value, float) and (value == 0 or abs(math.log10(abs(value))) < 4):
            print(f"{name:42s} {value:10.4f}")
        else:
            print(f"{name:42s} {value:10.3e}")
    print("config:", json.dumps(config))
    for row in history[:-1]:
        print(f"goal k={row['k']}: {row['goal']:52s} value {row['value']:.4g}  met: {row['met']}")


if __name__ == "__main__":
    main()
