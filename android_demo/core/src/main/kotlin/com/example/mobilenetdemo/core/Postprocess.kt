package com.example.mobilenetdemo.core

import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.exp

data class Prediction(val index: Int, val label: String, val score: Double)

/** Output tensor bytes → dequantized scores → probabilities → top-k labels, per model_config.json. */
object Postprocess {

    fun dequantize(bytes: ByteArray, config: ModelConfig): FloatArray {
        val spec = config.output
        return when (spec.dtype) {
            "float32" -> {
                val buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
                FloatArray(buffer.remaining()) { buffer.get(it) }
            }
            "uint8", "int8" -> {
                val scale = spec.scale ?: error("quantized output without a scale in model_config.json")
                val zero = spec.zeroPoint ?: 0
                FloatArray(bytes.size) { i ->
                    val q = if (spec.dtype == "uint8") bytes[i].toInt() and 0xFF else bytes[i].toInt()
                    (q - zero).toFloat() * scale
                }
            }
            else -> error("output dtype ${spec.dtype} is not supported by this app")
        }
    }

    /** Softmax in double precision (logits); scores pass through unchanged. */
    fun probabilities(values: FloatArray, config: ModelConfig): DoubleArray {
        if (config.outputMeaning != "logits") return DoubleArray(values.size) { values[it].toDouble() }
        val top = values.maxOrNull()?.toDouble() ?: 0.0
        val e = DoubleArray(values.size) { exp(values[it] - top) }
        val sum = e.sum()
        return DoubleArray(values.size) { e[it] / sum }
    }

    /** The k best classes, highest score first; ties go to the lower index (a stable sort). */
    fun topK(bytes: ByteArray, config: ModelConfig, labels: List<String>, k: Int): List<Prediction> {
        val scores = probabilities(dequantize(bytes, config), config)
        require(labels.size == scores.size) { "${labels.size} labels for ${scores.size} outputs" }
        return scores.indices.sortedWith(compareByDescending<Int> { scores[it] }.thenBy { it })
            .take(k).map { Prediction(it, labels[it], scores[it]) }
    }
}
