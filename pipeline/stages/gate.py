"""The parity gate's judgement: a fresh export's report against a committed baseline.

A gate that CI trusts gives the same verdict on every CPU it may land on. Three things make that
so (issue 25):
- the model does not depend on the CPU (pipeline.fold, pipeline.ranges): the same inputs give the
  same bytes, and the gate says whether the fresh model is byte-identical to the baseline's;
- accuracy is judged with its sampling noise: the baseline keeps each image's outcome, and the
  fresh run is compared with it image by image (an exact McNemar test on the images whose
  agreement changed, a paired sign-flip test on per-image KL). A check fails only when the change
  is both beyond its tolerance and significant, so two equally good models do not fail it by
  chance more often than `alpha` (default 1%);
- latency is a ratio to a model that is not the one judged (`--latency-reference`), timed
  interleaved in the same run; a layer that stops being int8 fails by name in `structure` before
  latency sees it.

Checks (each a JUnit test case with the measured value and the bound):
  relative_top1    tflite.top1 / float.top1 ≥ min_relative_top1 (0.99; MLPerf uses 0.98–0.99)
  agreement_top1   paired: fails when agreement fell more than agreement_tolerance (1 pt) below the
                   baseline's on the same images AND the exact one-sided McNemar p < alpha
                   (without per-image results: the fixed bound, said in one line)
  top5_drop        float.top5 − tflite.top5 ≤ max_top5_drop (1 pt)
  kl_mean          paired: fails when mean KL is above max_kl (default 1.5 × the baseline's +
                   0.001) AND a paired sign-flip test on per-image KL gives p < alpha
  size_growth      size / baseline size − 1 ≤ max_size_growth (5%)
  macs_growth      multiply-accumulates / baseline's − 1 ≤ max_macs_growth (5%)
  undelegated_ops  ops XNNPACK does not take ≤ the baseline's
  structure        every conv / depthwise conv / fully-connected layer has the baseline's
                   activation and weight dtypes (a layer silently in float fails by name)
  latency_growth   latency ratio / baseline's − 1 ≤ max_latency_growth (25%), the ratio being the
                   1-thread median over the reference's, timed interleaved in the same run
"""

import dataclasses
import math
import statistics
import xml.etree.ElementTree as ElementTree

from pipeline.core.errors import PipelineInputError
from pipeline.core.stats import mcnemar_p, sign_flip_p

BASELINE_FORMAT = 3
MACHINE_INDEPENDENT_KEYS = ("model", "float", "tflite", "agreement_top1", "kl_mean", "size_bytes",
                            "macs", "command")
REQUIRED_KEYS = ("float", "tflite", "agreement_top1", "kl_mean", "size_bytes")
# What the baseline keeps of each image (pipeline.verify.PerImage), compactly.
PER_IMAGE_COLUMNS = ("image", "sha256", "float_top1", "tflite_top1", "kl")
# A ratio to a reference of the same work in the same precision (an int8 model with MACs within
# this fraction of the candidate's) is ~1 on every CPU class (ours / Google's int8 MobileNetV2:
# 1.00 on an AVX2 and an AVX-512 VNNI EPYC), so a class without its own entry is judged against
# the recorded classes' median.
SAME_WORK = 0.02
LISTED_FLIPS = 20  # images named in the summary per direction


@dataclasses.dataclass(frozen=True)
class GateThresholds:
    min_relative_top1: float = 0.99
    min_agreement: float = None  # an absolute bound instead of the paired test
    agreement_tolerance: float = 0.01
    max_top5_drop: float = 0.01
    max_kl: float = None
    max_size_growth: float = 0.05
    max_macs_growth: float = 0.05
    max_latency_growth: float = 0.25
    alpha: float = 0.01  # false-alarm rate of the paired tests
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
    text: str = None  # the line's body when "measured relation bound" does not say it (paired)
    extra: dict = None  # what the summary and the JSON result add (e.g. the images that flipped)

    def line(self):
        if self.skipped:
            mark = "–" if self.passed else "✗"
            return f"{mark} {self.name}: not judged ({self.detail})"
        mark = "✓" if self.passed else "✗"
        if self.text:
            return f"{mark} {self.name}: {self.text}"
        return f"{mark} {self.name}: {format_value(self.measured)} {self.relation} {format_value(self.bound)} ({self.detail})"


def format_value(value):
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


def _number(container, key, where, fix="write the baseline with --update-baseline"):
    value = container.get(key) if isinstance(container, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PipelineInputError(f"{where}: {key!r} is {value!r}, not a finite number: {fix}")
    return value


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


# --- the baseline ----------------------------------------------------------------------------

def reference_identity(ratio):
    """What a latency ratio was measured against, as the baseline keeps it."""
    reference = (ratio or {}).get("reference") or {}
    identity = {"kind": reference.get("kind")}
    if reference.get("kind") == "file":
        identity.update({key: reference.get(key) for key in ("name", "sha256", "macs", "int8")})
    return identity


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


def stored_kl(kl):
    """A per-image KL as the baseline stores it (4 significant digits); the fresh run's go through
    the same rounding before they are compared, so an unchanged model differs by exactly 0."""
    return float(f"{float(kl):.4g}")


def per_image_block(per_image):
    """The baseline's compact copy of a run's per-image results (columns + rows)."""
    rows = [[name, digest, int(f), int(t), stored_kl(kl)] for name, digest, f, t, kl in zip(
        per_image.images, per_image.sha256, per_image.float_top1, per_image.tflite_top1,
        per_image.kl)]
    return {"columns": list(PER_IMAGE_COLUMNS), "rows": rows}


def baseline_from_report(report, previous=None, per_image=None):
    """The baseline dict for `report` (and its per-image results, when given); keeps `previous`'s
    timing entries for other machine classes when it describes the same model (architecture,
    quantization, work and latency reference)."""
    machine_class, entry = latency_entry(report)
    baseline = {"format_version": BASELINE_FORMAT}
    baseline.update({key: report[key] for key in MACHINE_INDEPENDENT_KEYS if key in report})
    baseline["ops_not_delegated"] = report["benchmark"]["ops_not_delegated"]
    digests = report.get("sha256") or {}
    baseline["model_sha256"] = digests.get("model")
    baseline["inputs_sha256"] = {key: digests.get(key) for key in (
        "weights", "float_model", "calibration_images", "eval_images") if key in digests}
    baseline["structure"] = (report.get("conversion") or {}).get("structure")
    baseline["latency_reference"] = reference_identity(report.get("latency_ratio"))
    if per_image is not None:
        baseline["per_image"] = per_image_block(per_image)
    entries = {}
    if previous and previous.get("format_version") == BASELINE_FORMAT and all(
            previous.get(key) == baseline.get(key) for key in ("model", "macs", "latency_reference")):
        entries.update(previous.get("latency") or {})
    entries[machine_class] = entry
    baseline["latency"] = dict(sorted(entries.items()))
    return baseline


def baseline_json(baseline):
    """The baseline as its file holds it: indented, one per-image row a line (a diff of a
    re-recorded baseline then shows which images changed)."""
    import json

    block = baseline.get("per_image")
    if not block:
        return json.dumps(baseline, indent=1) + "\n"
    placeholder = "@per-image-rows@"
    text = json.dumps(dict(baseline, per_image=dict(block, rows=placeholder)), indent=1)
    rows = ",\n".join("   " + json.dumps(row, separators=(",", ":")) for row in block["rows"])
    return text.replace(json.dumps(placeholder), "[\n" + rows + "\n  ]") + "\n"


def baseline_rows(baseline, where):
    """{(image, sha256): (float_top1, tflite_top1, kl)} of the baseline, or None when it has none."""
    block = baseline.get("per_image")
    if block is None:
        return None
    fix = "record it again with --update-baseline"
    if not isinstance(block, dict) or block.get("columns") != list(PER_IMAGE_COLUMNS) or \
            not isinstance(block.get("rows"), list):
        raise PipelineInputError(f"{where}: 'per_image' is not {{columns: {list(PER_IMAGE_COLUMNS)},"
                                 f" rows}}: {fix}")
    found = {}
    for row in block["rows"]:
        if not (isinstance(row, list) and len(row) == 5 and all(isinstance(v, str) for v in row[:2])
                and all(isinstance(v, int) and not isinstance(v, bool) for v in row[2:4])
                and isinstance(row[4], (int, float)) and math.isfinite(row[4])):
            raise PipelineInputError(f"{where}: per-image row {str(row)[:80]} is not [image, sha256, "
                                     f"float top-1, int8 top-1, KL]: {fix}")
        found[(row[0], row[1])] = (row[2], row[3], float(row[4]))
    return found


# --- the checks -------------------------------------------------------------------------------

def _paired(per_image, base_rows):
    """[(name, baseline (f, t, kl), fresh (f, t, kl))] for the images both runs measured."""
    pairs = []
    for name, digest, f, t, kl in zip(per_image.images, per_image.sha256, per_image.float_top1,
                                      per_image.tflite_top1, per_image.kl):
        base = base_rows.get((name, digest))
        if base is not None:
            pairs.append((name, base, (f, t, stored_kl(kl))))
    return pairs


def _comparable(pairs, per_image, base_rows):
    """None when the two runs measured (nearly) the same images, else why not, in words."""
    if len(pairs) >= 0.9 * max(len(per_image), len(base_rows)):
        return None
    return (f"only {len(pairs)} of this run's {len(per_image)} images are among the baseline's "
            f"{len(base_rows)} (same name and sha256): record the baseline on the images the gate "
            "runs on")


def agreement_check(report, baseline, thresholds, per_image, base_rows):
    """agreement_top1: paired with the baseline's per-image results (`base_rows`, from
    `baseline_rows`) when both runs measured the same images, else the fixed bound, said so."""
    name, tolerance, alpha = "agreement_top1", thresholds.agreement_tolerance, thresholds.alpha
    if thresholds.min_agreement is not None:
        return _check(name, report["agreement_top1"], "≥", thresholds.min_agreement,
                      f"--min-agreement; baseline {baseline['agreement_top1']:.4f}")
    fixed = baseline["agreement_top1"] - tolerance
    why_not = ("the baseline holds no per-image results (recorded by an older version; record it "
               "again with --update-baseline)" if base_rows is None else
               "this run wrote no per-image results" if per_image is None else None)
    pairs = []
    if why_not is None:
        pairs = _paired(per_image, base_rows)
        why_not = _comparable(pairs, per_image, base_rows)
    if why_not is not None:
        return _check(name, report["agreement_top1"], "≥", fixed,
                      f"baseline {baseline['agreement_top1']:.4f}; judged against a fixed bound, "
                      f"inside the sampling noise, because {why_not}")
    worse = [(n, b, f) for n, b, f in pairs if b[0] == b[1] and f[0] != f[1]]
    better = [(n, b, f) for n, b, f in pairs if b[0] != b[1] and f[0] == f[1]]
    n = len(pairs)
    base_agreement = sum(b[0] == b[1] for _, b, _ in pairs) / n
    fresh_agreement = sum(f[0] == f[1] for _, _, f in pairs) / n
    drop = (len(worse) - len(better)) / n
    p = mcnemar_p(len(worse), len(better))
    failed = drop > tolerance and p < alpha
    change = "unchanged" if not worse and not better else f"{-drop * 100:+.2f} pt"
    text = (f"{fresh_agreement:.4f} vs baseline {base_agreement:.4f} on the same {n} images "
            f"({change}; {len(worse)} newly disagree, {len(better)} newly agree; exact "
            f"McNemar p {p:.3g}): fails only when more than {tolerance * 100:g} pt lower and "
            f"p < {alpha:g}")
    flips = {"newly_disagree": [_flip(n, b, f) for n, b, f in worse],
             "newly_agree": [_flip(n, b, f) for n, b, f in better], "p_value": p, "images": n}
    return CheckResult(name, fresh_agreement, base_agreement - tolerance, "≥", not failed,
                       f"paired on {n} images, exact McNemar p {p:.3g}", text=text, extra=flips)


def _flip(name, base, fresh):
    return {"image": name, "float_top1": fresh[0], "tflite_top1": fresh[1],
            "baseline_float_top1": base[0], "baseline_tflite_top1": base[1]}


def kl_check(report, baseline, thresholds, per_image, base_rows):
    """kl_mean: paired like `agreement_check`, by a sign-flip test on per-image KL."""
    name, alpha = "kl_mean", thresholds.alpha
    bound = thresholds.max_kl if thresholds.max_kl is not None else baseline["kl_mean"] * 1.5 + 1e-3
    pairs = _paired(per_image, base_rows) if per_image is not None and base_rows is not None else []
    if not pairs or _comparable(pairs, per_image, base_rows) is not None:
        return _check(name, report["kl_mean"], "≤", bound, f"baseline {baseline['kl_mean']:.5f}")
    fresh = sum(f[2] for _, _, f in pairs) / len(pairs)
    base = sum(b[2] for _, b, _ in pairs) / len(pairs)
    p = sign_flip_p([f[2] - b[2] for _, b, f in pairs])
    failed = fresh > bound and p < alpha
    text = (f"{fresh:.5f} vs baseline {base:.5f} on the same {len(pairs)} images (paired sign-flip "
            f"test p {p:.3g}): fails only above {bound:.5f} with p < {alpha:g}")
    return CheckResult(name, fresh, bound, "≤", not failed, f"paired, sign-flip p {p:.3g}",
                       text=text, extra={"p_value": p})


def _structure_check(report, baseline):
    name = "structure"
    base = baseline.get("structure")
    fresh = (report.get("conversion") or {}).get("structure")
    if not isinstance(base, dict) or not isinstance(fresh, dict):
        return _not_judged(name, 0, "≤", "the baseline or report has no per-layer dtypes (recorded "
                           "by an older version): record it again")
    changed = [f"{layer}: {base[layer]} → {fresh.get(layer, 'absent')}" for layer in base
               if fresh.get(layer) != base[layer]]
    changed += [f"{layer}: new, {fresh[layer]}" for layer in fresh if layer not in base]
    if not changed:
        kinds = sorted(set(base.values()))
        return _check(name, 0, "≤", 0, f"{len(base)} conv/depthwise/fully-connected layers, each as "
                      f"in the baseline ({'; '.join(kinds)})")
    shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
    return _check(name, len(changed), "≤", 0, f"layers whose dtypes changed: {shown}")


def _latency_check(report, baseline, thresholds, where):
    name, bound = "latency_growth", thresholds.max_latency_growth
    ratio = report.get("latency_ratio")
    if not ratio:
        return _check(name, None, "≤", bound, "the report has no latency ratio (an older version "
                      "wrote it): export again")
    reference = ratio["reference"]
    if reference["kind"] == "self":
        return _not_judged(name, bound, "≤", "the model was timed against itself (ratio 1.000 by "
                           "construction, so nothing to judge): pass --latency-reference "
                           "MODEL.tflite, e.g. your last release")
    entries = baseline.get("latency")
    if not isinstance(entries, dict) or not isinstance(baseline.get("latency_reference"), dict):
        return _not_judged(name, bound, "≤", "the baseline was recorded by an older version (format "
                           f"{baseline.get('format_version', 1)}): record it again with "
                           "--update-baseline", thresholds.require_machine_match)
    here_reference = reference_identity(ratio)
    base_reference = baseline["latency_reference"]
    if here_reference != base_reference:
        return _not_judged(name, bound, "≤", f"this run was timed against {_reference_words(here_reference)}, "
                           f"the baseline against {_reference_words(base_reference)}: pass the same "
                           "--latency-reference to both", thresholds.require_machine_match)
    machine = report.get("machine") or {}
    here = machine.get("machine_class") or "unknown"
    ms = f"{ratio['median_ms']:.3f} vs {reference['median_ms']:.3f} ms"
    against = _reference_words(here_reference)
    entry = entries.get(here)
    if isinstance(entry, dict):
        base = _number(entry, "ratio", f"{where} entry {here}")
        return _check(name, ratio["value"] / base - 1, "≤", bound,
                      f"{ratio['value']:.3f}× {against} ({ms}) vs {base:.3f}× in the baseline's "
                      f"{here} entry")
    recorded = {c: e["ratio"] for c, e in entries.items() if isinstance(e, dict) and "ratio" in e}
    if recorded and _same_work(report, here_reference):
        base = statistics.median(recorded.values())
        return _check(name, ratio["value"] / base - 1, "≤", bound,
                      f"{ratio['value']:.3f}× {against} ({ms}); no {here} entry, so against the "
                      f"median {base:.3f}× of {', '.join(sorted(recorded))}: the reference is int8 "
                      f"with the model's work (MACs within {SAME_WORK:.0%}), a ratio that holds "
                      "across CPU classes")
    have = ", ".join(sorted(entries)) or "none"
    return _not_judged(name, bound, "≤",
                       f"the baseline has no timing for machine class {here} (has: {have}) and a "
                       "ratio to a reference of other work or precision holds only on its class; "
                       "add one with --update-baseline on this class, or pass "
                       "--require-machine-match to fail here", thresholds.require_machine_match)


def _reference_words(identity):
    if identity.get("kind") == "file":
        return f"{identity.get('name')} (sha256 {str(identity.get('sha256'))[:12]})"
    if identity.get("kind") == "int8":
        return "the plain int8 model of the same network"
    return f"a {identity.get('kind')} reference"


def _same_work(report, reference):
    """Whether the ratio to `reference` carries across CPU classes: an all-int8 file reference
    whose MACs are within SAME_WORK of this all-int8 model's."""
    structure = (report.get("conversion") or {}).get("structure") or {}
    model_int8 = bool(structure) and all(" int8/int8" in v for v in structure.values())
    macs = report.get("macs")
    return (reference.get("kind") == "file" and reference.get("int8") is True and model_int8
            and bool(macs) and bool(reference.get("macs"))
            and abs(reference["macs"] / macs - 1) <= SAME_WORK)


def model_identity_line(report, baseline):
    """Whether the fresh model is byte-identical to the baseline's, and which inputs differ if not."""
    fresh = (report.get("sha256") or {}).get("model")
    recorded = baseline.get("model_sha256")
    if not recorded:
        return "model: the baseline records no model digest (recorded by an older version)"
    if fresh == recorded:
        return f"model: byte-identical to the baseline's (sha256 {fresh[:16]})"
    inputs = baseline.get("inputs_sha256") or {}
    differ = [key.replace("_", " ") for key, value in inputs.items()
              if (report.get("sha256") or {}).get(key) != value]
    because = (f"; these inputs differ too: {', '.join(differ)}" if differ else
               "; every input is the same, so the code or libraries that make it changed")
    return (f"model: differs from the baseline's (sha256 {str(fresh)[:16]} vs {recorded[:16]}){because}; "
            "judged by the checks below")


def gate(report, baseline, thresholds, where="the baseline", per_image=None):
    """Evaluates every threshold; returns a list of CheckResult. `where` names the baseline in
    messages (its file); `per_image` (pipeline.verify.PerImage) are this run's per-image results,
    which the paired checks compare with the baseline's."""
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
    base_rows = baseline_rows(baseline, where)
    f, t = report["float"], report["tflite"]
    relative = t["top1"] / f["top1"] if f.get("top1") else None
    top5_drop = f["top5"] - t["top5"] if f.get("top5") is not None else None
    results = [
        _check("relative_top1", relative, "≥", thresholds.min_relative_top1,
               f"tflite top-1 {format_value(t.get('top1'))} / float {format_value(f.get('top1'))}"),
        agreement_check(report, baseline, thresholds, per_image, base_rows),
        _check("top5_drop", top5_drop, "≤", thresholds.max_top5_drop,
               f"float top-5 {format_value(f.get('top5'))}, tflite {format_value(t.get('top5'))}"),
        kl_check(report, baseline, thresholds, per_image, base_rows),
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
    results.append(_structure_check(report, baseline))
    results.append(_latency_check(report, baseline, thresholds, where))
    return results


# --- what CI reads ----------------------------------------------------------------------------

def junit_xml(results, name="parity-gate"):
    suite = ElementTree.Element("testsuite", name=name, tests=str(len(results)),
                                failures=str(sum(not r.passed for r in results)), errors="0",
                                skipped=str(sum(r.skipped and r.passed for r in results)))
    for result in results:
        case = ElementTree.SubElement(suite, "testcase", classname=name, name=result.name)
        properties = ElementTree.SubElement(case, "properties")
        for key in ("measured", "bound", "relation"):
            ElementTree.SubElement(properties, "property", name=key, value=str(getattr(result, key)))
        if result.extra and "p_value" in result.extra:
            ElementTree.SubElement(properties, "property", name="p_value",
                                   value=str(result.extra["p_value"]))
        if not result.passed:
            failure = ElementTree.SubElement(case, "failure", message=result.line())
            failure.text = result.detail
        elif result.skipped:
            ElementTree.SubElement(case, "skipped", message=result.detail)
    ElementTree.indent(suite)
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def summary_markdown(results, report, identity=None, labels=None):
    """The gate's Markdown summary; `labels` (class names by index) name the flipped images'
    classes."""
    from pipeline.stages.report import machine_line

    passed = all(r.passed for r in results)
    lines = [f"### Parity gate: {'passed' if passed else 'FAILED'} — {report['model']['name']} "
             f"{report['model']['quantize']}", ""]
    if identity:
        lines += [identity, ""]
    lines += ["| | check | measured | bound |", "|---|---|---|---|"]
    for r in results:
        mark = "✗" if not r.passed else "–" if r.skipped else "✓"
        measured = "not judged" if r.skipped else format_value(r.measured)
        lines.append(f"| {mark} | {r.name} | {measured} | {r.relation} {format_value(r.bound)} |")
    machine = report.get("machine")
    if machine:
        lines += ["", f"Machine: {machine_line(machine)}."]
    lines += [f"- {r.name}: {r.text or r.detail}" for r in results if r.skipped or r.text]
    flips = next((r.extra for r in results if r.name == "agreement_top1" and r.extra), None)
    if flips:
        def name(index):
            return labels[index] if labels and 0 <= index < len(labels) else str(index)

        for key, title in (("newly_disagree", "Images that newly disagree with float"),
                           ("newly_agree", "Images that newly agree with float")):
            found = flips[key]
            if not found:
                continue
            lines += ["", f"{title} ({len(found)}):", ""]
            lines += [f"- `{f['image']}`: float {name(f['float_top1'])}, int8 {name(f['tflite_top1'])} "
                      f"(baseline int8 {name(f['baseline_tflite_top1'])})" for f in found[:LISTED_FLIPS]]
            if len(found) > LISTED_FLIPS:
                lines.append(f"- … and {len(found) - LISTED_FLIPS} more (in the --result JSON)")
    return "\n".join(lines) + "\n"
