"""Load generator for `lbm serve` on loopback: throughput, latency percentiles, transport overhead.

    python benchmarks/serve_load.py --out serve_load.json           # small flow policy, 1/4/16 clients
    python benchmarks/serve_load.py --quick --out /tmp/serve.json   # a few seconds

The server runs in its own process (as in deployment; clients in this process would otherwise
share its GIL) with a freshly initialized checkpoint (tests/serve_helpers.py): serving cost does not
depend on what the weights learned. Everything is bounded: a fixed number of requests per client
and a wall-clock cap per level, loopback only.

Figures:
* in-process ``predict_chunk`` latency for one observation (the baseline);
* per level (1, 4, 16 concurrent clients): throughput (requests/s), client round-trip p50/p95/p99,
  mean server batch size;
* transport overhead, paired per request: client round trip minus the server's own time in the
  model (``server_timing.infer_ms``), at 1 client. Target: p50 under 2 ms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def server_main(ckpt: str, threads: int, max_batch: int, max_wait_ms: float, port_q, stop_ev) -> None:
    import torch

    from lbm.serve import PolicyServer, ServerConfig
    from lbm.train import load_policy

    torch.set_num_threads(threads)
    server = PolicyServer(
        load_policy(ckpt), ServerConfig(port=0, max_batch=max_batch, max_wait_ms=max_wait_ms, metrics_every_s=0)
    )
    server.start()
    port_q.put(server.port)
    stop_ev.wait()
    server.stop()


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(a.mean()), "n": int(a.size)}


def _obs(rng: np.random.Generator, prompt: str) -> dict:
    return {"state": rng.standard_normal(39).astype(np.float32) * 0.1, "prompt": prompt}


def run_level(url: str, clients: int, requests: int, max_s: float, prompt: str) -> dict:
    """``clients`` threads, each its own connection, each sending up to ``requests`` requests."""
    from lbm.serve import Client, fetch_metrics

    before = fetch_metrics(url)
    rtt: list[float] = []
    overhead: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_s
    barrier = threading.Barrier(clients)

    def worker(k: int) -> None:
        rng = np.random.default_rng(k)
        with Client(url) as client:
            client.infer(_obs(rng, prompt))  # warm the connection
            barrier.wait()
            mine, extra = [], []
            for _ in range(requests):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                reply = client.infer(_obs(rng, prompt))
                ms = 1000 * (time.perf_counter() - t0)
                mine.append(ms)
                extra.append(ms - reply["server_timing"]["infer_ms"])
            with lock:
                rtt.extend(mine)
                overhead.extend(extra)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = fetch_metrics(url)
    batches = after["batches"] - before["batches"]
    served = after["requests"] - before["requests"]
    return {
        "clients": clients,
        "requests": len(rtt),
        "wall_s": wall,
        "throughput_rps": len(rtt) / wall,
        "latency_ms": _pct(rtt),
        "overhead_ms": _pct(overhead),
        "mean_batch_size": served / batches if batches else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("serve_load.json"), help="JSON file for the figures")
    parser.add_argument("--quick", action="store_true", help="small run (tiny policy, few requests)")
    parser.add_argument("--size", default=None, help="policy size (default small; tiny with --quick)")
    parser.add_argument("--requests", type=int, default=None, help="requests per client per level")
    parser.add_argument("--levels", default="1,4,16", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="wall-clock cap per level")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (and the in-process baseline)")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="server batching wait")
    args = parser.parse_args(argv)
    size = args.size or ("tiny" if args.quick else "small")
    requests = args.requests or (20 if args.quick else 200)
    levels = [int(x) for x in args.levels.split(",")]

    import torch

    from lbm.schema import Observation

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test fixture that writes it
    from lbm.train import load_policy
    from serve_helpers import INSTRUCTION, fresh_checkpoint

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lbm-serve-bench-"))
    ckpt = fresh_checkpoint(tmp / "ckpt", "flow", size)

    # Baseline: the same policy in this process, one observation per call.
    policy = load_policy(ckpt)
    rng = np.random.default_rng(0)
    local = []
    for i in range(requests + 5):
        obs = Observation(state=rng.standard_normal(39).astype(np.float32) * 0.1, instruction=INSTRUCTION)
        t0 = time.perf_counter()
        policy.predict_chunk([obs], [policy.reset(i)])
        if i >= 5:
            local.append(1000 * (time.perf_counter() - t0))
    del policy

    ctx = mp.get_context("spawn")
    port_q, stop_ev = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=server_main, args=(str(ckpt), args.threads, 16, args.max_wait_ms, port_q, stop_ev), daemon=True)
    proc.start()
    try:
        url = f"ws://127.0.0.1:{port_q.get(timeout=120)}"
        from tqdm import tqdm

        results = [
            run_level(url, c, requests, args.max_seconds, INSTRUCTION) for c in tqdm(levels, desc="load levels", file=sys.stderr)
        ]
    finally:
        stop_ev.set()
        proc.join(15)
        if proc.is_alive():
            proc.terminate()

    inproc = _pct(local)
    one = next((r for r in results if r["clients"] == 1), results[0])
    figures = {
        "policy": f"flow-{size} (fresh weights)",
        "torch_threads": args.threads,
        "requests_per_client": requests,
        "in_process_ms": inproc,
        "levels": results,
        "overhead_p50_ms_vs_in_process": one["latency_ms"]["p50"] - inproc["p50"],
        "overhead_p50_ms_paired": one["overhead_ms"]["p50"],
        "target_p50_overhead_ms": 2.0,
    }
    print(
        f"in-process predict_chunk (B=1, flow-{size}): p50 {inproc['p50']:.2f} ms  p95 {inproc['p95']:.2f}  p99 "
        f"{inproc['p99']:.2f}"
    )
    print(f"{'clients':>7} {'req':>5} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'batch':>6} {'ovh p50':>8}")
    for r in results:
        lat = r["latency_ms"]
        mb = "-" if r["mean_batch_size"] is None else f"{r['mean_batch_size']:.2f}"
        print(
            f"{r['clients']:>7} {r['requests']:>5} {r['throughput_rps']:>8.1f} {lat['p50']:>8.2f} {lat['p95']:>8.2f} "
            f"{lat['p99']:>8.2f} {mb:>6} {r['overhead_ms']['p50']:>8.2f}"
        )
    print(
        f"transport overhead at 1 client, p50: {figures['overhead_p50_ms_paired']:.2f} ms paired per request "
        f"({figures['overhead_p50_ms_vs_in_process']:.2f} ms vs in-process p50); target < 2 ms"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
