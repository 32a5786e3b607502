// Pre- and post-processing with no Android dependency: the app uses it unchanged, and CI compiles
// and tests it against the Python pipeline's golden vectors (tests/test_android.py).
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    implementation(libs.gson)
    testImplementation(libs.junit)
}
