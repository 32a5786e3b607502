"""The sweep's report: the table, the Pareto frontier (fastest cell at each accuracy) and its plot.

Plain functions over the sweep's `CellResult`s (`stages.sweep`); writes sweep.json, sweep.md,
sweep.csv and pareto.png as one set.
"""

import csv
import dataclasses
import io
import json

from pipeline.core import artifacts


def accuracy_metric(results):
    """("top1", …) when every finished cell has labelled top-1, else agreement with its float model."""
    done = [r for r in results if r.report]
    if done and all(r.report["tflite"].get("top1") is not None for r in done):
        return "top1", "top-1 accuracy (eval labels)"
    return "agreement_top1", "top-1 agreement with the cell's float model"


def metric_of(result, metric):
    return result.report["tflite"]["top1"] if metric == "top1" else result.report["agreement_top1"]


def pareto_frontier(results, metric):
    """The cells no other cell beats on both latency (1 thread) and the metric, fastest first."""
    timed = sorted((r for r in results if r.report and r.latency),
                   key=lambda r: (r.latency["1"]["median"], -metric_of(r, metric)))
    frontier, best = [], float("-inf")
    for result in timed:
        if metric_of(result, metric) > best:
            frontier.append(result)
            best = metric_of(result, metric)
    return frontier


def rows(results, metric):
    out = []
    for r in results:
        row = {"cell": r.cell.name, "state": r.state, **dict(r.cell.flags)}
        if r.report:
            row.update({
                "float_top1": r.report["float"].get("top1"), "tflite_top1": r.report["tflite"].get("top1"),
                "agreement_top1": r.report["agreement_top1"], "kl_mean": r.report["kl_mean"],
                "size_bytes": r.report["size_bytes"], "macs": r.report.get("macs"),
                "parity_passed": r.exit_code == 0,
                "latency_1t_ms": (r.latency or {}).get("1", {}).get("median"),
                "tflite_sha256": r.report["sha256"].get("model"),
            })
        row["error"] = r.error
        out.append(row)
    return out


def render_csv(table):
    columns = list(dict.fromkeys(k for row in table for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def _pct(value):
    return "—" if value is None else f"{value:.2%}"


def render_markdown(results, metric, frontier, latency, machine_line):
    _, metric_name = accuracy_metric(results)
    names = {r.cell.name for r in frontier}
    lines = ["# Sweep", "", f"{len(results)} cells: "
             + ", ".join(f"{sum(r.state == s for r in results)} {s}" for s in ("exported", "reused", "failed")),
             ""]
    if latency:
        lines += [f"Latency: 1-thread median of {latency['latency'][0]['runs'] if latency['latency'] else 0} "
                  f"invokes per model, all models interleaved in one run ({latency['where']}); "
                  f"{machine_line}. Milliseconds hold for this machine and this run; the ratios "
                  "(× fastest) are what carries to another machine of the same class.", ""]
    lines += ["| cell | float top-1 | tflite top-1 | agreement | KL | size MB | 1-thread ms | "
              "× fastest | frontier |", "|---|---|---|---|---|---|---|---|---|"]
    fastest = min((r.latency["1"]["median"] for r in results if r.latency), default=None)
    for r in results:
        if not r.report:
            lines.append(f"| {r.cell.name} | ✗ failed | | | | | | | |")
            continue
        ms = (r.latency or {}).get("1", {}).get("median")
        lines.append(f"| {r.cell.name} | {_pct(r.report['float'].get('top1'))} | "
                     f"{_pct(r.report['tflite'].get('top1'))} | {r.report['agreement_top1']:.2%} | "
                     f"{r.report['kl_mean']:.5f} | {r.report['size_bytes'] / 1e6:.2f} | "
                     f"{'—' if ms is None else f'{ms:.3f}'} | "
                     f"{'—' if ms is None else f'{ms / fastest:.2f}'} | {'★' if r.cell.name in names else ''} |")
    lines += ["", f"## Frontier ({metric_name} against 1-thread latency)", "",
              "Each is the fastest cell at its accuracy; every other cell is slower and no more "
              "accurate than one of them. To make one on its own:", ""]
    for r in frontier:
        lines += [f"- {r.cell.name} ({metric_of(r, metric):.2%}, {r.latency['1']['median']:.3f} ms, "
                  f"{r.report['size_bytes'] / 1e6:.2f} MB):", "",
                  "  ```", "  " + r.cell.command(f"artifacts/{r.cell.label}"), "  ```", ""]
    failed = [r for r in results if r.state == "failed"]
    if failed:
        lines += ["## Failed cells", ""]
        lines += [f"- ✗ {r.cell.name}: {r.error} (log: logs/{r.cell.name}.log)" for r in failed]
        lines.append("")
    below = [r for r in results if r.report and r.exit_code == 1]
    if below:
        lines += ["## Cells below their parity thresholds", ""]
        lines += [f"- {r.cell.name}: see {r.folder}/report.md" for r in below]
        lines.append("")
    return "\n".join(lines)


def pareto_plot(results, metric, frontier, title):
    """pareto.png: the metric against 1-thread latency, marker area ∝ size, the frontier labelled."""
    from pipeline.core.figures import png_bytes, pyplot

    plt = pyplot()
    import matplotlib.ticker

    _, metric_name = accuracy_metric(results)
    timed = [r for r in results if r.report and r.latency]
    figure, axis = plt.subplots(figsize=(8, 5.5), dpi=110)
    groups = {}
    for r in timed:
        groups.setdefault(dict(r.cell.flags).get("quantize", "int8"), []).append(r)
    biggest = max((r.report["size_bytes"] for r in timed), default=1)
    for (group, members), marker in zip(sorted(groups.items()), "os^Dvp*"):
        axis.scatter([r.latency["1"]["median"] for r in members], [metric_of(r, metric) for r in members],
                     s=[30 + 400 * r.report["size_bytes"] / biggest for r in members], marker=marker,
                     alpha=0.6, label=f"--quantize {group}")
    axis.plot([r.latency["1"]["median"] for r in frontier], [metric_of(r, metric) for r in frontier],
              "k--", drawstyle="steps-post", linewidth=1, label="Pareto frontier")
    for r in frontier:
        axis.annotate(r.cell.label, (r.latency["1"]["median"], metric_of(r, metric)),
                      textcoords="offset points", xytext=(6, -10), fontsize=8)
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.tick_params(axis="x", which="minor", labelsize=7)
    axis.set_xlabel("1-thread median latency (ms, log scale)")
    axis.set_ylabel(metric_name)
    axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axis.set_title(title + "\n(marker area ∝ model size)", fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return png_bytes(figure)


def write_sweep(cfg, results, latency, command, timings=None):
    from pipeline.stages.report import machine_line

    metric, metric_name = accuracy_metric(results)
    frontier = pareto_frontier(results, metric)
    machine = (latency or {}).get("device") or {}
    where = machine_line(machine) if machine else "no latency measured"
    short = (f"{machine.get('cpu_model') or machine.get('machine')}, {machine.get('cpu_count')} cores, "
             f"{machine.get('machine_class')}") if machine else "no latency measured"
    table = rows(results, metric)
    summary = {
        "command": command,
        "config": {**dataclasses.asdict(cfg), "latency_threads": list(cfg.latency_threads)},
        "metric": metric,
        "cells": [{**row, "folder": f"cells/{row['cell']}", "key": r.cell.key, "latency_ms": r.latency,
                   "export_command": r.cell.command(f"artifacts/{r.cell.label}")}
                  for row, r in zip(table, results)],
        "frontier": [r.cell.name for r in frontier],
        "timings_s": timings or {},
        "latency": None if not latency else {"where": latency["where"], "device": machine,
                                             "runtime": latency.get("runtime"),
                                             "runs": latency["latency"][0]["runs"] if latency["latency"] else 0},
    }
    files = {"sweep.json": json.dumps(summary, indent=2) + "\n",
             "sweep.csv": render_csv(table),
             "sweep.md": render_markdown(results, metric, frontier, latency, where) + "\n"}
    if frontier:
        files["pareto.png"] = pareto_plot(results, metric, frontier, f"{len(results)}-cell sweep, latency on {short}")
    artifacts.write_files_atomically(cfg.output, files)
    return summary, frontier
