package com.example.mobilenetdemo

import android.content.Context
import android.graphics.Bitmap
import android.os.SystemClock
import com.example.mobilenetdemo.core.ModelConfig
import com.example.mobilenetdemo.core.Postprocess
import com.example.mobilenetdemo.core.Prediction
import com.example.mobilenetdemo.core.Preprocess
import com.example.mobilenetdemo.core.RgbImage
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate
import java.io.Closeable
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel

/**
 * LiteRT interpreter + the core's pre/post-processing. Everything about the tensors — shape,
 * dtype, quantization, crop, output meaning — comes from model_config.json in the assets.
 */
class Classifier(context: Context, useGpu: Boolean) : Closeable {
    val config: ModelConfig = ModelConfig.parse(
        context.assets.open(CONFIG_FILE).bufferedReader().use { it.readText() })
    private val labels: List<String> = context.assets.open(config.labelsFile).bufferedReader()
        .useLines { lines -> lines.filter { it.isNotBlank() }.toList() }
    private val gpuDelegate: GpuDelegate? =
        if (useGpu && CompatibilityList().isDelegateSupportedOnThisDevice) GpuDelegate() else null
    private val interpreter: Interpreter
    val usingGpu: Boolean get() = gpuDelegate != null

    init {
        val options = Interpreter.Options().setNumThreads(4)  // CPU path: XNNPACK by default
        gpuDelegate?.let { options.addDelegate(it) }
        interpreter = Interpreter(loadModel(context, config.modelFile), options)
        val inputShape = interpreter.getInputTensor(0).shape().toList()
        val outputSize = interpreter.getOutputTensor(0).shape().last()
        check(inputShape == config.input.shape) { "model input $inputShape, config ${config.input.shape}" }
        check(outputSize == labels.size) { "model has $outputSize outputs for ${labels.size} labels" }
    }

    data class Result(val predictions: List<Prediction>, val inferenceMs: Double)

    /** A decoded bitmap and its EXIF orientation (1 = upright) → top-k, timed. */
    fun classify(bitmap: Bitmap, exifOrientation: Int, k: Int = 3): Result {
        val pixels = Preprocess.pixels(toRgb(bitmap), exifOrientation, config)
        val input = ByteBuffer.allocateDirect(inputBytesSize()).order(ByteOrder.nativeOrder())
        input.put(Preprocess.inputBytes(pixels, config)).rewind()
        val output = ByteBuffer.allocateDirect(interpreter.getOutputTensor(0).numBytes())
            .order(ByteOrder.nativeOrder())
        val start = SystemClock.elapsedRealtimeNanos()
        interpreter.run(input, output)
        val inferenceMs = (SystemClock.elapsedRealtimeNanos() - start) / 1e6
        val bytes = ByteArray(output.capacity()).also { output.rewind(); output.get(it) }
        return Result(Postprocess.topK(bytes, config, labels, k), inferenceMs)
    }

    private fun inputBytesSize(): Int = interpreter.getInputTensor(0).numBytes()

    private fun toRgb(bitmap: Bitmap): RgbImage {
        val argb = IntArray(bitmap.width * bitmap.height)
        bitmap.getPixels(argb, 0, bitmap.width, 0, 0, bitmap.width, bitmap.height)
        val rgb = ByteArray(argb.size * 3)
        for (i in argb.indices) {  // alpha is discarded, as the pipeline does
            rgb[i * 3] = (argb[i] shr 16).toByte()
            rgb[i * 3 + 1] = (argb[i] shr 8).toByte()
            rgb[i * 3 + 2] = argb[i].toByte()
        }
        return RgbImage(bitmap.width, bitmap.height, rgb)
    }

    override fun close() {
        interpreter.close()
        gpuDelegate?.close()
    }

    companion object {
        const val CONFIG_FILE = "model_config.json"

        private fun loadModel(context: Context, name: String): MappedByteBuffer {
            context.assets.openFd(name).use { fd ->
                FileInputStream(fd.fileDescriptor).channel.use { channel ->
                    return channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
                }
            }
        }
    }
}
