package com.example.mobilenetdemo

import android.Manifest
import android.content.pm.PackageManager
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.net.Uri
import android.os.Bundle
import android.view.View
import android.widget.Button
import android.widget.ImageView
import android.widget.TextView
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.core.content.ContextCompat
import androidx.exifinterface.media.ExifInterface
import com.google.android.material.switchmaterial.SwitchMaterial
import java.util.concurrent.Executors

/** Camera frames (and a picked gallery image) → top-3 labels with scores and inference time. */
class MainActivity : AppCompatActivity() {
    private var classifier: Classifier? = null
    private val analysisExecutor = Executors.newSingleThreadExecutor()
    private lateinit var results: TextView
    private lateinit var picked: ImageView
    private lateinit var preview: PreviewView

    private val pickImage = registerForActivityResult(ActivityResultContracts.GetContent()) { uri ->
        uri?.let { classifyGalleryImage(it) }
    }
    private val askCamera = registerForActivityResult(ActivityResultContracts.RequestPermission()) { ok ->
        if (ok) startCamera()
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        results = findViewById(R.id.results)
        picked = findViewById(R.id.picked)
        preview = findViewById(R.id.preview)
        loadClassifier(useGpu = false)
        findViewById<Button>(R.id.pick).setOnClickListener { pickImage.launch("image/*") }
        findViewById<SwitchMaterial>(R.id.gpu).setOnCheckedChangeListener { _, on -> loadClassifier(on) }
        if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) ==
            PackageManager.PERMISSION_GRANTED) startCamera() else askCamera.launch(Manifest.permission.CAMERA)
    }

    private fun loadClassifier(useGpu: Boolean) {
        analysisExecutor.execute {
            classifier?.close()
            classifier = try {
                Classifier(this, useGpu)
            } catch (e: java.io.IOException) {
                runOnUiThread { results.setText(R.string.no_model) }
                null
            }
        }
    }

    private fun startCamera() {
        val future = ProcessCameraProvider.getInstance(this)
        future.addListener({
            val provider = future.get()
            val previewUseCase = Preview.Builder().build().also { it.surfaceProvider = preview.surfaceProvider }
            val analysis = ImageAnalysis.Builder()
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .build()
            analysis.setAnalyzer(analysisExecutor) { frame -> classifyFrame(frame) }
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, previewUseCase, analysis)
        }, ContextCompat.getMainExecutor(this))
    }

    private fun classifyFrame(frame: ImageProxy) {
        frame.use {
            val model = classifier ?: return
            if (picked.visibility == View.VISIBLE) return
            val bitmap = it.toBitmap()
            show(model.classify(bitmap, orientationFromRotation(it.imageInfo.rotationDegrees)), model)
        }
    }

    private fun classifyGalleryImage(uri: Uri) {
        analysisExecutor.execute {
            val model = classifier ?: return@execute
            val bitmap: Bitmap = contentResolver.openInputStream(uri).use { BitmapFactory.decodeStream(it) }
            val orientation = contentResolver.openInputStream(uri).use {
                ExifInterface(it!!).getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
            }
            runOnUiThread {
                picked.setImageBitmap(bitmap)
                picked.visibility = View.VISIBLE
                preview.visibility = View.GONE
            }
            show(model.classify(bitmap, orientation), model)
        }
    }

    private fun show(result: Classifier.Result, model: Classifier) {
        val text = result.predictions.joinToString("\n") { "%s  %.1f%%".format(it.label, it.score * 100) } +
            "\n%.1f ms (%s, %s input)".format(result.inferenceMs, if (model.usingGpu) "GPU" else "CPU",
                                               model.config.input.dtype)
        runOnUiThread { results.text = text }
    }

    /** CameraX reports how far to rotate the frame clockwise; EXIF says the same with a tag. */
    private fun orientationFromRotation(degrees: Int): Int = when (degrees) {
        90 -> ExifInterface.ORIENTATION_ROTATE_90   // 6
        180 -> ExifInterface.ORIENTATION_ROTATE_180 // 3
        270 -> ExifInterface.ORIENTATION_ROTATE_270 // 8
        else -> ExifInterface.ORIENTATION_NORMAL
    }

    override fun onDestroy() {
        super.onDestroy()
        analysisExecutor.execute { classifier?.close() }
        analysisExecutor.shutdown()
    }
}
