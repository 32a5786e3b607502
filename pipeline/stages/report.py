"""Stage 7: the artifacts an app and a person read, written atomically.

    OUT/model.tflite       the deployable model
    OUT/labels.txt         one label a line, in output order
    OUT/model_config.json  how an app must feed the model and read its output
    OUT/report.json        parity, size, latency, timings, versions, hashes
    OUT/report.md          the same for a person
    OUT/parity.png         per-class top-1 of both models and the per-image KL distribution
    OUT/parity_images.csv  each evaluated image's float and int8 top-1 and KL (the gate's paired
                           comparison reads it)

All of them are replaced as one set (pipeline.artifacts): a run that fails, is interrupted or is
killed leaves the previous set whole, never a model from one run beside a report from another.
"""

import json
import platform

from pipeline.core.artifacts import write_files_atomically

CONFIG_FORMAT_VERSION = 2  # 2: x = (pixel − mean) / std; input "contract"; probabilities head


def output_meaning(built, converted):
    """"probabilities" (a softmax inside the model), "logits" or "scores"."""
    from pipeline.core.tflite import output_kind

    if output_kind(converted.tflite) == "probabilities":
        return "probabilities"
    return built.output_kind


def input_contract(converted, spec):
    """How an app fills the input tensor, in words that need no floating-point arithmetic."""
    q = converted.input
    exact = (q.scale is not None and abs(q.scale * spec.std - 1) < 1e-6
             and q.zero_point == round(spec.mean) - (128 if q.dtype == "int8" else 0))
    if q.dtype == "uint8" and exact:
        return ("uint8: write the RGB bytes of the framed, resized image as they are (q = pixel). "
                "Exact: the input grid (scale 1/std, zero point mean) holds x = (pixel − mean) / std "
                "for every pixel, so raw camera bytes are the input the model was calibrated and "
                "evaluated on.")
    if q.dtype == "int8" and exact:
        return ("int8: write each RGB byte minus 128 (q = pixel − 128, the byte XOR 0x80). Exact: "
                "the input grid holds x = (pixel − mean) / std for every pixel.")
    if q.dtype == "float32":
        return "float32: x = (pixel − mean) / std in float32, per normalize below."
    return ("q = clamp(round_half_to_even(x / scale) + zero_point, dtype min, dtype max), with x "
            "from normalize below")


def model_config(built, converted, spec):
    """model_config.json: everything an app needs to feed the model and read its answer."""
    input_spec = converted.input.to_config()
    input_spec["contract"] = input_contract(converted, spec)
    output_spec = converted.output.to_config()
    meaning = output_meaning(built, converted)
    dequantize = "dequantize: y = (q - zero_point) * scale; then " if converted.output.scale else ""
    output_spec.update(
        meaning=meaning,
        classes=built.num_classes,
        postprocessing=dequantize + {
            "probabilities": "the scores are probabilities (softmax inside the model); top-k by score",
            "logits": "softmax over the classes gives probabilities; top-k by score",
        }.get(meaning, "top-k by score"),
    )
    return {
        "format_version": CONFIG_FORMAT_VERSION,
        "model_file": "model.tflite",
        "labels_file": "labels.txt",
        "model": {"name": built.name, **built.architecture, "quantize": converted.config.quantize,
                  "head": converted.config.head},
        "input": input_spec,
        "preprocessing": spec.to_config(),
        "output": output_spec,
    }


def artifact_files(built, converted, spec):
    """The three files an app takes: the model, its labels and its config."""
    return {
        "model.tflite": converted.tflite,
        "labels.txt": "\n".join(built.labels) + "\n",
        "model_config.json": json.dumps(model_config(built, converted, spec), indent=2) + "\n",
    }


def versions(runtime_name=None, runtime_version=None):
    import importlib.metadata as metadata

    def version_of(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "tensorflow": version_of("tensorflow"),
        "keras": version_of("keras"),
        "numpy": version_of("numpy"),
        "pillow": version_of("pillow"),
        "ai_edge_litert": version_of("ai-edge-litert"),
        "litert_quantizer": version_of("litert-quantizer"),
        "runtime": {"name": runtime_name, "version": runtime_version},
        "platform": platform.platform(),
    }


def _pct(value):
    return "—" if value is None else f"{value:.2%}"


def _interval(bounds):
    return "—" if not bounds else f"{bounds[0]:.2%}–{bounds[1]:.2%}"


def framing(spec):
    square = ("the largest centered square" if spec.crop_fraction == 1 else
              f"the centered square of {spec.crop_fraction:g} × the shorter side")
    return (f"Frame images as calibration did: {square}, resized to the input size. MediaPipe "
            "stretches the whole frame unless "
            "the app passes that square as ImageProcessingOptions(region_of_interest=…); the demo "
            "app crops it itself.")


def machine_line(machine):
    """'AMD EPYC, 2 cores, class x86_64/avx512_vnni (avx512_vnni avx512bw …), int8 dot-product: yes
    (avx512_vnni)' for reports and the gate."""
    from pipeline.device.runner import int8_dot_product_line

    return (f"{machine.get('cpu_model') or 'unknown CPU'}, {machine.get('cpu_count')} cores, class "
            f"{machine.get('machine_class')} ({' '.join(machine.get('isa') or []) or 'no int8 ISA found'}), "
            f"{int8_dot_product_line(machine)}")


def ratio_line(ratio):
    """What the latency ratio is, in one line."""
    if ratio is None:
        return "latency ratio: not measured"
    reference = ratio["reference"]
    if reference["kind"] == "self":
        return ("latency ratio 1.00× by construction: this model is the plain int8 model of its "
                "network, the reference other exports of it are timed against; to judge its own "
                "speed, pass --latency-reference MODEL.tflite (e.g. your last release)")
    against = (f"{reference.get('name')} (--latency-reference)" if reference["kind"] == "file"
               else "the plain int8 model of the same network")
    return (f"latency ratio {ratio['value']:.2f}× {against} ({ratio['median_ms']:.3f} vs "
            f"{reference['median_ms']:.3f} ms, 1 thread, interleaved in one run)")


def render_markdown(report):
    parity = report["parity"]
    lines = [
        f"# {report['model']['name']} — {report['model']['quantize']} export",
        "",
        f"`{report['command']}`",
        "",
        "## Parity with the float model",
        "",
        f"Measured on {parity['images']} images: {parity['source']}.",
        "",
        "| | float | tflite |",
        "|---|---|---|",
        f"| top-1 | {_pct(parity['float']['top1'])} | {_pct(parity['tflite']['top1'])} |",
        f"| top-5 | {_pct(parity['float']['top5'])} | {_pct(parity['tflite']['top5'])} |",
        "",
        f"- top-1 agreement: **{_pct(parity['agreement_top1'])}** (95% interval "
        f"{_interval(parity.get('agreement_interval_95'))}; share of images where both models "
        "pick the same class; each image's outcome is in parity_images.csv)",
        f"- mean KL(float ‖ tflite): {parity['kl_mean']:.5f}",
        "- output SNR: "
        + ("identical outputs" if parity["snr_db"] is None else f"{parity['snr_db']:.1f} dB"),
        f"- most frequent top-1 class covers {_pct(parity['dominant_share']['tflite'])} of images "
        f"(float: {_pct(parity['dominant_share']['float'])}); far above the float share means "
        "collapsed calibration",
        f"- float reference: float32 .tflite; max |Δp| vs Keras "
        f"{parity['keras_check']['max_abs_prob_diff']:.1e} on {parity['keras_check']['images']} images",
        "",
    ]
    for check in parity["checks"]:
        lines.append(("✓ " if check["ok"] else "✗ ") + check["check"] + "  ")
    if parity["per_class"]:
        lines += ["", "### Per class", "", "| class | images | float top-1 | tflite top-1 | agreement |",
                  "|---|---|---|---|---|"]
        for row in parity["per_class"]:
            lines.append(f"| {row['class']} | {row['images']} | {_pct(row['float_top1'])} | "
                         f"{_pct(row['tflite_top1'])} | {_pct(row['agreement_top1'])} |")
    lat = report["latency_ms"]
    machine = report["machine"]
    lines += [
        "",
        "## Size and speed",
        "",
        f"- model.tflite: {report['size_bytes']:,} bytes (float32 .tflite: "
        f"{report['float_size_bytes']:,} bytes); {report['macs'] / 1e6:,.1f}M multiply-accumulates",
        f"- runtime: {report['benchmark']['runtime']} {report['benchmark']['runtime_version']}, "
        f"XNNPACK {'applied' if report['benchmark']['xnnpack_applied'] else 'NOT applied'} "
        f"({report['benchmark']['ops_not_delegated']} ops outside it)",
        f"- machine: {machine_line(machine)}",
        f"- {ratio_line(report['latency_ratio'])}",
        "",
        "| threads | median ms | p90 ms |",
        "|---|---|---|",
    ]
    for threads, row in lat.items():
        lines.append(f"| {threads} | {row['median']:.2f} | {row['p90']:.2f} |")
    lines += ["", "Milliseconds hold on this machine only; compare other runs by the ratio."]
    if report.get("clients"):
        lines += ["", "## Clients", "", "Run on the model file as it is, each given the same framed "
                  "images as the pipeline's interpreter:", "",
                  "| client | loads | top-1 as ours | names | probabilities | |", "|---|---|---|---|---|---|"]
        for row in report["clients"]["checked"]:
            mark = {True: "✓", False: "✗", None: "–"}[row.get("ok")]
            matches = (f"{row['top1_matches']}/{row['images']}" if "top1_matches" in row else "")
            yes = {True: "yes", False: "NO", None: ""}
            lines.append(f"| {mark} {row['client']} | {yes[row.get('loads')]} | {matches} | "
                         f"{yes[row.get('category_names')]} | {yes[row.get('scores_are_probabilities')]} | "
                         f"{row.get('detail', '')} |")
        lines += ["", report["clients"]["framing"]]
    lines += ["", "![parity](parity.png)", "", "## Model", ""]
    ops = report["conversion"]["weighted_ops"]
    lines += [f"- {name}: {count}" for name, count in ops.items()]
    keep = report.get("keep_float")
    if keep and keep["mode"] == "auto":
        lines += ["", "## Kept in float (--keep-float auto)", "",
                  f"Searched on held-out calibration images; target reached with 95% confidence: "
                  f"{keep['reached']}. Most harmful per MAC: "
                  + ", ".join(s["group"] for s in keep["sensitivity"][:8])
                  + f"; kept order: {keep['order']}."
                  + (f" Pin it: `{keep['pin']}`." if keep.get("pin") else ""), "",
                  "| blocks in float | agreement | KL | size bytes | latency × int8 |", "|---|---|---|---|---|"]
        base = keep["baseline"]
        lines.append(f"| none | {_pct(base['agreement_top1'])} | {base['kl_mean']:.5f} | "
                     f"{base['size_bytes']:,} | 1.00 |")
        for step in keep["steps"]:
            lines.append(f"| {', '.join(step['groups'])} | {_pct(step['agreement_top1'])} | "
                         f"{step['kl_mean']:.5f} | {step['size_bytes']:,} | {step['latency_ratio']:.2f} |")
    elif keep:
        lines += ["", f"Kept in float (--keep-float): {', '.join(keep['layers'])}"]
    cal = report["calibration"]
    lines += [
        "",
        "## Calibration",
        "",
        f"- {cal['used']} images from {cal['directory']} ({cal['classes']} classes, "
        f"{cal['images_found']} found, {len(cal['skipped'])} skipped as undecodable)",
        "",
        "## Time by stage (s)",
        "",
    ]
    lines += [f"- {stage}: {seconds:.1f}" for stage, seconds in report["timings_s"].items()]
    lines += cache_lines(report.get("cache"))
    lines.append("")
    return "\n".join(lines)


CACHE_STATES = {"hit": "from the cache", "made": "made and cached",
                "rebuilt": "rebuilt (the cached entry was corrupt)"}


def cache_lines(cache):
    """The report's "what came from the cache" section."""
    if not cache:
        return []
    if cache["dir"] is None and not cache["entries"]:
        return ["", "## Cache", "", "- off (--no-cache): everything was computed in this run"]
    lines = ["", "## Cache", "", f"- folder: {cache['dir']}"]
    lines += [f"- {e['what']}: {CACHE_STATES[e['state']]}" for e in cache["entries"]]
    return lines


def render_parity_plot(parity, title):
    """parity.png: per-class top-1 of both models, and the distribution of per-image KL."""
    import numpy as np

    from pipeline.core.figures import png_bytes, pyplot

    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    rows = parity.per_class
    if rows:
        x = np.arange(len(rows))
        left.bar(x - 0.2, [r["float_top1"] for r in rows], 0.4, label="float")
        left.bar(x + 0.2, [r["tflite_top1"] for r in rows], 0.4, label="tflite")
        left.plot(x, [r["agreement_top1"] for r in rows], "k.", label="agreement")
        left.set_xticks(x, [r["class"][:14] for r in rows], rotation=45, ha="right", fontsize=8)
        left.set_ylim(0, 1.25)
        left.set_ylabel("top-1")
        left.legend(loc="upper center", ncol=3, fontsize=8)
        left.set_title("per class")
    else:
        left.text(0.5, 0.5, "no labels: per-class accuracy needs --eval with class folders",
                  ha="center", va="center", wrap=True)
        left.set_axis_off()
    kl = np.asarray(parity.kl_per_image, np.float64)
    if kl.size and kl.max() > 0:
        low = max(kl[kl > 0].min(), 1e-8)
        bins = np.logspace(np.log10(low), np.log10(max(kl.max(), low * 10)), 40)
        right.hist(np.clip(kl, bins[0], None), bins=bins)
        right.set_xscale("log")
    else:
        right.text(0.5, 0.5, "identical outputs (KL = 0)", ha="center", va="center")
    right.axvline(parity.kl_mean, color="k", linestyle="--", label=f"mean {parity.kl_mean:.4f}")
    right.set_xlabel("KL(float ‖ tflite) per image")
    right.set_ylabel("images")
    right.legend(fontsize=8)
    right.set_title(f"{parity.images} images, agreement {parity.agreement_top1:.2%}")
    figure.suptitle(title)
    figure.tight_layout()
    return png_bytes(figure)


def write_report(out_dir, built, converted, float_tflite, calibration, parity, bench, spec,
                 timings, command, keep_float=None, qat=None, clients=None, cache=None):
    """Assembles and atomically writes all artifacts. Returns the report dict."""
    import hashlib

    report = {
        "command": command,
        "model": {"name": built.name, **built.architecture, "quantize": converted.config.quantize,
                  "io": converted.config.io_type(), "output": built.output_kind},
        "float": parity.float_metrics,
        "tflite": parity.tflite_metrics,
        "agreement_top1": parity.agreement_top1,
        "kl_mean": parity.kl_mean,
        "snr_db": parity.snr_db,
        "size_bytes": converted.size_bytes,
        "float_size_bytes": len(float_tflite),
        "macs": converted.macs,
        "latency_ms": bench.latency_ms(),
        "latency_ratio": bench.latency_ratio(),
        "machine": bench.machine,
        "benchmark": {"runtime": bench.runtime, "runtime_version": bench.runtime_version,
                      "xnnpack_applied": bench.xnnpack_applied,
                      "ops_not_delegated": bench.latencies[0]["ops_not_delegated"],
                      "runs": bench.latencies},
        "parity": parity.to_json(),
        "conversion": converted.summary(),
        "calibration": calibration.summary(),
        "preprocessing": spec.to_config(),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "versions": versions(bench.runtime, bench.runtime_version),
        "sha256": {
            "weights": built.weights_sha256,
            "model": hashlib.sha256(converted.tflite).hexdigest(),
            "float_model": hashlib.sha256(float_tflite).hexdigest(),
            "calibration_images": calibration.sha256,
            "eval_images": parity.images_sha256,
        },
        "weights": built.weights_source,
        "keep_float": keep_float,
        "qat": qat,
        "clients": None if clients is None else {"checked": clients, "framing": framing(spec)},
        "cache": cache,
    }
    files = {
        **artifact_files(built, converted, spec),
        "report.json": json.dumps(report, indent=2) + "\n",
        "report.md": render_markdown(report),
        "parity.png": render_parity_plot(
            parity, f"{built.name} {converted.config.quantize} vs float — {parity.source}"),
    }
    if parity.per_image is not None:
        from pipeline.stages.verify import PER_IMAGE_FILE

        files[PER_IMAGE_FILE] = parity.per_image.to_csv()
    write_files_atomically(out_dir, files)
    return report
