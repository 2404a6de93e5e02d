"""Benchmark: normprobe's weighted cosine kNN against scikit-learn and faiss-cpu.

Problem: a 50k-point bank and 10k queries (``--bank``, ``--queries``), 10 classes, D = 128 and
512, k = 200, weights exp(sim / T) with T = 0.1. The data are seeded Gaussian clusters with
random norms, so predictions are non-trivial and the normalisation matters.

Each run of a method is a fresh subprocess (so that its peak resident memory, ``ru_maxrss``, is
its own), timed end to end from un-normalised numpy arrays to predicted labels; the methods
take turns for ``--repeats`` rounds and the best wall time counts (CPU time is shown too: on a
loaded machine it is the steadier measure). Every library gets ``--threads`` threads:

* ``sklearn``: ``KNeighborsClassifier(metric="cosine", algorithm="brute", n_neighbors=k,
  weights=lambda d: exp((1 - d) / T))`` (scikit-learn passes cosine *distances* to the callable).
* ``faiss``: normalise, ``IndexFlatIP`` search for k neighbours, then the same vote in numpy.
* ``normprobe``: ``KNNClassifier(k, T).fit(bank, labels).predict(queries)`` (on a CPU with
  AVX512-BF16 or AMX, its exact bfloat16 candidate pass with a float32 re-score);
* ``normprobe-fp32``: the same with ``bf16_prefilter=False`` (float32 GEMM + exact top-k), the
  path CPUs without bfloat16 instructions take.

Agreement is the fraction of queries whose predicted label equals scikit-learn's. Speed is
reported, never asserted: on a shared machine timings are noisy.

    python benchmarks/bench_knn.py [--dims 128 512] [--repeats 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from typing import Any

import numpy as np
from fresh_process import pin_child_threads, run_fresh

K = 200
TEMPERATURE = 0.1
N_CLASSES = 10


def make_data(n_bank: int, n_queries: int, dim: int, seed: int) -> tuple[np.ndarray, ...]:
    """Seeded clustered embeddings: class centre + isotropic noise, times a random norm."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLASSES, dim)).astype(np.float32)
    # clusters overlap: kNN accuracy is about 85 % at both D = 128 and D = 512 (the centres
    # separate more with D, hence the sqrt(D) noise)
    noise = 4.0 * math.sqrt(dim / 128)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, N_CLASSES, n)
        x = centres[y] + noise * rng.standard_normal((n, dim)).astype(np.float32)
        x *= rng.lognormal(0.0, 0.5, (n, 1)).astype(np.float32)
        return x, y

    bank, bank_y = sample(n_bank)
    queries, query_y = sample(n_queries)
    return bank, bank_y, queries, query_y


def _vote(sims: np.ndarray, idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
    weights = np.exp(sims.astype(np.float64) / TEMPERATURE)
    votes = np.zeros((sims.shape[0], N_CLASSES))
    np.add.at(votes, (np.arange(sims.shape[0])[:, None], labels[idx]), weights)
    return votes.argmax(axis=1)


def _sklearn_weights(dist: np.ndarray) -> np.ndarray:
    return np.exp((1.0 - dist) / TEMPERATURE)


def run_sklearn(bank: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=K, metric="cosine", algorithm="brute", weights=_sklearn_weights)
    return clf.fit(bank, labels).predict(queries)


def run_faiss(bank: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    bank_n = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries_n = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank_n)
    sims, idx = index.search(queries_n, K)
    return _vote(sims, idx, labels)


def run_normprobe(bank: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    from normprobe.knn import KNNClassifier

    return KNNClassifier(k=K, temperature=TEMPERATURE).fit(bank, labels).predict(queries)


def run_normprobe_fp32(bank: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    from normprobe.knn import KNNClassifier

    classifier = KNNClassifier(k=K, temperature=TEMPERATURE, bf16_prefilter=False)
    return classifier.fit(bank, labels).predict(queries)


METHODS = {
    "sklearn": run_sklearn,
    "faiss": run_faiss,
    "normprobe": run_normprobe,
    "normprobe-fp32": run_normprobe_fp32,
}


def _child(method: str, args: dict[str, Any], conn: Any) -> None:
    import torch

    torch.set_num_threads(args["threads"])
    bank, bank_y, queries, query_y = make_data(args["bank"], args["queries"], args["dim"], args["seed"])
    if method == "faiss":  # imports outside the timed region, like sklearn's own import
        import faiss

        faiss.omp_set_num_threads(args["threads"])
    elif method.startswith("normprobe"):
        import normprobe.knn  # noqa: F401
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0, t0 = time.process_time(), time.perf_counter()
    pred = np.asarray(METHODS[method](bank, bank_y, queries))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    conn.send(
        {
            "wall_s": wall,
            "cpu_s": cpu,
            "pred": pred,
            "accuracy": float((pred == query_y).mean()),
            "rss_before_mib": rss_before / 1024,
            "rss_peak_mib": rss_peak / 1024,
        }
    )
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bank", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for every library")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    opts = parser.parse_args()
    pin_child_threads(opts.threads)

    load_before = os.getloadavg()
    print(
        f"bank={opts.bank} queries={opts.queries} k={K} T={TEMPERATURE} classes={N_CLASSES} "
        f"threads={opts.threads} repeats={opts.repeats} cpus={os.cpu_count()} "
        f"load average before={load_before[0]:.1f}"
    )
    print(
        f"{'D':>4} {'method':>10} {'best s':>7} {'median s':>8} {'cpu s':>6} {'sklearn/x':>9} "
        f"{'faiss/x':>7} {'peak RSS MiB':>12} {'+MiB':>5} {'agree':>7} {'acc':>6}"
    )
    rows = []
    for dim in opts.dims:
        args = {
            "bank": opts.bank,
            "queries": opts.queries,
            "dim": dim,
            "seed": opts.seed,
            "threads": opts.threads,
        }
        # rounds interleave the methods, so that a change in the machine's load hits all alike
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
        for _ in range(opts.repeats):
            for method in METHODS:
                runs[method].append(run_fresh(_child, method, args))
        best = {m: min(r["wall_s"] for r in rs) for m, rs in runs.items()}
        reference = runs["sklearn"][0]["pred"]
        for method, rs in runs.items():
            pred = rs[0]["pred"]
            row = {
                "dim": dim,
                "method": method,
                "best_s": best[method],
                "median_s": float(np.median([r["wall_s"] for r in rs])),
                "wall_s": [r["wall_s"] for r in rs],
                "best_cpu_s": min(r["cpu_s"] for r in rs),
                "speedup_vs_sklearn": best["sklearn"] / best[method],
                "speedup_vs_faiss": best["faiss"] / best[method],
                "peak_rss_mib": max(r["rss_peak_mib"] for r in rs),
                "rss_increase_mib": max(r["rss_peak_mib"] - r["rss_before_mib"] for r in rs),
                "agreement_with_sklearn": float((pred == reference).mean()),
                "n_disagree": int((pred != reference).sum()),
                "accuracy": rs[0]["accuracy"],
            }
            rows.append(row)
            print(
                f"{dim:>4} {method:>10} {row['best_s']:>7.2f} {row['median_s']:>8.2f} {row['best_cpu_s']:>6.2f} "
                f"{row['speedup_vs_sklearn']:>9.2f} {row['speedup_vs_faiss']:>7.2f} "
                f"{row['peak_rss_mib']:>12.0f} {row['rss_increase_mib']:>5.0f} "
                f"{row['agreement_with_sklearn']:>7.4f} {row['accuracy']:>6.3f}",
                flush=True,
            )
    load_after = os.getloadavg()
    print(f"load average after={load_after[0]:.1f} (timings are wall-clock on a shared machine)")
    if opts.out:
        meta = {
            "bank": opts.bank,
            "queries": opts.queries,
            "k": K,
            "temperature": TEMPERATURE,
            "classes": N_CLASSES,
            "repeats": opts.repeats,
            "seed": opts.seed,
            "threads": opts.threads,
            "cpus": os.cpu_count(),
            "load_average_before": load_before[0],
            "load_average_after": load_after[0],
        }
        with open(opts.out, "w") as f:
            json.dump({"settings": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
