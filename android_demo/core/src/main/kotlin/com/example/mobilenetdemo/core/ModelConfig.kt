package com.example.mobilenetdemo.core

import com.google.gson.JsonObject
import com.google.gson.JsonParser

/**
 * What model_config.json (written by `python -m pipeline.export`) says about feeding the model.
 * Everything the app does with the model's input and output comes from here, never from constants.
 */
data class TensorSpec(
    val shape: List<Int>,
    val dtype: String,          // "uint8" | "int8" | "float32"
    val scale: Float?,          // null for float tensors
    val zeroPoint: Int?,
)

data class ModelConfig(
    val modelFile: String,
    val labelsFile: String,
    val input: TensorSpec,
    val output: TensorSpec,
    val outputMeaning: String,  // "probabilities" (as they are), "logits" (apply softmax) or "scores"
    val cropFraction: Double,
    val resolution: Int,
    val normalizeMean: Float,   // x = (pixel - mean) / std
    val normalizeStd: Float,
) {
    companion object {
        fun parse(json: String): ModelConfig {
            val root = JsonParser.parseString(json).asJsonObject
            val pre = root.getAsJsonObject("preprocessing")
            val size = pre.getAsJsonObject("resize").getAsJsonArray("size")
            val normalize = pre.getAsJsonObject("normalize")
            val output = root.getAsJsonObject("output")
            return ModelConfig(
                modelFile = root.get("model_file").asString,
                labelsFile = root.get("labels_file").asString,
                input = tensor(root.getAsJsonObject("input")),
                output = tensor(output),
                outputMeaning = output.get("meaning").asString,
                cropFraction = pre.getAsJsonObject("crop").get("crop_fraction").asDouble,
                resolution = size[0].asInt,
                normalizeMean = normalize.get("mean").asFloat,
                normalizeStd = normalize.get("std").asFloat,
            )
        }

        private fun tensor(spec: JsonObject): TensorSpec {
            val quantization = spec.getAsJsonObject("quantization")
            return TensorSpec(
                shape = spec.getAsJsonArray("shape").map { it.asInt },
                dtype = spec.get("dtype").asString,
                scale = quantization?.get("scale")?.asFloat,
                zeroPoint = quantization?.get("zero_point")?.asInt,
            )
        }
    }
}
