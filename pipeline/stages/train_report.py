"""What pipeline.train writes: held-out accuracy per class, the confusion matrix, the training
curves, train_report.{json,md}, and the folder export --from-train reads, as one set.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

from pipeline.core import artifacts
from pipeline.core.files import files_sha256
from pipeline.stages import build, calibrate, report
from pipeline.stages.preprocess import Preprocessing


def evaluate(result):
    """Held-out accuracy, per class, and the confusion matrix of the final classifier."""
    predicted = result.model.predict(result.val_arrays, batch_size=64, verbose=0).argmax(axis=1)
    truth = np.asarray(result.split.val_labels)
    n = len(result.split.classes)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = [{"class": name, "images": int(confusion[i].sum()),
                  "accuracy": float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None}
                 for i, name in enumerate(result.split.classes)]
    return float((predicted == truth).mean()), per_class, confusion


def curves_png(history):
    from pipeline.core.figures import png_bytes, pyplot

    plt = pyplot()

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    x = np.arange(1, len(history) + 1)
    for key, label, axis in (("accuracy", "train", left), ("val_accuracy", "held-out", left),
                             ("loss", "train", right), ("val_loss", "held-out", right)):
        axis.plot(x, [row[key] for row in history], marker=".", label=label)
    heads = sum(1 for row in history if row["stage"] == "head")
    for axis, name in ((left, "accuracy"), (right, "loss (label-smoothed cross-entropy)")):
        if heads < len(history):
            axis.axvline(heads + 0.5, color="k", linestyle=":", label="fine-tuning starts")
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.legend(fontsize=8)
    figure.suptitle("training curves")
    return png_bytes(figure)


def confusion_png(confusion, classes):
    from pipeline.core.figures import png_bytes, pyplot

    plt = pyplot()

    size = max(4, 0.6 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size, size), dpi=100)
    axis.imshow(confusion, cmap="Blues")
    for (i, j), count in np.ndenumerate(confusion):
        axis.text(j, i, str(count), ha="center", va="center",
                  color="white" if count > confusion.max() / 2 else "black", fontsize=8)
    ticks = [c[:16] for c in classes]
    axis.set_xticks(range(len(classes)), ticks, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(classes)), ticks, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true class")
    axis.set_title("held-out confusion matrix")
    return png_bytes(figure)


def render_markdown(summary):
    lines = [f"# Training report: {len(summary['classes'])} classes from {summary['data']['root']}", ""]
    if summary["interrupted"]:
        lines += ["**Interrupted** (Ctrl-C): the model is the best epoch reached before that.", ""]
    best = summary["best_epoch"]
    lines += [
        "| | |", "|---|---|",
        f"| held-out accuracy | **{summary['val_accuracy']:.2%}** ({summary['data']['val']} images: "
        f"{summary['data']['val_source']}) |",
        f"| after stage one (head only) | {summary['stage_one_val_accuracy']:.2%} |",
        f"| kept epoch | {best['stage']} {best['epoch']} |",
        "| int8 grid | " + ("not snapped (--noint8-grid)" if not summary["int8_grid"] else
                           f"kernels snapped to their per-channel int8 grid; held-out accuracy "
                           f"before {summary['val_accuracy_before_int8_grid']:.2%}; "
                           f"{len(summary['int8_grid']['max_distance_before'])} layers were off it") + " |",
        f"| network | MobileNetV2 alpha {summary['config']['alpha']}, {summary['config']['resolution']} px, "
        f"fine-tuned from {summary['config']['fine_tune_from']} |",
        f"| weights | {summary['weights']} |",
        f"| training images | {summary['data']['train']} ({summary['config']['views']} views each, "
        f"augment {summary['config']['augment']}) |",
        f"| skipped | {len(summary['data']['skipped'])} undecodable images, "
        f"{summary['data']['ignored_files']} non-image files ignored |",
        f"| time | {summary['timings_s']['total']:.0f} s on {summary['machine']['cpu_model']} "
        f"({summary['machine']['cpu_count']} cores) |", "",
        "## Per class (held-out)", "", "| class | images | accuracy |", "|---|---|---|"]
    for row in summary["per_class"]:
        accuracy = "—" if row["accuracy"] is None else f"{row['accuracy']:.2%}"
        lines.append(f"| {row['class']} | {row['images']} | {accuracy} |")
    lines += ["", "## Epochs", "", "| stage | epoch | train acc | held-out acc | loss | held-out loss | s |",
              "|---|---|---|---|---|---|---|"]
    for row in summary["history"]:
        lines.append(f"| {row['stage']} | {row['epoch']} | {row['accuracy']:.2%} | {row['val_accuracy']:.2%} "
                     f"| {row['loss']:.3f} | {row['val_loss']:.3f} | {row['seconds']:.1f} |")
    lines += ["", "![curves](training_curves.png) ![confusion](confusion_matrix.png)", "",
              "Export it: `" + summary["export_command"] + "`", ""]
    return "\n".join(lines)


def write_outputs(cfg, result, command):
    """Writes OUT/ atomically; returns the summary dict (train_report.json)."""
    import tempfile

    from pipeline.device.runner import device_facts

    spec = Preprocessing(resolution=cfg.resolution)
    accuracy, per_class, confusion = evaluate(result)
    split = result.split
    export_command = f"python -m pipeline.export --from-train {cfg.output} --quantize int8"
    summary = {
        "command": command,
        "config": dataclasses.asdict(cfg),
        "classes": split.classes,
        "val_accuracy": accuracy,
        "stage_one_val_accuracy": result.stage_one_val_accuracy,
        "val_accuracy_before_int8_grid": result.val_accuracy_before_snap,
        "int8_grid": None if result.grid_distances is None else {
            "snapped": True,
            "max_distance_before": {k: round(v, 4) for k, v in result.grid_distances.items()
                                    if v > 1e-3},
            "layers_already_on_grid": sum(1 for v in result.grid_distances.values() if v <= 1e-3)},
        "best_epoch": result.best,
        "interrupted": result.interrupted,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "history": result.history,
        "data": {"root": str(split.root), "train": len(split.train), "val": len(split.val),
                 "val_source": split.source, "ignored_files": split.ignored_files,
                 "skipped": [{"file": p, "reason": r} for p, r in split.skipped],
                 "sha256_train": files_sha256(split.train),
                 "sha256_val": files_sha256(split.val)},
        "preprocessing": spec.to_config(),
        "weights": result.weights_source,
        "sha256": {"base_weights": result.weights_sha256,
                   "model_weights": build.weights_sha256(result.model)},
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "machine": device_facts(),
        "versions": report.versions(),
        "export_command": export_command,
    }
    with tempfile.TemporaryDirectory() as scratch:
        model_file = Path(scratch) / "model.keras"
        result.model.save(model_file)
        model_bytes = model_file.read_bytes()
    val_root = split.root if not cfg.val else Path(cfg.val)
    artifacts.write_files_atomically(cfg.output, {
        "model.keras": model_bytes,
        "labels.txt": "\n".join(split.classes) + "\n",
        "train_images.json": calibrate.write_image_list(split.root, split.train,
                                                        "pipeline.train: the images trained on"),
        "val_images.json": calibrate.write_image_list(val_root, split.val,
                                                      f"pipeline.train: held out ({split.source})"),
        "train_report.json": json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
        "train_report.md": render_markdown(summary),
        "training_curves.png": curves_png(result.history),
        "confusion_matrix.png": confusion_png(confusion, split.classes),
    })
    return summary
