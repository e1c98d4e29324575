"""Quality of every aggregation strategy on the real federation, against local-only and
centralized training, with the same seeds, data and per-site compute.

For each arm the learning rate is chosen on the validation split (the mean macro-F1 over the
countries) from --lrs, then the arm is run once more with that rate and scored on test. Writes
``results.md`` (per-country macro-F1 per arm, mean, worst country, bytes sent per site per
round), ``results.json`` and ``quality.svg`` (mean and worst macro-F1 per arm) into --out.

    python bench/quality.py                                  # every strategy, lr 1e-3 only
    python bench/quality.py --lrs 5e-4,1e-3,2e-3             # tuned on validation (4x longer)
    python bench/quality.py --strategies fedavg,exact-lora --sites de,fr,id --rounds 3
    python bench/quality.py --reuse                          # finish a cut-short run

Each arm is one `fedsilo simulate` of the default federation (about 17 minutes on 2 CPU
cores at 8 rounds); local-only and centralized come from the fedavg run's baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from common.config import load_config
from common.offline import apply_offline_switches
from server.simulation import simulate
from strategies import REGISTRY


def run_arm(strategy: str, lr: float, split: str, args, baselines: bool) -> dict:
    overrides = [f"strategy.name={strategy}", f"train.learning_rate={lr}",
                 f"data.eval_split={split}", f"output.runs_dir={args.out / 'runs'}",
                 f"name=quality-{strategy}-{split}"]
    if args.sites:
        overrides.append(f"federation.sites=[{args.sites}]")
    if args.rounds:
        overrides.append(f"federation.rounds={args.rounds}")
    if baselines:
        overrides.append("simulation.baselines=true")
    overrides += args.set or []
    started = time.perf_counter()
    result = simulate(load_config(overrides=overrides))
    table = result.table
    rows = {row.site: row.scores for row in table.complete_rows()}
    return {"run_dir": str(result.run_dir), "wall_s": time.perf_counter() - started,
            "rows": rows, "mean": {arm: table.mean(arm) for arm in table.arms},
            "worst": {arm: table.worst(arm) for arm in table.arms},
            "bytes_per_site_round": sent_bytes(result.run_dir)}


def sent_bytes(run_dir: Path) -> float:
    """Mean size of one site's sealed update per round, from the coordinator's audit log."""
    path = run_dir / "audit" / "coordinator.jsonl"
    largest: dict[tuple[str, int], int] = {}  # the update, not the evaluation reply
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("direction") == "received" and entry.get("round", 0) > 0:
            key = (entry["peer"], entry["round"])
            largest[key] = max(largest.get(key, 0), int(entry.get("size_bytes") or 0))
    sizes = [size for size in largest.values() if size]
    return statistics.mean(sizes) if sizes else float("nan")


def svg_chart(arms: list[tuple[str, float, float]], path: Path) -> None:
    """A dependency-free bar chart: mean (dark) and worst-country (light) macro-F1 per arm."""
    bar, gap = 14, 10
    left = 16 + 7 * max(len(name) for name, _, _ in arms)  # room for the longest name
    width = left + 320
    rows = []
    for i, (name, mean, worst) in enumerate(arms):
        y = 30 + i * (2 * bar + gap)
        rows.append(f'<text x="{left - 6}" y="{y + bar + 4}" text-anchor="end" '
                    f'font-size="12">{name}</text>')
        for j, (value, colour) in enumerate(((mean, "#2b6cb0"), (worst, "#90cdf4"))):
            rows.append(f'<rect x="{left}" y="{y + j * bar}" width="{300 * value:.1f}" '
                        f'height="{bar - 2}" fill="{colour}"/>')
            rows.append(f'<text x="{left + 300 * value + 4:.1f}" y="{y + j * bar + bar - 4}" '
                        f'font-size="10">{value:.3f}</text>')
    height = 40 + len(arms) * (2 * bar + gap)
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        '<text x="10" y="18" font-size="13">macro-F1 on test: mean (dark), worst country '
        '(light)</text>' + "".join(rows) + "</svg>\n", encoding="utf-8")


def summary(arms: list[tuple[str, str, dict]], sites: list[str]) -> str:
    """One line per arm: mean and worst macro-F1, silos at or above local-only, bytes sent."""
    local = next((r["rows"] for name, k, r in arms if k == "local"), None)
    lines = ["| arm | mean macro-F1 | worst country | countries >= local-only | "
             "KB sent per site per round |", "|---|---|---|---|---|"]
    for name, key, r in arms:
        scores = {site: r["rows"].get(site, {}).get(key, float("nan")) for site in sites}
        wins = ("-" if local is None or key == "local" else
                f"{sum(scores[s] >= local[s]['local'] for s in sites)} of {len(sites)}")
        sent = ("-" if key in ("local", "centralized")
                else f"{r['bytes_per_site_round'] / 1024:.0f}")
        lines.append(f"| {name} | {r['mean'][key]:.3f} | {r['worst'][key][1]:.3f} "
                     f"({r['worst'][key][0]}) | {wins} | {sent} |")
    return "\n".join(lines) + "\n"


def run_settings(args) -> dict:
    """What decides an arm's result besides its strategy: reused arms must share it."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"commit": commit or "unknown", "lrs": args.lrs, "sites": args.sites,
            "rounds": args.rounds, "set": args.set or []}


def reusable(saved: Path, settings: dict) -> dict:
    """The finished arms of an earlier run with the same settings, or exit saying why not."""
    if not saved.exists():
        return {}
    recorded = saved.with_name("settings.json")
    earlier = json.loads(recorded.read_text()) if recorded.exists() else None
    if earlier != settings:
        raise SystemExit(f"--reuse: {saved} came from other settings or code "
                         f"({earlier} here, {settings} now); use another --out")
    return json.loads(saved.read_text())


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_report(results: dict, strategies: list[str], out: Path) -> str:
    """The table and chart of the arms finished so far (rewritten after every arm)."""
    strategies = [name for name in strategies if name in results]
    first = results[strategies[0]]
    arms = [("local-only", "local", first)] if "local" in first["mean"] else []
    for strategy in strategies:
        arms.append((strategy, "federated", results[strategy]))
        if "personal" in results[strategy]["mean"]:
            arms.append((f"{strategy} + own head", "personal", results[strategy]))
    if "centralized" in first["mean"]:
        arms.append(("centralized", "centralized", first))
    sites = list(first["rows"])
    lines = ["| country | " + " | ".join(name for name, _, _ in arms) + " |",
             "|---|" + "---|" * len(arms)]
    for site in sites:
        cells = [f"{r['rows'].get(site, {}).get(key, float('nan')):.3f}" for _, key, r in arms]
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"{r['mean'][k]:.3f}" for _, k, r in arms) + " |")
    lines.append("| **worst** | " + " | ".join(
        f"{r['worst'][k][1]:.3f} ({r['worst'][k][0]})" for _, k, r in arms) + " |")
    lines.append("| KB sent per site per round | " + " | ".join(
        "-" if k in ("local", "centralized") else f"{r['bytes_per_site_round'] / 1024:.0f}"
        for _, k, r in arms) + " |")
    lines.append("| learning rate | " + " | ".join(f"{r['lr']:g}" for _, _, r in arms) + " |")
    text = "\n".join(lines) + "\n\n" + summary(arms, sites)
    (out / "results.md").write_text(text, encoding="utf-8")
    svg_chart([(name, r["mean"][k], r["worst"][k][1]) for name, k, r in arms],
              out / "quality.svg")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=",".join(REGISTRY))
    parser.add_argument("--lrs", default="1e-3", help="Learning rates tried on validation.")
    parser.add_argument("--sites", default="", help="Comma-separated (default: the config's).")
    parser.add_argument("--rounds", type=int, default=0, help="Default: the config's.")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-quality"))
    parser.add_argument("--set", action="append", help="Extra config override (repeatable).")
    parser.add_argument("--reuse", action="store_true",
                        help="Keep the arms already in --out/results.json and run only the missing "
                             "ones (refused unless they came from the same commit and settings).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    apply_offline_switches(hub_offline=False)
    strategies = args.strategies.split(",")
    lrs = [float(x) for x in args.lrs.split(",")]
    if "fedavg" in strategies:  # its run also trains the local-only and centralized arms
        strategies.remove("fedavg")
        strategies.insert(0, "fedavg")

    saved, settings = args.out / "results.json", run_settings(args)
    results = reusable(saved, settings) if args.reuse else {}
    for strategy in strategies:
        if strategy in results:
            print(f"{strategy}: reused from {saved}")
            continue
        best_lr = lrs[0]
        if len(lrs) > 1:
            scores = {lr: run_arm(strategy, lr, "validation", args, False)["mean"]["federated"]
                      for lr in lrs}
            best_lr = max(scores, key=scores.get)
            print(f"{strategy}: validation mean macro-F1 by lr {scores}; chose {best_lr}")
        results[strategy] = run_arm(strategy, best_lr, "test", args,
                                    baselines=strategy == strategies[0])
        results[strategy]["lr"] = best_lr
        write_atomically(saved, json.dumps(results, indent=1))
        write_atomically(args.out / "settings.json", json.dumps(settings, indent=1))
        print(f"{strategy}: mean {results[strategy]['mean']}")
        write_report(results, strategies, args.out)

    print(write_report(results, strategies, args.out))
    print(f"written: {args.out / 'results.md'}, {args.out / 'quality.svg'}")


if __name__ == "__main__":
    main()
