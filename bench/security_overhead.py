"""What end-to-end encryption and signing cost, measured in one run.

1. Throughput of each step on an adapter-sized update (the default e5-small LoRA adapter:
   r=8 on query/value plus the classification head) next to a plain copy of the same bytes.
2. Round wall time of a federation simulated with security on and off (same seed, same
   data): the ratio is the overhead a user sees. Target: at most 5%.

    python bench/security_overhead.py                 # 15 sites, 2 rounds each way
    python bench/security_overhead.py --sites de,fr,id --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from common.envelope import open_update, seal_update, sign_global, verify_global
from common.keys import generate_identity

# Trainable tensors of the default adapter: 12 layers x (q, v) x (A 8x384, B 384x8), plus the
# head (dense 384x384 + bias, out_proj 20x384 + bias).
ADAPTER_SHAPES = {
    **{f"layer{i}.{m}.lora_{ab}": (8, 384) if ab == "A" else (384, 8)
       for i in range(12) for m in ("query", "value") for ab in ("A", "B")},
    "classifier.dense.weight": (384, 384), "classifier.dense.bias": (384,),
    "classifier.out_proj.weight": (20, 384), "classifier.out_proj.bias": (20,),
}


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def step_throughput(kem: str, repeats: int = 30) -> dict[str, float]:
    rng = np.random.default_rng(0)
    update = {k: rng.standard_normal(s).astype(np.float32) for k, s in ADAPTER_SHAPES.items()}
    size = sum(v.nbytes for v in update.values())
    site, coordinator = generate_identity("de", kem=kem), generate_identity("coordinator", kem=kem)
    registry = {"de": site.public()}
    seal = lambda: seal_update(update, metrics={"num_examples": 1.0}, run_id="r", round=1,  # noqa
                               site="de", sender=site, coordinator=coordinator.public())
    blob = seal()
    payload, signature = sign_global(update, run_id="r", round=1, coordinator=coordinator)
    flat = b"".join(v.tobytes() for v in update.values())
    timings = {
        "plain copy": _best_of(lambda: bytearray(flat), repeats),
        "seal (serialize+sign+encrypt)": _best_of(seal, repeats),
        "open (decrypt+verify+decode)": _best_of(
            lambda: open_update(blob, coordinator=coordinator, registry=registry, run_id="r",
                                round=1, max_bytes=1 << 30), repeats),
        "sign global": _best_of(
            lambda: sign_global(update, run_id="r", round=1, coordinator=coordinator), repeats),
        "verify global": _best_of(
            lambda: verify_global(payload, signature, run_id="r", round=1,
                                  coordinator=coordinator.public()), repeats),
    }
    return {"size_bytes": size, **timings}


def round_times(sites: list[str], rounds: int, security: bool) -> list[float]:
    from common.config import load_config
    from server.simulation import simulate

    overrides = [f"federation.rounds={rounds}", f"security.enabled={str(security).lower()}",
                 "output.runs_dir=runs/bench"]
    if sites:
        overrides.append(f"federation.sites=[{', '.join(sites)}]")
    result = simulate(load_config(overrides=overrides))
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["wall_s"] for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="", help="comma-separated (default: all 15)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-federation", action="store_true")
    args = parser.parse_args()

    print("== per-step cost on one adapter update ==")
    for kem in ("x25519", "mlkem768-x25519"):
        result = step_throughput(kem)
        size = result.pop("size_bytes")
        copy = result["plain copy"]
        print(f"{kem}: update {size / 1e6:.2f} MB")
        for step, seconds in result.items():
            print(f"  {step:32s} {seconds * 1e3:7.2f} ms  {size / seconds / 1e6:8.0f} MB/s"
                  f"  {seconds / copy:6.1f}x copy")
    if args.skip_federation:
        return

    sites = [s for s in args.sites.split(",") if s]
    print("\n== round wall time, security on vs off ==")
    on = round_times(sites, args.rounds, security=True)
    off = round_times(sites, args.rounds, security=False)
    print(f"security on : rounds {[round(t, 1) for t in on]} s, median {statistics.median(on):.1f}")
    print(f"security off: rounds {[round(t, 1) for t in off]} s, median {statistics.median(off):.1f}")
    overhead = statistics.median(on) / statistics.median(off) - 1
    print(f"overhead: {overhead * 100:+.1f}% of round wall time (target <= 5%)")


if __name__ == "__main__":
    main()
