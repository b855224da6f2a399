#!/usr/bin/env python3
"""Merges the per-run JSON files of tools/bench_all.sh (tlengine bench, bench_pytorch.py eager and --compile)
into one results JSON and a markdown side-by-side table.

  python3 tools/bench_table.py --out bench/results-DATE.json --markdown bench/results-DATE.md RUN.json...

Ratios: "img/s vs eager" = tlengine img/s / PyTorch eager img/s (above 1: tlengine is faster); "vs compiled" the
same against torch.compile; "memory vs eager" = tlengine peak / PyTorch peak (below 1: tlengine is leaner).
Peak memory is tlengine's allocator peak and torch.cuda.max_memory_allocated, both reset once the model,
optimizer and batch exist. On the CPU (tools/bench_all.sh with DEVICE=cpu) PyTorch reports no peak memory, so
its peak and "memory vs eager" columns show "–"; the thread count of each run ("threads" in bench_pytorch.py's
JSON, or --meta threads=N for all runs) is shown with the device. --meta KEY=VALUE adds machine facts (cpu,
threads, ...) to the results JSON.
"""
import argparse
import datetime
import json
import sys

ENGINES = {"tlengine": "tlengine", "pytorch-eager": "pytorch_eager", "pytorch-compile": "pytorch_compile"}
MODE_ORDER = {"full": 0, "last_block": 1, "head": 2}


def load_runs(paths):
    configs = {}
    for path in paths:
        try:
            with open(path) as f:
                run = json.load(f)
        except (OSError, ValueError) as e:
            print(f"bench_table.py: skipping {path}: {e}", file=sys.stderr)
            continue
        engine = ENGINES.get(run.get("engine"))
        if engine is None:
            print(f"bench_table.py: skipping {path}: unknown engine {run.get('engine')!r}", file=sys.stderr)
            continue
        key = (run["model"], run["mode"], run["precision"], run["batch"], run["image_size"])
        entry = configs.setdefault(key, {"model": key[0], "mode": key[1], "precision": key[2], "batch": key[3],
                                         "image_size": key[4]})
        entry[engine] = run
    return [configs[k] for k in sorted(configs, key=lambda k: (k[0], MODE_ORDER.get(k[1], 9), k[2], k[3], k[4]))]


def num(value, digits):
    return "–" if value is None else f"{value:.{digits}f}"


def get(entry, engine, field):
    run = entry.get(engine)
    return None if run is None else run.get(field)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def gb(value):
    return None if value is None else value / 1e9


def device_label(run, meta):
    threads = run.get("threads", meta.get("threads"))
    return run["device"] + (f" ({threads} threads)" if threads and run["device"] == "cpu" else "")


def markdown(configs, title, meta):
    lines = [f"# {title}", "",
             "| model | mode | prec | tlengine ms | img/s | peak GB | TFLOP/s | eager ms | img/s | peak GB "
             "| compiled ms | img/s | compile s | img/s vs eager | img/s vs compiled | memory vs eager |",
             "|" + "---|" * 16]
    for c in configs:
        tl_ips = get(c, "tlengine", "images_per_s")
        eager_ips = get(c, "pytorch_eager", "images_per_s")
        comp_ips = get(c, "pytorch_compile", "images_per_s")
        tl_peak = get(c, "tlengine", "peak_bytes")
        eager_peak = get(c, "pytorch_eager", "peak_bytes")
        cells = [c["model"], c["mode"], c["precision"],
                 num(get(c, "tlengine", "median_ms"), 2), num(tl_ips, 0), num(gb(tl_peak), 2),
                 num(get(c, "tlengine", "tflops"), 1),
                 num(get(c, "pytorch_eager", "median_ms"), 2), num(eager_ips, 0), num(gb(eager_peak), 2),
                 num(get(c, "pytorch_compile", "median_ms"), 2), num(comp_ips, 0),
                 num(get(c, "pytorch_compile", "compile_s"), 0),
                 num(ratio(tl_ips, eager_ips), 2) + ("x" if ratio(tl_ips, eager_ips) else ""),
                 num(ratio(tl_ips, comp_ips), 2) + ("x" if ratio(tl_ips, comp_ips) else ""),
                 num(ratio(tl_peak, eager_peak), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    devices = sorted({device_label(run, meta) for c in configs for e in ENGINES.values() if (run := c.get(e))})
    lines += ["", "Devices: " + ", ".join(devices) if devices else "Devices: none"]
    lines += [f"{k}: {v}" for k, v in meta.items()] + [""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="JSON files written by tlengine bench --json / bench_pytorch.py --json")
    p.add_argument("--out", required=True, help="merged results JSON")
    p.add_argument("--markdown", help="markdown table")
    p.add_argument("--title", default=f"Training-step benchmark, {datetime.date.today().isoformat()}")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="a machine fact for the results JSON and the table (repeatable)")
    a = p.parse_args()
    meta = {}
    for item in a.meta:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bench_table.py: --meta {item!r}: expected KEY=VALUE")
        meta[key] = value
    configs = load_runs(a.runs)
    if not configs:
        raise SystemExit("bench_table.py: no valid run files")
    with open(a.out, "w") as f:
        json.dump({"date": datetime.date.today().isoformat(), **meta, "configs": configs}, f, indent=1)
        f.write("\n")
    table = markdown(configs, a.title, meta)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table)
    print(table)


if __name__ == "__main__":
    main()
