"""Parity metrics between two models' logits: top-k, agreement, KL(float ‖ tflite), SNR, per class.

Metrics are computed on logits. A model with a softmax head outputs float32 probabilities p, and
log p is its logits up to a per-image constant, which neither softmax nor any metric here sees (SNR
is taken on per-image centred logits for that reason)."""

import math

import numpy as np


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def as_logits(outputs, output_kind):
    """A model's outputs as logits: log p for probabilities (floored at float32's smallest normal,
    where a float32 softmax underflows), as they are otherwise."""
    outputs = np.asarray(outputs, np.float64)
    if output_kind != "probabilities":
        return outputs
    return np.log(np.maximum(outputs, np.finfo(np.float32).tiny))


def topk_accuracy(logits, labels, k):
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=-1)))


def compare_outputs(reference, candidate, labels=None):
    """Parity metrics between two (n, classes) logit arrays."""
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    log_p, log_q = log_softmax(reference), log_softmax(candidate)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    # Centred per image: logits are defined up to a per-image constant (softmax removes it).
    centred_ref = reference - reference.mean(axis=-1, keepdims=True)
    centred_cand = candidate - candidate.mean(axis=-1, keepdims=True)
    noise = float(np.sum((centred_ref - centred_cand) ** 2))
    signal = float(np.sum(centred_ref**2))
    ref_top1, cand_top1 = reference.argmax(-1), candidate.argmax(-1)
    metrics = {
        "agreement_top1": float(np.mean(ref_top1 == cand_top1)),
        "kl_mean": float(np.mean(kl)),
        "snr_db": None if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else None,
        "kl_per_image": kl,
        "dominant_share": {
            "float": float(np.bincount(ref_top1).max() / len(ref_top1)),
            "tflite": float(np.bincount(cand_top1).max() / len(cand_top1)),
        },
    }
    if labels is not None:
        metrics["float"] = {"top1": topk_accuracy(reference, labels, 1),
                            "top5": topk_accuracy(reference, labels, 5)}
        metrics["tflite"] = {"top1": topk_accuracy(candidate, labels, 1),
                             "top5": topk_accuracy(candidate, labels, 5)}
    else:
        metrics["float"] = {"top1": None, "top5": None}
        metrics["tflite"] = {"top1": None, "top5": None}
    return metrics


def per_class_metrics(reference, candidate, eval_set, built):
    if eval_set.labels is None:
        return []
    labels = np.asarray(eval_set.labels)
    rows = []
    for index in sorted(set(eval_set.labels)):
        mask = labels == index
        ref, cand = reference[mask].argmax(-1), candidate[mask].argmax(-1)
        rows.append({
            "class": built.labels[index],
            "index": int(index),
            "images": int(mask.sum()),
            "float_top1": float(np.mean(ref == index)),
            "tflite_top1": float(np.mean(cand == index)),
            "agreement_top1": float(np.mean(ref == cand)),
        })
    return rows


def tflite_logits(model_bytes, images, threads=2):
    """A .tflite model's outputs on `images` (in this process), as logits (`as_logits`)."""
    from pipeline.core.tflite import output_kind
    from pipeline.device.runner import Runner, load_runtime

    runner = Runner(load_runtime()[2], model_content=model_bytes, threads=threads)
    return as_logits(runner(images), output_kind(model_bytes))
