"""Device targets for real: an sshd on 127.0.0.1 whose sessions run in an aarch64 Debian userland
under qemu-user (built by .ci/arm64_userland.sh), Debian's adb client, and benchmark_model output
captured on a real phone."""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.device import remote
from pipeline.core.errors import PipelineInputError
from tests.conftest import IMAGENETTE, WEIGHTS_DIR, run_cli

USERLAND = Path(os.environ.get("PIPELINE_ARM64_ROOT", "/srv/pipeline-arm64"))

# Captured from a real run of TFLite's benchmark_model on a Xiaomi Mi 11 over adb (yolov5s int8,
# 4 threads), as published with the measurements of a public yolov5 TFLite benchmark write-up.
MI11_OUTPUT = """\
count=50 first=94518 curr=95117 min=93066 max=99490 avg=95788.3 std=1284
Inference timings in us: Init: 1779, First inference: 152949, Warmup (avg): 110690, Inference (avg): 95788.3
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Peak memory footprint (MB): init=5.15625 overall=36.9883
"""
# A newer benchmark_model (percentiles, 'Memory footprint delta'), as logged to logcat on Android.
LOGCAT_OUTPUT = """\
I tflite  : count=3 first=201322 curr=188120 min=188120 max=201322 avg=194721 std=5390
I tflite  : count=25 first=187533 curr=140990 min=140071 max=195121 avg=145528 std=13583 p5=140545 median=141253 p95=187533
I tflite  : Inference timings in us: Init: 92318, First inference: 187533, Warmup (avg): 211669, Inference (avg): 145528
I tflite  : Memory footprint delta from the start of the tool (MB): init=54.2852 overall=73.4102
"""


def test_parse_benchmark_model_output_from_a_real_phone():
    parsed = remote.parse_benchmark_model(MI11_OUTPUT)
    assert parsed["init_ms"] == pytest.approx(1.779)
    assert parsed["first_invoke_ms"] == pytest.approx(152.949)
    assert parsed["mean_ms"] == pytest.approx(95.7883)
    assert parsed["runs"] == 50 and parsed["min_ms"] == pytest.approx(93.066)
    assert parsed["memory_mb"]["overall"] == pytest.approx(36.9883)
    newer = remote.parse_benchmark_model(LOGCAT_OUTPUT)
    # The timed run is the last count= line, not the warmup one.
    assert newer["runs"] == 25 and newer["median_ms"] == pytest.approx(141.253)
    assert newer["p95_ms"] == pytest.approx(187.533)
    assert newer["memory_mb"]["kind"].startswith("Memory footprint delta")
    with pytest.raises(PipelineInputError, match="no 'Inference timings' line"):
        remote.parse_benchmark_model("Failed to apply NNAPI delegate.\nBenchmarking failed.\n")


def _listing(khz_per_cpu):
    """What the adb shell loop prints on a phone with these maximum frequencies."""
    return "\n".join(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq {khz}"
                     for cpu, khz in enumerate(khz_per_cpu)) + "\n"


# Real layouts (cpuinfo_max_freq, kHz): Snapdragon 888 (4 × A55, 3 × A78, 1 × X1), Google Tensor
# G1 / Pixel 6 (4 × A55, 2 × A76, 2 × X1), and an 8-core phone with one cluster (Helio P35).
SNAPDRAGON_888 = [1804800] * 4 + [2419200] * 3 + [2841600]
TENSOR_G1 = [1803000] * 4 + [2253000] * 2 + [2802000] * 2
HELIO_P35 = [2301000] * 4 + [1800000] * 4


@pytest.mark.parametrize("layout, masks", [
    (SNAPDRAGON_888, {1: "80", 2: "c0", 4: "f0", 8: "ff", 16: "ff"}),
    (TENSOR_G1, {1: "80", 2: "c0", 4: "f0", 6: "fc"}),
    (HELIO_P35, {1: "8", 4: "f", 8: "ff"}),
])
def test_each_thread_count_gets_as_many_of_the_fastest_cores(layout, masks):
    frequencies = remote.parse_max_frequencies(_listing(layout))
    assert frequencies == dict(enumerate(layout))
    for threads, mask in masks.items():
        assert remote.core_mask(frequencies, threads) == mask
        assert bin(int(mask, 16)).count("1") == min(threads, len(layout))


def test_adb_command_line_quotes_everything():
    command = remote.adb_benchmark_command("/data/local/tmp/m p/model;rm -rf x.tflite",
                                           "/data/local/tmp/benchmark_model", "f0", 4, 50)
    assert command.startswith("taskset f0 /data/local/tmp/benchmark_model ")
    assert "'--graph=/data/local/tmp/m p/model;rm -rf x.tflite'" in command


@pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb client is not installed")
def test_adb_without_a_device_fails_clearly(tmp_path, small_int8):
    model, binary = tmp_path / "m.tflite", tmp_path / "benchmark_model"
    model.write_bytes(small_int8.tflite)
    binary.write_bytes(b"\x7fELF")
    result = run_cli("benchmark", model, "--target", "adb:emulator-5554", "--benchmark-binary", binary)
    assert result.returncode == 2, result.stderr
    line = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and "adb:emulator-5554" in line[0] and "failed" in line[0]


def test_targets_parse_and_quote():
    target = remote.parse_target("ssh://pi@raspberrypi.local:2222", ["IdentityFile=/k"])
    assert (target.user, target.host, target.port) == ("pi", "raspberrypi.local", 2222)
    argv = target.ssh_argv("cat '.mobilenet-pipeline/a b.tflite'")
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"] and ["-o", "IdentityFile=/k"] == argv[5:7]
    assert argv[-2:] == ["pi@raspberrypi.local", "cat '.mobilenet-pipeline/a b.tflite'"]
    assert remote.parse_target("adb:R58M123").serial == "R58M123"
    for bad in ("ssh://host", "ssh://u@h;rm", "scp://u@h", "ssh://u@h:port"):
        with pytest.raises(PipelineInputError, match="is not ssh://user@host"):
            remote.parse_target(bad)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def arm_board(tmp_path_factory):
    """An sshd on 127.0.0.1 whose sessions are an 'aarch64 board': the session's shell is the
    host's bash in the userland's /root, and `python3` is the userland's aarch64 Python run by
    qemu-aarch64-static (cortex-a76; never the default 'max', whose SME emulation corrupts int8)."""
    if os.geteuid() != 0:
        pytest.skip("the loopback ARM board needs root (sshd, chroot)")
    if not (USERLAND / ".ready").exists():
        pytest.skip(f"no aarch64 userland at {USERLAND}: run bash .ci/arm64_userland.sh")
    for tool in ("/usr/sbin/sshd", shutil.which("ssh"), shutil.which("ssh-keygen")):
        if not tool or not os.path.exists(tool):
            pytest.skip("openssh-server and openssh-client are needed")
    subprocess.run(["bash", str(Path(__file__).parents[1] / ".ci" / "arm64_userland.sh"),
                    str(USERLAND)], check=True, capture_output=True)  # mounts /proc if needed
    work = tmp_path_factory.mktemp("board")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / key)],
                       check=True)
    shims = work / "bin"
    shims.mkdir()
    (shims / "python3").write_text(f"""#!/bin/bash
rel="${{PWD#{USERLAND}}}"
exec env -i PATH=/usr/bin:/bin PYTHONPATH=/opt/site /usr/sbin/chroot {USERLAND} /usr/bin/qemu-aarch64-static \\
  -cpu cortex-a76 /usr/bin/python3 -c \\
  'import os, runpy, sys; os.chdir(sys.argv[1]); sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name="__main__")' \\
  "${{rel:-/}}" "$@"
""")
    session = work / "session"
    session.write_text(f"""#!/bin/bash
cd {USERLAND}/root || exit 1
# A board's plain shell: none of this host's profile (bash would source ~/.bashrc under sshd).
exec env -i HOME={USERLAND}/root PATH={shims}:/usr/bin:/bin /bin/bash --norc --noprofile \
  -c "$SSH_ORIGINAL_COMMAND"
""")
    for script in (shims / "python3", session):
        script.chmod(0o755)
    public = (work / "client_key.pub").read_text().strip()
    (work / "authorized_keys").write_text(f'command="{session}",no-port-forwarding,no-pty {public}\n')
    port = _free_port()
    (work / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {work / 'host_key'}
PidFile {work / 'sshd.pid'}
AuthorizedKeysFile {work / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    daemon = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(work / "sshd_config")],
                              stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    else:
        daemon.kill()
        pytest.fail("sshd did not start: " + daemon.stderr.read().decode())
    options = [f"IdentityFile={work / 'client_key'}", "StrictHostKeyChecking=no",
               f"UserKnownHostsFile={work / 'known_hosts'}", "LogLevel=ERROR"]
    yield f"ssh://root@127.0.0.1:{port}", options
    daemon.terminate()
    daemon.wait(timeout=10)


def _ssh_flags(options):
    return [arg for option in options for arg in ("--ssh-option", option)]


def _benchmark_on_board(arm_board, model_bytes, tmp_path, name, *flags):
    """Writes the model as `name`, benchmarks it on the board; returns (CLI result, benchmark.json)."""
    target, options = arm_board
    model = tmp_path / name
    model.write_bytes(model_bytes)
    out = tmp_path / "bench"
    result = run_cli("benchmark", model, "--target", target, *_ssh_flags(options),
                     "--threads-sweep", "1", *flags, "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((out / "benchmark.json").read_text())


def test_benchmark_over_ssh_on_the_emulated_arm_board(arm_board, small_int8, tmp_path):
    result, report = _benchmark_on_board(arm_board, small_int8.tflite, tmp_path,
                                         "model with space.tflite", "--benchmark-runs", "3")
    device = report["device"]
    assert device["machine"] == "aarch64" and device["emulated"] is True
    assert "not ARM figures" in device["emulation"]
    # An emulated board is a class of its own: its timings never match a real ARM baseline entry.
    assert device["machine_class"] == "aarch64/emulated" and device["isa"] == []
    assert "EMULATED" in result.stdout
    row = report["latency"][0]
    assert row["model"] == "model with space.tflite" and row["xnnpack_applied"] is True
    assert row["runs"] == 3 and row["median_ms"] > 0
    assert report["runtime"]["name"] == "ai-edge-litert"


def test_gpu_delegate_that_is_absent_is_reported_not_hidden(arm_board, small_int8, tmp_path):
    result, report = _benchmark_on_board(
        arm_board, small_int8.tflite, tmp_path, "m.tflite", "--delegate", "gpu",
        "--delegate-library", "/usr/lib/libtensorflowlite_gpu_delegate.so", "--benchmark-runs", "2")
    delegate = report["runtime"]["delegate"]
    assert delegate["loaded"] is False and "NOT loaded" in delegate["note"]
    assert "NOT loaded" in result.stdout


def test_unreachable_host_is_one_clear_line(small_int8, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(small_int8.tflite)
    result = run_cli("benchmark", model, "--target", f"ssh://nobody@127.0.0.1:{_free_port()}",
                     "--ssh-option", "ConnectTimeout=5")
    assert result.returncode == 2
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "ssh://nobody@127.0.0.1" in errors[0] and "Traceback" not in result.stderr


@pytest.mark.skipif(not (WEIGHTS_DIR.is_dir() and IMAGENETTE.is_dir()),
                    reason="needs ../shared weights and Imagenette")
def test_cross_architecture_parity_is_bit_exact(arm_board, tmp_path):
    """x86 and aarch64 XNNPACK int8 give identical tensors for a real ImageNet classifier (the
    logits head); the softmax head's float32 probabilities agree to a few ulp, top-1 everywhere."""
    target, options = arm_board
    weights = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    for head in ("logits", "probabilities"):
        out = tmp_path / head
        export = run_cli("export", "--weights", weights, "--resolution", "96", "--calibration",
                         IMAGENETTE / "calib", "--calibration-samples", "50", "--eval",
                         IMAGENETTE / "val", "--eval-samples", "50", "--head", head, "--output", out)
        assert export.returncode == 0, export.stderr[-2000:]
        result = run_cli("verify", "--tflite", out / "model.tflite", "--target", target,
                         *_ssh_flags(options), "--eval", IMAGENETTE / "val", "--eval-samples", "20")
        assert result.returncode == 0, result.stderr[-3000:]
        parity = json.loads(result.stdout)
        assert parity["images"] == 20 and parity["top1_agreement"] == 1.0
        assert parity["device"]["machine"] == "aarch64" and parity["device"]["emulated"] is True
        assert parity["device_delegation"]["xnnpack_applied"] is True
        if head == "logits":
            assert parity["identical"] == 20 and parity["max_lsb"] == 0
            assert "20/20 outputs identical on aarch64 (EMULATED" in result.stderr
        else:
            assert parity["output_dtype"] == "float32"
            assert parity["max_lsb"] <= parity["max_lsb_allowed"] == 64, parity["max_lsb"]
