"""How often the gate's paired agreement and KL checks fail between equally good models (its
false-alarm rate), and which real drops they catch, on the configuration `.ci/run` gates: the
shared ImageNet weights at 224, 100 calibration images, the first 1,000 stratified val images.

    python benchmarks/gate_noise.py --calibration ../shared/data/imagenette-224/calib \\
        --eval ../shared/data/imagenette-224/val --weights ../shared/weights/.../..._1.0_224.h5

Equally good models: the same export calibrated on other draws of 100 images (`--seeds`), and the
seed-0 model with every calibrated range endpoint moved by a random ±2% (`--perturbed`; more
than the grid's step, so each draw re-rounds many ranges). Each is gated
against every other of its family, as a baseline would be by a later equally good model; the old
rule (agreement more than 1 point below the baseline's) is counted beside the paired one. Worse
models: calibrated on fewer images (`--few`). Writes gate_noise.json and prints a table.
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--perturbed", type=int, default=12)
    parser.add_argument("--perturbation", type=float, default=0.02)
    parser.add_argument("--few", default="1,2,3,5,10,20,50")
    parser.add_argument("--output", default="gate_noise.json")
    args = parser.parse_args()

    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils
    from tqdm import tqdm

    from pipeline.core.files import file_digests
    from pipeline.stages import build, calibrate, convert, evalset, gate, parity_metrics, ranges, verify
    from pipeline.stages.preprocess import Preprocessing, load_images

    spec = Preprocessing(224)
    built = build.build_model(build.BuildConfig(weights=args.weights))
    float_model = convert.float_tflite(built)
    eval_set = evalset.eval_set_from_folder(args.eval, built, args.eval_samples, 0)
    images = load_images(eval_set.paths, spec).arrays
    reference = parity_metrics.tflite_logits(float_model, images)
    names = verify.image_names(eval_set.paths, eval_set.root)
    digests = file_digests(eval_set.paths)
    cfg = convert.ConvertConfig("int8")

    def outcome(calibrated):
        model = convert.quantize_calibrated(calibrated, cfg)
        logits = parity_metrics.tflite_logits(model, images)
        metrics = parity_metrics.compare_outputs(reference, logits)
        return verify.PerImage(names, digests, None, reference.argmax(-1).tolist(),
                               logits.argmax(-1).tolist(), metrics["kl_per_image"].tolist())

    def calibrated_on(samples, seed):
        drawn = calibrate.representative_dataset(calibrate.CalibrationConfig(
            directory=args.calibration, samples=samples, seed=seed), spec)
        return convert.calibrate_model(built, drawn.arrays, float_model=float_model)

    def perturbed(calibrated, seed):
        rng = np.random.default_rng(seed)
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
        for tensor in model.subgraphs[0].tensors:
            q = tensor.quantization
            if q is not None and q.min is not None and tensor.name != b"serving_default_keras_tensor:0":
                q.min = [v * (1 + rng.uniform(-args.perturbation, args.perturbation)) for v in q.min]
                q.max = [v * (1 + rng.uniform(-args.perturbation, args.perturbation)) for v in q.max]
        ranges.snap_model_ranges(model)
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))

    base = calibrated_on(100, 0)
    families = {
        "calibration draws": [outcome(calibrated_on(100, s)) for s in tqdm(range(args.seeds), "draws")],
        "perturbed ranges": [outcome(perturbed(base, s)) for s in tqdm(range(args.perturbed), "perturbed")],
    }
    thresholds = gate.GateThresholds()
    report = {"config": vars(args), "families": {}, "worse": []}
    print("| family | pairs | old rule fails | paired agreement fails | paired KL fails | "
          "agreement range | discordant images (median) |")
    print("|---|---|---|---|---|---|---|")
    for family, runs in families.items():
        old = agreement_fails = kl_fails = 0
        discordant = []
        pairs = list(itertools.permutations(range(len(runs)), 2))
        for i, j in pairs:
            results = _judge(gate, runs[i], runs[j], thresholds)
            old += results["old"]
            agreement_fails += not results["agreement"].passed
            kl_fails += not results["kl"].passed
            extra = results["agreement"].extra
            discordant.append(len(extra["newly_disagree"]) + len(extra["newly_agree"]))
        agreements = [float(np.mean(r.agree())) for r in runs]
        row = {"pairs": len(pairs), "old_rule_fails": old, "paired_agreement_fails": agreement_fails,
               "paired_kl_fails": kl_fails, "agreement_min": min(agreements),
               "agreement_max": max(agreements), "discordant_median": float(np.median(discordant))}
        report["families"][family] = row
        print(f"| {family} | {len(pairs)} | {old} ({old / len(pairs):.1%}) | {agreement_fails} "
              f"({agreement_fails / len(pairs):.1%}) | {kl_fails} ({kl_fails / len(pairs):.1%}) | "
              f"{min(agreements):.2%}–{max(agreements):.2%} | {np.median(discordant):.0f} |")
    baseline = families["calibration draws"][0]
    print("\n| calibration images | agreement | drop pt | newly disagree / agree | McNemar p | "
          "agreement check | KL | KL check |")
    print("|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.few.split(",")]:
        run = outcome(calibrated_on(n, 0))
        results = _judge(gate, baseline, run, thresholds)
        a, k = results["agreement"], results["kl"]
        row = {"calibration_images": n, "agreement": float(np.mean(run.agree())),
               "newly_disagree": len(a.extra["newly_disagree"]), "newly_agree": len(a.extra["newly_agree"]),
               "p": a.extra["p_value"], "agreement_fails": not a.passed, "kl": float(np.mean(run.kl)),
               "kl_fails": not k.passed}
        report["worse"].append(row)
        drop = float(np.mean(baseline.agree())) - row["agreement"]
        print(f"| {n} | {row['agreement']:.2%} | {drop * 100:.2f} | {row['newly_disagree']} / "
              f"{row['newly_agree']} | {row['p']:.2g} | {'FAILS' if not a.passed else 'passes'} | "
              f"{row['kl']:.5f} | {'FAILS' if not k.passed else 'passes'} |")
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")


def _judge(gate, baseline_run, candidate_run, thresholds):
    """The gate's agreement and KL checks of `candidate_run` against a baseline of `baseline_run`,
    and the old fixed-bound rule's verdict."""
    import numpy as np

    def report_of(run):
        return {"agreement_top1": float(np.mean(run.agree())), "kl_mean": float(np.mean(run.kl))}

    base_report, report = report_of(baseline_run), report_of(candidate_run)
    baseline = dict(base_report, per_image=gate.per_image_block(baseline_run))
    rows = gate.baseline_rows(baseline, "baseline")
    agreement = gate.agreement_check(report, baseline, thresholds, candidate_run, rows)
    kl = gate.kl_check(report, baseline, thresholds, candidate_run, rows)
    old = report["agreement_top1"] < base_report["agreement_top1"] - thresholds.agreement_tolerance
    return {"agreement": agreement, "kl": kl, "old": old}


if __name__ == "__main__":
    main()
