package com.example.mobilenetdemo.core

import com.google.gson.JsonObject
import com.google.gson.JsonParser
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File

/**
 * The app's pre- and post-processing against golden vectors written by the Python pipeline
 * (pipeline/golden.py): input tensor bytes must match byte for byte, top-k exactly (indices) and
 * to 1e-6 (probabilities, computed in double precision on both sides). No tolerance on pixels:
 * both sides resize with Pillow's fixed-point bilinear filter.
 *
 * Vector folders: the system property golden.dirs (path-separated), else the committed set.
 */
class GoldenVectorsTest {

    private val folders: List<File> =
        (System.getProperty("golden.dirs") ?: "src/test/resources/golden")
            .split(File.pathSeparator).filter { it.isNotBlank() }.map { File(it) }

    private fun cases(suffix: String): List<File> =
        folders.flatMap { folder -> folder.listFiles { f -> f.name.endsWith(suffix) }?.toList() ?: emptyList() }
            .sortedBy { it.path }

    private fun json(file: File): JsonObject = JsonParser.parseString(file.readText()).asJsonObject

    private fun configFor(meta: JsonObject, outputDtype: String = "uint8", outputScale: Float? = 0.1f,
                          outputZero: Int? = 0, meaning: String = "logits"): ModelConfig {
        val dtype = meta.get("input_dtype")?.asString ?: "uint8"
        val scale = meta.get("input_scale")?.takeIf { !it.isJsonNull }?.asFloat
        val zero = meta.get("input_zero_point")?.takeIf { !it.isJsonNull }?.asInt
        val resolution = meta.get("resolution")?.asInt ?: 224
        return ModelConfig(
            modelFile = "model.tflite", labelsFile = "labels.txt",
            input = TensorSpec(listOf(1, resolution, resolution, 3), dtype, scale, zero),
            output = TensorSpec(listOf(1, 1000), outputDtype, outputScale, outputZero),
            outputMeaning = meaning,
            cropFraction = meta.get("crop_fraction")?.asDouble ?: 1.0,
            resolution = resolution,
            normalizeMean = meta.get("normalize_mean")?.asFloat ?: 127f,
            normalizeStd = meta.get("normalize_std")?.asFloat ?: 127.5f,
        )
    }

    @Test
    fun inputTensorBytesMatchThePipeline() {
        val metas = cases(".json").filter { File(it.path.removeSuffix(".json") + ".rgb").exists() }
        assertTrue("no golden image vectors found in $folders", metas.size >= 10)
        for (metaFile in metas) {
            val base = metaFile.path.removeSuffix(".json")
            val meta = json(metaFile)
            val decoded = RgbImage(meta.get("width").asInt, meta.get("height").asInt,
                                   File("$base.rgb").readBytes())
            val config = configFor(meta)
            val pixels = Preprocess.pixels(decoded, meta.get("orientation").asInt, config)
            val actual = Preprocess.inputBytes(pixels, config)
            val expected = File("$base.input").readBytes()
            assertEquals("${metaFile.name}: tensor size", expected.size, actual.size)
            val firstDifference = expected.indices.firstOrNull { expected[it] != actual[it] }
            assertTrue("${metaFile.name}: first differing byte at $firstDifference", firstDifference == null)
        }
    }

    @Test
    fun topKMatchesThePipeline() {
        val metas = cases(".json").filter { File(it.path.removeSuffix(".json") + ".output").exists() }
        assertTrue("no golden top-k vectors found", metas.size >= 4)
        for (metaFile in metas) {
            val meta = json(metaFile)
            val scale = meta.get("scale").takeIf { !it.isJsonNull }?.asFloat
            val zero = meta.get("zero_point").takeIf { !it.isJsonNull }?.asInt
            val config = configFor(JsonObject(), meta.get("output_dtype").asString, scale, zero,
                                   meta.get("meaning").asString)
            val labels = meta.getAsJsonArray("labels").map { it.asString }
            val output = File(metaFile.path.removeSuffix(".json") + ".output").readBytes()
            val predictions = Postprocess.topK(output, config, labels, meta.get("k").asInt)
            val expected = meta.getAsJsonArray("expected").map { it.asJsonObject }
            assertEquals(metaFile.name, expected.map { it.get("index").asInt }, predictions.map { it.index })
            for ((want, got) in expected.zip(predictions)) {
                assertEquals(metaFile.name, want.get("score").asDouble, got.score, 1e-6)
            }
        }
    }

    @Test
    fun exportedModelConfigParses() {
        val configs = cases("model_config.json")
        for (file in configs) {
            val config = ModelConfig.parse(file.readText())
            assertEquals("model.tflite", config.modelFile)
            assertEquals(config.resolution, config.input.shape[1])
            assertTrue(config.input.dtype in listOf("uint8", "int8", "float32"))
        }
    }

    @Test
    fun exifOrientationsMapLikePillow() {
        // 2x1 image: red, green. Rotating 90° clockwise (orientation 6) gives a 1x2 column red over green.
        val image = RgbImage(2, 1, byteArrayOf(-1, 0, 0, 0, -1, 0))
        val rotated = Preprocess.orient(image, 6)
        assertEquals(1, rotated.width)
        assertArrayEquals(byteArrayOf(-1, 0, 0, 0, -1, 0), rotated.data)
        val flipped = Preprocess.orient(image, 2)
        assertArrayEquals(byteArrayOf(0, -1, 0, -1, 0, 0), flipped.data)
    }
}
