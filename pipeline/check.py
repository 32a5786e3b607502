"""The CI gate: a fresh export (or an existing report) against thresholds and a committed baseline.

    python -m pipeline.check --baseline ci/baseline.json [export flags]   # export, then gate
    python -m pipeline.check --baseline ci/baseline.json --report OUT/report.json
    python -m pipeline.check --baseline ci/baseline.json --update-baseline [export flags]

Thresholds (each one a JUnit test case with the measured value and the bound):
  relative_top1    tflite.top1 / float.top1 ≥ --min-relative-top1 (0.99; MLPerf uses 0.98–0.99)
  agreement_top1   ≥ --min-agreement, default the baseline's minus --agreement-tolerance (1 pt)
  top5_drop        float.top5 − tflite.top5 ≤ --max-top5-drop (1 pt)
  kl_mean          ≤ --max-kl, default 1.5 × the baseline's + 0.001
  size_growth      size / baseline size − 1 ≤ --max-size-growth (5%)
  macs_growth      multiply-accumulates / baseline's − 1 ≤ --max-macs-growth (5%): the network's
                   work, exact on any machine
  undelegated_ops  ops XNNPACK does not take ≤ the baseline's (an op falling off the delegate is the
                   usual latency regression, and it is exact on any machine)
  latency_growth   latency ratio / baseline's − 1 ≤ --max-latency-growth (25%). The ratio is the
                   1-thread median over that of the plain int8 model of the same network, timed
                   interleaved in the same run, so no absolute time from another run enters it.

Machines: int8 speed depends on the CPU's instruction sets (float32 is 2x slower than int8 with
AVX-512 VNNI and faster than it on AVX2-only CPUs), so a ratio of a mixed or float model holds only
on its machine class. The baseline keeps one timing entry per class (`x86_64/avx512_vnni`,
`x86_64/avx2`, `aarch64/i8mm` …); --update-baseline adds or replaces this machine's. Without an entry
for this class, the ratio is still judged when the baseline model was the plain int8 model itself
(1.00x by construction on every class); otherwise latency is not judged and one line says so
(--require-machine-match makes that a failure). Every other check holds on any machine.
Exit 0 pass, 1 a threshold failed, 2 bad input. Writes --junit (XML), --result (JSON) and
--summary (Markdown, fit for a CI job summary).
"""

import dataclasses
import json
import math
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from pipeline.errors import ParityError, PipelineInputError
from pipeline.artifacts import check_writable, check_writable_file, write_files_atomically
from pipeline.readers import parse_json
from pipeline.report import machine_line

BASELINE_FORMAT = 2
MACHINE_INDEPENDENT_KEYS = ("model", "float", "tflite", "agreement_top1", "kl_mean", "size_bytes",
                            "macs", "command")
REQUIRED_KEYS = ("float", "tflite", "agreement_top1", "kl_mean", "size_bytes")


@dataclasses.dataclass(frozen=True)
class GateThresholds:
    min_relative_top1: float = 0.99
    min_agreement: float = None
    agreement_tolerance: float = 0.01
    max_top5_drop: float = 0.01
    max_kl: float = None
    max_size_growth: float = 0.05
    max_macs_growth: float = 0.05
    max_latency_growth: float = 0.25
    require_machine_match: bool = False


@dataclasses.dataclass
class CheckResult:
    name: str
    measured: float
    bound: float
    relation: str  # "≥" or "≤"
    passed: bool
    detail: str
    skipped: bool = False  # not judged (no comparable baseline figure); `passed` says if that is ok

    def line(self):
        if self.skipped:
            mark = "–" if self.passed else "✗"
            return f"{mark} {self.name}: not judged ({self.detail})"
        mark = "✓" if self.passed else "✗"
        return f"{mark} {self.name}: {_fmt(self.measured)} {self.relation} {_fmt(self.bound)} ({self.detail})"


def _fmt(value):
    if value is None:
        return "n/a"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"


def _check(name, measured, relation, bound, detail):
    if measured is None:
        return CheckResult(name, None, bound, relation, False, detail + "; not measured")
    ok = measured >= bound if relation == "≥" else measured <= bound
    return CheckResult(name, measured, bound, relation, ok, detail)


def _not_judged(name, bound, relation, detail, fail=False):
    return CheckResult(name, None, bound, relation, not fail, detail, skipped=True)


def load_json(path, what):
    """The JSON in `path`; a byte-order mark is fine, NaN / Infinity (which compare false with every
    bound), numbers past a float's range and broken JSON are not (pipeline.readers.parse_json)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PipelineInputError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise PipelineInputError(f"{what} {path} is a folder: pass the JSON file") from None
    except OSError as error:
        raise PipelineInputError(f"{what} {path} is not readable ({error})") from None
    fix = ("write it with --update-baseline" if what == "--baseline" else
           "pass the report.json an export wrote")
    return parse_json(data, f"{what} {path}", fix)


def check_report(report, where):
    """The fields of an export's report that the gate reads: there, and finite numbers."""
    fix = "pass the report.json an export wrote, or export again"
    if not isinstance(report, dict):
        raise PipelineInputError(f"{where} is not a JSON object: {fix}")
    for key in ("agreement_top1", "kl_mean", "size_bytes"):
        _number(report, key, where, fix)
    for side in ("float", "tflite"):
        metrics = report.get(side)
        if not isinstance(metrics, dict):
            raise PipelineInputError(f"{where}: {side!r} is {metrics!r}, not the model's top-1 / "
                                     f"top-5: {fix}")
        for key in ("top1", "top5"):
            if metrics.get(key) is not None:
                _number(metrics, key, f"{where}: {side}", fix)


def latency_entry(report):
    """This run's timing entry for the baseline: the ratio, the machine, and the milliseconds."""
    ratio = report.get("latency_ratio")
    machine = report.get("machine") or {}
    if not ratio or not machine.get("machine_class"):
        raise PipelineInputError("the report has no latency ratio or machine (written by an older "
                                 "version): export again to record a baseline")
    return machine["machine_class"], {
        "ratio": ratio["value"], "reference": ratio["reference"]["kind"],
        "median_ms": ratio["median_ms"], "reference_median_ms": ratio["reference"].get("median_ms"),
        "latency_ms": report["latency_ms"], "machine": machine,
        "runtime": f"{report['benchmark']['runtime']} {report['benchmark']['runtime_version']}",
    }


def baseline_from_report(report, previous=None):
    """The baseline dict for `report`; keeps `previous`'s entries for other machine classes when it
    describes the same model (same architecture, quantization and work)."""
    machine_class, entry = latency_entry(report)
    baseline = {"format_version": BASELINE_FORMAT}
    baseline.update({key: report[key] for key in MACHINE_INDEPENDENT_KEYS if key in report})
    baseline["ops_not_delegated"] = report["benchmark"]["ops_not_delegated"]
    baseline["latency_reference"] = entry["reference"]
    entries = {}
    if previous and previous.get("format_version") == BASELINE_FORMAT and all(
            previous.get(key) == baseline.get(key) for key in ("model", "macs", "latency_reference")):
        entries.update(previous.get("latency") or {})
    entries[machine_class] = entry
    baseline["latency"] = dict(sorted(entries.items()))
    return baseline


def _number(container, key, where, fix="write the baseline with --update-baseline"):
    value = container.get(key) if isinstance(container, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PipelineInputError(f"{where}: {key!r} is {value!r}, not a finite number: {fix}")
    return value


def _latency_check(report, baseline, thresholds, where):
    name, bound = "latency_growth", thresholds.max_latency_growth
    ratio = report.get("latency_ratio")
    if not ratio:
        return _check(name, None, "≤", bound, "the report has no latency ratio (an older version "
                      "wrote it): export again")
    machine = report.get("machine") or {}
    here = machine.get("machine_class") or "unknown"
    entries = baseline.get("latency")
    if not isinstance(entries, dict):
        return _not_judged(name, bound, "≤", "the baseline holds an absolute time from an unrecorded "
                           "machine (format 1): record it again with --update-baseline",
                           thresholds.require_machine_match)
    ms = f"{ratio['median_ms']:.3f} ms"
    if ratio["reference"]["kind"] != "self":
        ms += f" vs {ratio['reference']['median_ms']:.3f} ms for the int8 reference"
    entry = entries.get(here)
    if isinstance(entry, dict):
        base = _number(entry, "ratio", f"{where} entry {here}")
        return _check(name, ratio["value"] / base - 1, "≤", bound,
                      f"{ratio['value']:.3f}× the int8 reference ({ms}) vs {base:.3f}× in the "
                      f"baseline's {here} entry")
    if baseline.get("latency_reference") == "self":
        return _check(name, ratio["value"] - 1, "≤", bound,
                      f"{ratio['value']:.3f}× the int8 reference ({ms}); no {here} entry, but the "
                      "baseline model is the int8 reference itself: 1.000× on every machine class")
    have = ", ".join(sorted(entries)) or "none"
    return _not_judged(name, bound, "≤",
                       f"the baseline has no timing for machine class {here} (has: {have}) and a "
                       "ratio of a mixed or float model holds only on its class; add one with "
                       "--update-baseline on this class, or pass --require-machine-match to fail here",
                       thresholds.require_machine_match)


def gate(report, baseline, thresholds, where="the baseline"):
    """Evaluates every threshold; returns a list of CheckResult. `where` names the baseline in
    messages (its file)."""
    if not isinstance(baseline, dict):
        raise PipelineInputError(f"{where} is not a JSON object: write it with --update-baseline")
    for key in REQUIRED_KEYS:
        if key not in baseline:
            raise PipelineInputError(f"{where} has no {key!r}: write it with --update-baseline")
    for key in ("agreement_top1", "kl_mean", "size_bytes"):
        _number(baseline, key, where)
    if not baseline["size_bytes"] > 0:
        raise PipelineInputError(f"{where}: 'size_bytes' is {baseline['size_bytes']}, not a model "
                                 "size: write it with --update-baseline")
    f, t = report["float"], report["tflite"]
    relative = t["top1"] / f["top1"] if f.get("top1") else None
    agreement_bound = (thresholds.min_agreement if thresholds.min_agreement is not None
                       else baseline["agreement_top1"] - thresholds.agreement_tolerance)
    kl_bound = thresholds.max_kl if thresholds.max_kl is not None else baseline["kl_mean"] * 1.5 + 1e-3
    top5_drop = f["top5"] - t["top5"] if f.get("top5") is not None else None
    results = [
        _check("relative_top1", relative, "≥", thresholds.min_relative_top1,
               f"tflite top-1 {_fmt(t.get('top1'))} / float {_fmt(f.get('top1'))}"),
        _check("agreement_top1", report["agreement_top1"], "≥", agreement_bound,
               f"baseline {baseline['agreement_top1']:.4f}"),
        _check("top5_drop", top5_drop, "≤", thresholds.max_top5_drop,
               f"float top-5 {_fmt(f.get('top5'))}, tflite {_fmt(t.get('top5'))}"),
        _check("kl_mean", report["kl_mean"], "≤", kl_bound, f"baseline {baseline['kl_mean']:.5f}"),
        _check("size_growth", report["size_bytes"] / baseline["size_bytes"] - 1, "≤",
               thresholds.max_size_growth,
               f"{report['size_bytes']:,} bytes vs baseline {baseline['size_bytes']:,}"),
    ]
    if baseline.get("macs") and report.get("macs"):
        results.append(_check("macs_growth", report["macs"] / _number(baseline, "macs", where)
                              - 1, "≤", thresholds.max_macs_growth,
                              f"{report['macs']:,} vs baseline {baseline['macs']:,} multiply-accumulates"))
    else:
        results.append(_not_judged("macs_growth", thresholds.max_macs_growth, "≤",
                                   "the baseline or report has no MAC count: record it again"))
    undelegated = (report.get("benchmark") or {}).get("ops_not_delegated")
    if baseline.get("ops_not_delegated") is not None and undelegated is not None:
        base = _number(baseline, "ops_not_delegated", where)
        results.append(_check("undelegated_ops", undelegated, "≤", base,
                              f"ops outside XNNPACK: {undelegated} vs baseline {base}"))
    else:
        results.append(_not_judged("undelegated_ops", 0, "≤",
                                   "the baseline or report has no delegation count: record it again"))
    results.append(_latency_check(report, baseline, thresholds, where))
    return results


def junit_xml(results, name="parity-gate"):
    suite = ElementTree.Element("testsuite", name=name, tests=str(len(results)),
                                failures=str(sum(not r.passed for r in results)), errors="0",
                                skipped=str(sum(r.skipped and r.passed for r in results)))
    for result in results:
        case = ElementTree.SubElement(suite, "testcase", classname=name, name=result.name)
        properties = ElementTree.SubElement(case, "properties")
        for key in ("measured", "bound", "relation"):
            ElementTree.SubElement(properties, "property", name=key, value=str(getattr(result, key)))
        if not result.passed:
            failure = ElementTree.SubElement(case, "failure", message=result.line())
            failure.text = result.detail
        elif result.skipped:
            ElementTree.SubElement(case, "skipped", message=result.detail)
    ElementTree.indent(suite)
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def summary_markdown(results, report):
    passed = all(r.passed for r in results)
    lines = [f"### Parity gate: {'passed' if passed else 'FAILED'} — {report['model']['name']} "
             f"{report['model']['quantize']}", "", "| | check | measured | bound |", "|---|---|---|---|"]
    for r in results:
        mark = "✗" if not r.passed else "–" if r.skipped else "✓"
        measured = "not judged" if r.skipped else _fmt(r.measured)
        lines.append(f"| {mark} | {r.name} | {measured} | {r.relation} {_fmt(r.bound)} |")
    machine = report.get("machine")
    if machine:
        lines += ["", f"Machine: {machine_line(machine)}."]
    lines += [f"- {r.name}: {r.detail}" for r in results if r.skipped]
    return "\n".join(lines) + "\n"


# With logits heads: the LiteRT Quantizer would quantize a softmax into an int8 output.
COMPARED_BACKENDS = (
    ("tflite-converter", {"backend": "tflite-converter", "head": "logits"}),
    ("litert-quantizer min-max", {"backend": "litert-quantizer", "algorithm": "min-max", "head": "logits"}),
    ("litert-quantizer octav", {"backend": "litert-quantizer", "algorithm": "octav", "head": "logits"}),
)


def _export_variants(values, variants, out_root):
    """Runs the export once per {flag: value} variant into out_root/<n>; returns [(name, report)]."""
    from pipeline import export

    original = {}
    results = []
    for index, (name, overrides) in enumerate(variants):
        for flag, value in list(overrides.items()) + [("output", str(Path(out_root) / str(index)))]:
            original.setdefault(flag, values[flag].value)
            values[flag].value = value
        print(f"== {name}", file=sys.stderr, flush=True)
        report, _, _ = export.export_from_flags(values)
        results.append((name, report))
    for flag, value in original.items():
        values[flag].value = value
    return results


def comparison_table(results):
    lines = ["| variant | float top-1 | tflite top-1 | agreement | KL | size bytes | 1-thread ms | "
             "× int8 |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results:
        top1 = lambda m: "—" if m.get("top1") is None else f"{m['top1']:.2%}"  # noqa: E731
        lines.append(f"| {name} | {top1(r['float'])} | {top1(r['tflite'])} | {r['agreement_top1']:.2%} | "
                     f"{r['kl_mean']:.5f} | {r['size_bytes']:,} | {r['latency_ms']['1']['median']:.2f} | "
                     f"{_fmt((r.get('latency_ratio') or {}).get('value'))} |")
    return "\n".join(lines) + "\n"


def sweep_plot(points, title):
    """calibration_sweep.png: agreement (and KL) against the number of calibration images."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    counts = [n for n, _ in points]
    axis.plot(counts, [r["agreement_top1"] for _, r in points], "o-", label="top-1 agreement")
    axis.set_xscale("log")
    axis.set_xlabel("calibration images")
    axis.set_ylabel("top-1 agreement with float")
    kl_axis = axis.twinx()
    kl_axis.plot(counts, [r["kl_mean"] for _, r in points], "s--", color="tab:orange", label="mean KL")
    kl_axis.set_ylabel("mean KL")
    axis.set_title(title)
    figure.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def define_flags():
    from pipeline.cli import define

    define("bool", "compare-backends", False,
           "Export with each quantizer backend and put them side by side (comparison.md/json).")
    define("string", "sweep-calibration", None,
           "Comma-separated calibration-image counts (e.g. 10,30,100,300,500): export at each and "
           "plot agreement against the count (calibration_sweep.png).")

    define("string", "baseline", None, "Baseline JSON (written by --update-baseline).")
    define("bool", "update-baseline", False, "Write --baseline from this run instead of gating.")
    define("string", "report", None, "Gate an existing report.json instead of exporting afresh.")
    define("string", "junit", None, "Write JUnit XML here (one test case per threshold).")
    define("string", "result", None, "Write the gate's JSON result here.")
    define("string", "summary", None, "Write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).")
    define("float", "min-relative-top1", 0.99, "tflite.top1 / float.top1 must be at least this.")
    define("float", "agreement-tolerance", 0.01,
           "Without --min-agreement: agreement may fall this far below the baseline's.")
    define("float", "max-top5-drop", 0.01, "float.top5 − tflite.top5 may be at most this.")
    define("float", "max-kl", None, "Mean KL may be at most this (default 1.5 × baseline + 0.001).")
    define("float", "max-size-growth", 0.05, "Model size may grow at most this fraction.")
    define("float", "max-macs-growth", 0.05, "Multiply-accumulates may grow at most this fraction.")
    define("float", "max-latency-growth", 0.25,
           "The latency ratio (1-thread median over the plain int8 model of the same network, timed "
           "in the same run) may grow at most this fraction over the baseline's.")
    define("bool", "require-machine-match", False,
           "Fail, instead of leaving latency unjudged, when the baseline has no timing entry for "
           "this machine class and its ratio does not carry over.")


def main(argv):
    from absl import flags

    values = flags.FLAGS
    if values["compare-backends"].value or values["sweep-calibration"].value:
        return _study(values)
    baseline_path = values["baseline"].value
    if not baseline_path:
        raise PipelineInputError("--baseline FILE is required (create it with --update-baseline)")
    for flag in ("junit", "result", "summary"):
        if values[flag].value:
            check_writable_file(values[flag].value, f"--{flag}")
    if values["update-baseline"].value:
        check_writable_file(baseline_path, "--baseline")
    if values["report"].value:
        report = load_json(values["report"].value, "--report")
        check_report(report, f"--report {values['report'].value}")
    else:
        from pipeline import export

        if values["output"].value is None:
            values["output"].value = tempfile.mkdtemp(prefix="parity-gate-")
        report, _, _ = export.export_from_flags(values)
    if values["update-baseline"].value:
        previous = load_json(baseline_path, "--baseline") if Path(baseline_path).is_file() else None
        baseline = baseline_from_report(report, previous if isinstance(previous, dict) else None)
        write_files_atomically(baseline_path, {"": json.dumps(baseline, indent=2) + "\n"})
        here = report["machine"]["machine_class"]
        others = [c for c in baseline["latency"] if c != here]
        print(f"baseline written to {baseline_path}: timing entry for {here}"
              + (f" (kept: {', '.join(others)})" if others else ""))
        return
    baseline = load_json(baseline_path, "--baseline")
    thresholds = GateThresholds(
        min_relative_top1=values["min-relative-top1"].value,
        min_agreement=values["min-agreement"].value,
        agreement_tolerance=values["agreement-tolerance"].value,
        max_top5_drop=values["max-top5-drop"].value,
        max_kl=values["max-kl"].value,
        max_size_growth=values["max-size-growth"].value,
        max_macs_growth=values["max-macs-growth"].value,
        max_latency_growth=values["max-latency-growth"].value,
        require_machine_match=values["require-machine-match"].value,
    )
    try:
        results = gate(report, baseline, thresholds, where=f"--baseline {baseline_path}")
        outputs = {
            "junit": junit_xml(results),
            "result": json.dumps({"passed": all(r.passed for r in results),
                                  "checks": [dataclasses.asdict(r) for r in results],
                                  "model": report.get("model"), "baseline": baseline_path},
                                 indent=2) + "\n",
            "summary": summary_markdown(results, report),
        }
    except (KeyError, TypeError, AttributeError, ZeroDivisionError) as error:
        raise PipelineInputError(f"the report or --baseline {baseline_path} lacks a field the gate "
                                 f"reads ({type(error).__name__}: {error}): export again and record "
                                 "the baseline with --update-baseline") from None
    for key, content in outputs.items():
        if values[key].value:
            write_files_atomically(values[key].value, {"": content})
    machine = report.get("machine")
    if machine:
        print(f"machine: {machine_line(machine)}")
    print("\n".join(r.line() for r in results))
    if not all(r.passed for r in results):
        raise ParityError("parity gate failed: " + ", ".join(r.name for r in results if not r.passed))


def _study(values):
    """--compare-backends / --sweep-calibration: several exports, one table (and a plot)."""
    out_root = values["output"].value or tempfile.mkdtemp(prefix="parity-study-")
    check_writable(out_root)
    files = {}
    if values["compare-backends"].value:
        results = _export_variants(values, COMPARED_BACKENDS, Path(out_root) / "backends")
        table = comparison_table(results)
        files["comparison.md"] = "## Quantizer backends\n\n" + table
        files["comparison.json"] = json.dumps(dict(results), indent=2) + "\n"
        print(table)
    if values["sweep-calibration"].value:
        try:
            counts = sorted({int(n) for n in values["sweep-calibration"].value.split(",")})
        except ValueError:
            raise PipelineInputError("--sweep-calibration takes counts like 10,30,100,300") from None
        variants = [(f"{n} images", {"calibration-samples": n}) for n in counts]
        results = _export_variants(values, variants, Path(out_root) / "sweep")
        points = list(zip(counts, (r for _, r in results)))
        table = comparison_table(results)
        files["calibration_sweep.md"] = "## Calibration images vs parity\n\n" + table
        files["calibration_sweep.json"] = json.dumps(
            [{"calibration_images": n, "agreement_top1": r["agreement_top1"], "kl_mean": r["kl_mean"]}
             for n, r in points], indent=2) + "\n"
        files["calibration_sweep.png"] = sweep_plot(points, "agreement vs calibration set size")
        print(table)
    write_files_atomically(out_root, files)
    print(f"written to {out_root}")


if __name__ == "__main__":
    from pipeline import export
    from pipeline.cli import run

    export.define_flags()
    define_flags()
    run(main)
