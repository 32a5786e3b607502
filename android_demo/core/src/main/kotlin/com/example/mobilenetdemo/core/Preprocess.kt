package com.example.mobilenetdemo.core

import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.ceil
import kotlin.math.max
import kotlin.math.min
import kotlin.math.roundToInt

/** 8-bit RGB pixels, row-major, 3 bytes a pixel: what the platform decoder gives us. */
class RgbImage(val width: Int, val height: Int, val data: ByteArray) {
    init {
        require(data.size == width * height * 3) { "expected ${width * height * 3} bytes, got ${data.size}" }
    }

    fun get(x: Int, y: Int, c: Int): Int = data[(y * width + x) * 3 + c].toInt() and 0xFF
}

/**
 * The pipeline's one preprocessing function (pipeline/preprocess.py), step for step, so that the
 * app feeds the model exactly the tensors it was calibrated and verified on:
 * EXIF orientation → center square crop → Pillow's bilinear resize → x = (p - mean) / std →
 * quantize with the input tensor's scale and zero point.
 *
 * Decoding stays with the platform (Android's BitmapFactory): JPEG decoders differ in their IDCT,
 * so golden vectors start from decoded RGB pixels.
 */
object Preprocess {

    /** ImageOps.exif_transpose: the EXIF Orientation tag (1–8) applied to the pixels. */
    fun orient(image: RgbImage, orientation: Int): RgbImage {
        val w = image.width
        val h = image.height
        val swap = orientation in 5..8
        val outW = if (swap) h else w
        val outH = if (swap) w else h
        val out = ByteArray(outW * outH * 3)
        for (y in 0 until outH) {
            for (x in 0 until outW) {
                val (sx, sy) = when (orientation) {
                    2 -> Pair(w - 1 - x, y)              // FLIP_LEFT_RIGHT
                    3 -> Pair(w - 1 - x, h - 1 - y)      // ROTATE_180
                    4 -> Pair(x, h - 1 - y)              // FLIP_TOP_BOTTOM
                    5 -> Pair(y, x)                      // TRANSPOSE
                    6 -> Pair(y, h - 1 - x)              // ROTATE_270 (90° clockwise)
                    7 -> Pair(w - 1 - y, h - 1 - x)      // TRANSVERSE
                    8 -> Pair(w - 1 - y, x)              // ROTATE_90 (90° counter-clockwise)
                    else -> Pair(x, y)
                }
                for (c in 0 until 3) out[(y * outW + x) * 3 + c] = image.data[(sy * w + sx) * 3 + c]
            }
        }
        return RgbImage(outW, outH, out)
    }

    /** side = round(min(w, h) * fraction); left = (w - side) / 2; top = (h - side) / 2. */
    fun cropBox(width: Int, height: Int, fraction: Double): IntArray {
        val side = max(1, pythonRound(min(width, height) * fraction))
        val left = (width - side) / 2
        val top = (height - side) / 2
        return intArrayOf(left, top, left + side, top + side)
    }

    fun crop(image: RgbImage, box: IntArray): RgbImage {
        val (left, top, right, bottom) = box.toList()
        val w = right - left
        val h = bottom - top
        val out = ByteArray(w * h * 3)
        for (y in 0 until h) {
            System.arraycopy(image.data, ((top + y) * image.width + left) * 3, out, y * w * 3, w * 3)
        }
        return RgbImage(w, h, out)
    }

    // --- Pillow's bilinear resample (libImaging/Resample.c), reproduced bit for bit ---------------

    private const val PRECISION_BITS = 32 - 8 - 2

    private class Coefficients(val ksize: Int, val bounds: IntArray, val kk: IntArray)

    private fun bilinear(x: Double): Double {
        val a = if (x < 0.0) -x else x
        return if (a < 1.0) 1.0 - a else 0.0
    }

    /** precompute_coeffs + normalize_coeffs_8bpc for one axis (input box = the whole axis). */
    private fun coefficients(inSize: Int, outSize: Int): Coefficients {
        val scale = inSize.toDouble() / outSize
        val filterScale = if (scale < 1.0) 1.0 else scale
        val support = 1.0 * filterScale  // bilinear support is 1
        val ksize = ceil(support).toInt() * 2 + 1
        val bounds = IntArray(outSize * 2)
        val kk = IntArray(outSize * ksize)
        val k = DoubleArray(ksize)
        for (xx in 0 until outSize) {
            val center = (xx + 0.5) * scale
            var ww = 0.0
            val ss = 1.0 / filterScale
            var xmin = (center - support + 0.5).toInt()
            if (xmin < 0) xmin = 0
            var xmax = (center + support + 0.5).toInt()
            if (xmax > inSize) xmax = inSize
            xmax -= xmin
            for (x in 0 until ksize) k[x] = 0.0
            for (x in 0 until xmax) {
                val w = bilinear((x + xmin - center + 0.5) * ss)
                k[x] = w
                ww += w
            }
            for (x in 0 until xmax) if (ww != 0.0) k[x] /= ww
            for (x in 0 until ksize) {
                val v = k[x] * (1 shl PRECISION_BITS)
                kk[xx * ksize + x] = if (k[x] < 0) (-0.5 + v).toInt() else (0.5 + v).toInt()
            }
            bounds[xx * 2] = xmin
            bounds[xx * 2 + 1] = xmax
        }
        return Coefficients(ksize, bounds, kk)
    }

    private fun clip8(value: Int): Int = when {
        value >= (1 shl PRECISION_BITS shl 8) -> 255
        value <= 0 -> 0
        else -> value ushr PRECISION_BITS
    }

    /** Image.resize((outW, outH), Image.BILINEAR): horizontal pass, then vertical, as Pillow does. */
    fun resizeBilinear(image: RgbImage, outW: Int, outH: Int): RgbImage {
        if (outW == image.width && outH == image.height) return RgbImage(outW, outH, image.data.copyOf())
        val horizontal = coefficients(image.width, outW)
        val vertical = coefficients(image.height, outH)
        val needHorizontal = outW != image.width
        val needVertical = outH != image.height
        // Rows of the source the vertical pass reads; the horizontal pass computes only those.
        val yFirst = vertical.bounds[0]
        val yLast = vertical.bounds[outH * 2 - 2] + vertical.bounds[outH * 2 - 1]
        var current = image
        var rowOffset = 0
        if (needHorizontal) {
            val rows = yLast - yFirst
            val out = ByteArray(outW * rows * 3)
            for (yy in 0 until rows) {
                for (xx in 0 until outW) {
                    val xmin = horizontal.bounds[xx * 2]
                    val xmax = horizontal.bounds[xx * 2 + 1]
                    for (c in 0 until 3) {
                        var ss = 1 shl (PRECISION_BITS - 1)
                        for (x in 0 until xmax) {
                            ss += image.get(x + xmin, yy + yFirst, c) * horizontal.kk[xx * horizontal.ksize + x]
                        }
                        out[(yy * outW + xx) * 3 + c] = clip8(ss).toByte()
                    }
                }
            }
            current = RgbImage(outW, rows, out)
            rowOffset = yFirst
        }
        if (!needVertical) return current
        val out = ByteArray(current.width * outH * 3)
        for (yy in 0 until outH) {
            val ymin = vertical.bounds[yy * 2] - rowOffset
            val ymax = vertical.bounds[yy * 2 + 1]
            for (xx in 0 until current.width) {
                for (c in 0 until 3) {
                    var ss = 1 shl (PRECISION_BITS - 1)
                    for (y in 0 until ymax) {
                        ss += current.get(xx, y + ymin, c) * vertical.kk[yy * vertical.ksize + y]
                    }
                    out[(yy * current.width + xx) * 3 + c] = clip8(ss).toByte()
                }
            }
        }
        return RgbImage(current.width, outH, out)
    }

    /** Decoded pixels + EXIF orientation → the square RGB image of the model's resolution. */
    fun pixels(decoded: RgbImage, orientation: Int, config: ModelConfig): RgbImage {
        val upright = orient(decoded, orientation)
        val cropped = crop(upright, cropBox(upright.width, upright.height, config.cropFraction))
        return resizeBilinear(cropped, config.resolution, config.resolution)
    }

    /**
     * Pixels → the input tensor's bytes: x = (p - mean) / std in float32, then
     * q = clamp(round_half_even(x / input scale) + zero point) for uint8/int8 inputs;
     * float32 inputs get x in native (little-endian) order.
     */
    fun inputBytes(image: RgbImage, config: ModelConfig): ByteArray {
        val spec = config.input
        val n = image.width * image.height * 3
        return when (spec.dtype) {
            "float32" -> {
                val buffer = ByteBuffer.allocate(n * 4).order(ByteOrder.LITTLE_ENDIAN)
                for (i in 0 until n) buffer.putFloat(normalize(image.data[i].toInt() and 0xFF, config))
                buffer.array()
            }
            "uint8", "int8" -> {
                val scale = spec.scale ?: error("quantized input without a scale in model_config.json")
                val zero = spec.zeroPoint ?: 0
                val (lo, hi) = if (spec.dtype == "uint8") Pair(0, 255) else Pair(-128, 127)
                ByteArray(n) { i ->
                    val x = normalize(image.data[i].toInt() and 0xFF, config)
                    val q = Math.rint((x / scale).toDouble()).toInt() + zero
                    q.coerceIn(lo, hi).toByte()
                }
            }
            else -> error("input dtype ${spec.dtype} is not supported by this app")
        }
    }

    private fun normalize(pixel: Int, config: ModelConfig): Float =
        (pixel.toFloat() - config.normalizeMean) / config.normalizeStd

    /** Python's round(): half to even. */
    private fun pythonRound(value: Double): Int = Math.rint(value).roundToInt()
}
