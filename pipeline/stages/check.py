"""The CI gate's run: a fresh export (or an existing report) judged against a committed baseline by
`pipeline.stages.gate`, the result written as JUnit, JSON and Markdown; and the studies that put
several exports side by side.

    python -m pipeline.check --baseline ci/baseline.json [export flags]   # export, then gate
    python -m pipeline.check --baseline ci/baseline.json --report OUT/report.json
    python -m pipeline.check --baseline ci/baseline.json --update-baseline [export flags]

What is judged, and how each check stays the same on every CPU class: `pipeline.gate`. In short:
the model's bytes do not depend on the CPU (the gate says whether they equal the baseline's);
agreement and KL are compared with the baseline image by image and fail only when the change is
beyond the tolerance and significant (`--significance`, default 0.01); every conv / fully-connected
layer keeps the baseline's dtypes; latency is the ratio to `--latency-reference`, timed
interleaved in the same run, against the baseline's entry for this machine class (or, for an int8
reference of the same work, the recorded classes' median).
Exit 0 pass, 1 a threshold failed, 2 bad input. Writes --junit (XML), --result (JSON) and
--summary (Markdown, fit for a CI job summary).

Studies: `--compare-backends` (the two quantizer backends side by side) and `--sweep-calibration
10,30,100` (agreement against the number of calibration images, calibration_sweep.png).
"""

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from pipeline.core.artifacts import check_writable, check_writable_file, write_files_atomically
from pipeline.core.errors import PipelineInputError
from pipeline.core.options import merge, option
from pipeline.core.readers import parse_json, read_input_file
from pipeline.stages import export
from pipeline.stages.gate import (GateThresholds, baseline_from_report, baseline_json, check_report,
                                  format_value, gate, junit_xml, model_identity_line,
                                  summary_markdown)

GATE_OPTIONS = (
    option("bool", "compare-backends", False,
           "Export with each quantizer backend and put them side by side (comparison.md/json)."),
    option("string", "sweep-calibration", None,
           "Comma-separated calibration-image counts (e.g. 10,30,100,300,500): export at each and "
           "plot agreement against the count (calibration_sweep.png)."),
    option("string", "baseline", None, "Baseline JSON (written by --update-baseline)."),
    option("bool", "update-baseline", False, "Write --baseline from this run instead of gating."),
    option("string", "report", None, "Gate an existing report.json instead of exporting afresh."),
    option("string", "junit", None, "Write JUnit XML here (one test case per threshold)."),
    option("string", "result", None, "Write the gate's JSON result here."),
    option("string", "summary", None, "Write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)."),
    option("float", "min-relative-top1", 0.99, "tflite.top1 / float.top1 must be at least this."),
    option("float", "agreement-tolerance", 0.01,
           "Without --min-agreement: agreement may fall this far below the baseline's on the same "
           "images before the paired test is asked whether the fall is real."),
    option("float", "max-top5-drop", 0.01, "float.top5 − tflite.top5 may be at most this."),
    option("float", "max-kl", None,
           "Mean KL may be at most this (default 1.5 × baseline + 0.001)."),
    option("float", "max-size-growth", 0.05, "Model size may grow at most this fraction."),
    option("float", "max-macs-growth", 0.05,
           "Multiply-accumulates may grow at most this fraction."),
    option("float", "max-latency-growth", 0.25,
           "The latency ratio (1-thread median over --latency-reference's, timed interleaved in "
           "the same run) may grow at most this fraction over the baseline's."),
    option("float", "significance", 0.01,
           "False-alarm rate of the paired agreement and KL tests: a change beyond its tolerance "
           "fails only when this unlikely between equally good models."),
    option("bool", "require-machine-match", False,
           "Fail, instead of leaving latency unjudged, when the baseline has no timing entry for "
           "this machine class and its ratio does not carry over."),
)
# A gate exports as `pipeline.export` would, so it takes every export setting too.
OPTIONS = merge(export.OPTIONS, GATE_OPTIONS)


def load_json(path, what):
    """The JSON in `path`; a byte-order mark is fine, NaN / Infinity (which compare false with every
    bound), numbers past a float's range and broken JSON are not (pipeline.readers.parse_json)."""
    data = read_input_file(path, f"{what} {{path}} does not exist",
                           f"{what} {{path}} is a folder: pass the JSON file",
                           f"{what} {{path}} is not readable ({{reason}})")
    fix = ("write it with --update-baseline" if what == "--baseline" else
           "pass the report.json an export wrote")
    return parse_json(data, f"{what} {path}", fix)


def per_image_beside(report_path, report):
    """The per-image results an export wrote beside `report_path` (None when it wrote none: an
    older version)."""
    from pipeline.stages.verify import PerImage

    name = (report.get("parity") or {}).get("per_image_file")
    if not name:
        return None
    path = Path(report_path).parent / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise PipelineInputError(f"cannot read {path} ({error}): export again") from None
    return PerImage.from_csv(text, str(path))


def class_names(folder):
    """The labels.txt of an export folder, or None."""
    try:
        return (Path(folder) / "labels.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None


def thresholds_from_settings(settings):
    if not 0 < settings["significance"] < 1:
        raise PipelineInputError(f"--significance {settings['significance']} must be between 0 "
                                 "and 1, e.g. 0.01")
    return GateThresholds(
        min_relative_top1=settings["min-relative-top1"],
        min_agreement=settings["min-agreement"],
        agreement_tolerance=settings["agreement-tolerance"],
        max_top5_drop=settings["max-top5-drop"],
        max_kl=settings["max-kl"],
        max_size_growth=settings["max-size-growth"],
        max_macs_growth=settings["max-macs-growth"],
        max_latency_growth=settings["max-latency-growth"],
        alpha=settings["significance"],
        require_machine_match=settings["require-machine-match"],
    )


@dataclasses.dataclass
class CheckRun:
    """A gate's outcome: the checks (pipeline.stages.gate.CheckResult) and what was written; or,
    with --update-baseline, the baseline recorded (then `results` is empty)."""

    report: dict
    results: list
    identity: str = None  # whether the model is byte-identical to the baseline's
    baseline: dict = None
    written: dict = dataclasses.field(default_factory=dict)  # {"junit": path, …}
    recorded: str = None  # the line that says what --update-baseline wrote

    @property
    def passed(self):
        return all(r.passed for r in self.results)

    @property
    def failed(self):
        return [r.name for r in self.results if not r.passed]


def check(settings, command=None):
    """The gate as `settings` say (export settings plus GATE_OPTIONS): --report or a fresh export,
    then --update-baseline or the judgement against --baseline; returns a CheckRun, or a
    StudyRun for --compare-backends / --sweep-calibration."""
    if settings["compare-backends"] or settings["sweep-calibration"]:
        return study(settings)
    baseline_path = settings["baseline"]
    if not baseline_path:
        raise PipelineInputError("--baseline FILE is required (create it with --update-baseline)")
    for name in ("junit", "result", "summary"):
        if settings[name]:
            check_writable_file(settings[name], f"--{name}")
    if settings["update-baseline"]:
        check_writable_file(baseline_path, "--baseline")
    thresholds = thresholds_from_settings(settings)
    if settings["report"]:
        report = load_json(settings["report"], "--report")
        check_report(report, f"--report {settings['report']}")
        per_image = per_image_beside(settings["report"], report)
        out_dir = Path(settings["report"]).parent
    else:
        if settings["output"] is None:
            settings = settings.replace(output=tempfile.mkdtemp(prefix="parity-gate-"))
        exported = export.export(settings, command)
        report, out_dir, per_image = exported.report, exported.output, exported.parity.per_image
    if settings["update-baseline"]:
        previous = load_json(baseline_path, "--baseline") if Path(baseline_path).is_file() else None
        baseline = baseline_from_report(report, previous if isinstance(previous, dict) else None,
                                        per_image)
        write_files_atomically(baseline_path, {"": baseline_json(baseline)})
        here = report["machine"]["machine_class"]
        others = [c for c in baseline["latency"] if c != here]
        line = (f"baseline written to {baseline_path}: model sha256 {baseline['model_sha256'][:16]}, "
                f"{len(per_image) if per_image is not None else 0} per-image results, timing entry "
                f"for {here}" + (f" (kept: {', '.join(others)})" if others else ""))
        return CheckRun(report, [], baseline=baseline, recorded=line)
    baseline = load_json(baseline_path, "--baseline")
    try:
        results = gate(report, baseline, thresholds, where=f"--baseline {baseline_path}",
                       per_image=per_image)
        identity = model_identity_line(report, baseline)
        outputs = {
            "junit": junit_xml(results),
            "result": json.dumps({"passed": all(r.passed for r in results), "identity": identity,
                                  "checks": [dataclasses.asdict(r) for r in results],
                                  "model": report.get("model"), "baseline": baseline_path},
                                 indent=2) + "\n",
            "summary": summary_markdown(results, report, identity, class_names(out_dir)),
        }
    except (KeyError, TypeError, AttributeError, ZeroDivisionError) as error:
        raise PipelineInputError(f"the report or --baseline {baseline_path} lacks a field the gate "
                                 f"reads ({type(error).__name__}: {error}): export again and record "
                                 "the baseline with --update-baseline") from None
    written = {}
    for key, content in outputs.items():
        if settings[key]:
            write_files_atomically(settings[key], {"": content})
            written[key] = settings[key]
    return CheckRun(report, results, identity, baseline, written)


# With logits heads: the LiteRT Quantizer would quantize a softmax into an int8 output.
COMPARED_BACKENDS = (
    ("tflite-converter", {"backend": "tflite-converter", "head": "logits"}),
    ("litert-quantizer min-max", {"backend": "litert-quantizer", "algorithm": "min-max", "head": "logits"}),
    ("litert-quantizer octav", {"backend": "litert-quantizer", "algorithm": "octav", "head": "logits"}),
)


def export_variants(settings, variants, out_root):
    """The export once per variant — (name, {setting: value}), a transformation of `settings` —
    into out_root/<n>; returns [(name, report)]."""
    results = []
    for index, (name, overrides) in enumerate(variants):
        print(f"== {name}", file=sys.stderr, flush=True)
        variant = settings.replace(**overrides, output=str(Path(out_root) / str(index)))
        results.append((name, export.export(variant).report))
    return results


def comparison_table(results):
    lines = ["| variant | float top-1 | tflite top-1 | agreement | KL | size bytes | 1-thread ms | "
             "× int8 |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results:
        top1 = lambda m: "—" if m.get("top1") is None else f"{m['top1']:.2%}"  # noqa: E731
        lines.append(f"| {name} | {top1(r['float'])} | {top1(r['tflite'])} | {r['agreement_top1']:.2%} | "
                     f"{r['kl_mean']:.5f} | {r['size_bytes']:,} | {r['latency_ms']['1']['median']:.2f} | "
                     f"{format_value((r.get('latency_ratio') or {}).get('value'))} |")
    return "\n".join(lines) + "\n"


def sweep_plot(points, title):
    """calibration_sweep.png: agreement (and KL) against the number of calibration images."""
    from pipeline.core.figures import png_bytes, pyplot

    plt = pyplot()

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
    return png_bytes(figure)




@dataclasses.dataclass
class StudyRun:
    """--compare-backends / --sweep-calibration: the tables printed and the folder written."""

    output: str
    tables: list
    passed: bool = True


def study(settings):
    """--compare-backends / --sweep-calibration: several exports, one table (and a plot)."""
    out_root = settings["output"] or tempfile.mkdtemp(prefix="parity-study-")
    check_writable(out_root)
    files, tables = {}, []
    if settings["compare-backends"]:
        results = export_variants(settings, COMPARED_BACKENDS, Path(out_root) / "backends")
        table = comparison_table(results)
        files["comparison.md"] = "## Quantizer backends\n\n" + table
        files["comparison.json"] = json.dumps(dict(results), indent=2) + "\n"
        tables.append(table)
    if settings["sweep-calibration"]:
        try:
            counts = sorted({int(n) for n in settings["sweep-calibration"].split(",")})
        except ValueError:
            raise PipelineInputError("--sweep-calibration takes counts like 10,30,100,300") from None
        variants = [(f"{n} images", {"calibration_samples": n}) for n in counts]
        results = export_variants(settings, variants, Path(out_root) / "sweep")
        points = list(zip(counts, (r for _, r in results)))
        table = comparison_table(results)
        files["calibration_sweep.md"] = "## Calibration images vs parity\n\n" + table
        files["calibration_sweep.json"] = json.dumps(
            [{"calibration_images": n, "agreement_top1": r["agreement_top1"], "kl_mean": r["kl_mean"]}
             for n, r in points], indent=2) + "\n"
        files["calibration_sweep.png"] = sweep_plot(points, "agreement vs calibration set size")
        tables.append(table)
    write_files_atomically(out_root, files)
    return StudyRun(str(out_root), tables)
