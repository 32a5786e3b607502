"""pipeline.sweep on a real local Ray: cells are ordinary exports (same bytes and numbers as the
exports run one by one), finished cells survive a killed worker and Ctrl-C and are reused, and a
bad cell fails alone with its one line. Small models (alpha 0.35, random weights) keep it quick."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import REPO, make_images, run_cli

pytest.importorskip("ray", reason="pipeline.sweep needs Ray (pip install -e '.[sweep]')")

# Everything a report holds that does not depend on when, where or how fast it ran.
REPORT_NUMBERS = ("float", "tflite", "agreement_top1", "kl_mean", "snr_db", "size_bytes",
                  "float_size_bytes", "macs", "parity", "sha256", "calibration", "preprocessing")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("sweep_images"), per_class=10)


def _grid_flags(images, quantize="int8,float16", resolution="96,128"):
    return ["--weights", "random", "--alpha", "0.35", "--resolution", resolution, "--quantize", quantize,
            "--calibration", str(images), "--calibration-samples", "8", "--benchmark-runs", "5"]


def _sweep_json(out):
    return json.loads((Path(out) / "sweep.json").read_text())


@pytest.fixture(scope="module")
def sweep_2x2(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "S"
    started = time.perf_counter()
    done = run_cli("sweep", *_grid_flags(images), "--workers", "2", "--output", out,
                   "--latency-runs", "20")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done, time.perf_counter() - started


def test_sweep_cells_are_the_exports_run_one_by_one(sweep_2x2, images, tmp_path):
    out, done, _ = sweep_2x2
    summary = _sweep_json(out)
    assert [c["state"] for c in summary["cells"]] == ["exported"] * 4
    assert [(c["resolution"], c["quantize"]) for c in summary["cells"]] == [
        ("96", "int8"), ("96", "float16"), ("128", "int8"), ("128", "float16")]
    for name in ("sweep.md", "sweep.csv", "pareto.png"):
        assert (out / name).stat().st_size > 0
    assert summary["frontier"] and set(summary["frontier"]) <= {c["cell"] for c in summary["cells"]}

    def serial(cell):
        target = tmp_path / cell["cell"]
        flags = [f"--{k}={cell[k]}" for k in ("weights", "alpha", "resolution", "quantize",
                                              "calibration", "calibration-samples", "benchmark-runs")]
        return cell, target, run_cli("export", *flags, "--threads", "1", "--no-cache", "--output", target)

    with ThreadPoolExecutor(2) as pool:
        for cell, target, result in pool.map(serial, summary["cells"]):
            assert result.returncode == 0, result.stderr[-2000:]
            ours = json.loads((out / cell["folder"] / "report.json").read_text())
            theirs = json.loads((target / "report.json").read_text())
            assert (out / cell["folder"] / "model.tflite").read_bytes() == (target / "model.tflite").read_bytes()
            assert cell["tflite_sha256"] == theirs["sha256"]["model"]
            for key in REPORT_NUMBERS:
                assert ours[key] == theirs[key], (cell["cell"], key)
            assert cell["latency_ms"]["1"]["median"] > 0


def test_rerun_reuses_finished_cells_and_a_bad_cell_fails_alone(sweep_2x2, images):
    out, _, _ = sweep_2x2
    before = {p: p.stat().st_ino for p in out.glob("cells/*/model.tflite")}
    done = run_cli("sweep", *_grid_flags(images, "int8,float16,bogus"), "--workers", "2",
                   "--output", out, "--latency-runs", "20")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    summary = _sweep_json(out)
    states = {(c["resolution"], c["quantize"]): c["state"] for c in summary["cells"]}
    assert states == {("96", "int8"): "reused", ("96", "float16"): "reused",
                      ("128", "int8"): "reused", ("128", "float16"): "reused",
                      ("96", "bogus"): "failed", ("128", "bogus"): "failed"}
    assert {p: p.stat().st_ino for p in out.glob("cells/*/model.tflite")} == before  # not rewritten
    failed = [c for c in summary["cells"] if c["state"] == "failed"]
    for cell in failed:
        assert "--quantize" in cell["error"] and "bogus" in cell["error"]
        assert "\n" not in cell["error"]
        assert f"✗ {cell['cell']}: {cell['error']}" in (out / "sweep.md").read_text()
        assert f"✗ {cell['cell']}: {cell['error']}" in done.stdout
    # The finished cells are still timed and on the frontier's candidates.
    assert all(c["latency_ms"] for c in summary["cells"] if c["state"] == "reused")


def _cell_workers():
    """pids of the Ray worker processes running a sweep cell (Ray titles them ray::export_cell)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::export_cell"):
            found.append(int(entry.name))
    return found


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_sweep(images, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "pipeline.sweep", *_grid_flags(images, "int8"),
                             "--workers", "1", "--output", str(out), "--latency-runs", "10", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_killed_worker_loses_no_cell(images, tmp_path):
    out = tmp_path / "S"
    sweep = _start_sweep(images, out, "--seed", "7")  # a key of its own: nothing to reuse
    try:
        worker_pid = _wait_for(lambda: next(iter(_cell_workers()), None))
        time.sleep(2)  # inside the export it runs through pipeline.api
        os.kill(worker_pid, signal.SIGKILL)  # the Ray worker running the cell
        _wait_for(lambda: not _alive(worker_pid), timeout=30)
        stdout, stderr = sweep.communicate(timeout=400)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]
    summary = _sweep_json(out)
    assert [c["state"] for c in summary["cells"]] == ["exported", "exported"]
    assert all((out / c["folder"] / "model.tflite").is_file() for c in summary["cells"])


def test_ctrl_c_keeps_finished_cells_and_the_same_command_goes_on(images, tmp_path):
    out = tmp_path / "S"
    sweep = _start_sweep(images, out, "--seed", "8")
    try:
        first = _wait_for(lambda: next(iter(out.glob("cells/*/cell.json")), None))
        sweep.send_signal(signal.SIGINT)
        stdout, stderr = sweep.communicate(timeout=120)
    finally:
        sweep.kill()
    assert sweep.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "run the same command to go on" in stderr
    assert not (out / "sweep.json").exists()
    kept = first.parent
    inode = (kept / "model.tflite").stat().st_ino
    assert not [pid for pid in _cell_workers() if _alive(pid)]  # nothing left running

    again = _start_sweep(images, out, "--seed", "8")
    stdout, stderr = again.communicate(timeout=400)
    assert again.returncode == 0, stderr[-3000:]
    states = {c["cell"]: c["state"] for c in _sweep_json(out)["cells"]}
    assert len(states) == 2 and states[kept.name] == "reused"
    assert (kept / "model.tflite").stat().st_ino == inode  # not recomputed, not rewritten
    # Ctrl-C can land after the second cell was stored too; then both are reused.
    assert sorted(states.values()) in (["exported", "reused"], ["reused", "reused"])


def test_bad_sweep_input_is_one_line_and_writes_nothing(images, tmp_path):
    out = tmp_path / "S"
    cases = [
        (["--resolutoin", "96,128"], "unknown flag --resolutoin"),
        (["--quantize", "int8,"], "empty value"),
        (["--quantize", "int8,int8"], "names a value twice"),
        (["--android-demo", "app"], "not a cell flag"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--latency-threads", "x"], "--latency-threads takes counts"),
        (["--target", "adb:emulator-5554"], "--target adb is not supported"),
    ]
    for extra, expected in cases:
        done = run_cli("sweep", "--calibration", str(images), *extra, "--output", out)
        assert done.returncode == 2, (extra, done.stderr)
        assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not out.exists()
    done = run_cli("sweep", "--calibration", str(images))
    assert done.returncode == 2 and "--output SWEEP/ is required" in done.stderr


# --- The pieces, in process -----------------------------------------------------------------------

def test_grid_axes_and_keys(images):
    from pipeline.commands.sweep import split_argv
    from pipeline.core import cache
    from pipeline.stages import sweep

    _, args = split_argv(["sweep", "--alpha=0.35,1.0", "--resolution", "96", "--quantize",
                                "int8,none", "--keep-float", "Conv1,block_1;block_2", "--no-cache",
                                "--workers", "2"])
    cells = sweep.grid(args)
    assert len(cells) == 8 and cells[0].axes == ("alpha", "quantize", "keep-float")
    assert dict(cells[0].flags) == {"alpha": "0.35", "resolution": "96", "quantize": "int8",
                                    "keep-float": "Conv1,block_1", "no-cache": "true"}
    assert cells[0].label == "a0.35-int8-keep-floatConv1_block_1"
    # Cells sharing a float model (alpha here) start apart, so the second one reuses its work.
    order = [(dict(c.flags)["alpha"], dict(c.flags)["quantize"]) for c in sweep.run_order(cells)]
    assert order[:2] == [("0.35", "int8"), ("1.0", "int8")] and len(order) == 8
    store = cache.Cache(None)
    keyed = sweep.with_keys(cells, store)
    assert len({c.key for c in keyed}) == 8
    _, same = split_argv(["sweep", "--alpha=0.35,1.0", "--resolution", "96", "--quantize",
                                "int8,none", "--keep-float", "Conv1,block_1;block_2", "--threads", "2"])
    assert [c.key for c in sweep.with_keys(sweep.grid(same), store)] == [c.key for c in keyed]
    # A flag at its default is the same cell; an input counts by content, not by path.
    _, explicit = split_argv(["sweep", "--quantize", "int8", "--calibration", str(images)])
    _, implicit = split_argv(["sweep", "--calibration", str(images) + "/"])
    a, b = sweep.with_keys(sweep.grid(explicit) + sweep.grid(implicit), store)
    assert a.key == b.key
    (images / "cats" / "cats_000.jpg").touch()  # same bytes: same key
    assert sweep.with_keys(sweep.grid(implicit), store)[0].key == a.key


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 100), st.floats(0, 1)), min_size=1, max_size=12))
def test_frontier_is_exactly_the_undominated_cells(points):
    from pipeline.stages import sweep, sweep_report

    results = []
    for index, (ms, top1) in enumerate(points):
        cell = sweep.Cell((("resolution", str(index)),), ("resolution",), key=f"{index:064d}")
        results.append(sweep.CellResult(cell, "exported", {"agreement_top1": top1, "tflite": {}},
                                        latency={"1": {"median": ms}}))
    frontier = sweep_report.pareto_frontier(results, "agreement_top1")
    point = lambda r: (r.latency["1"]["median"], r.report["agreement_top1"])  # noqa: E731

    def strictly_dominated(r):
        (ms, top1) = point(r)
        return any(o_ms <= ms and o_top1 >= top1 and (o_ms, o_top1) != (ms, top1)
                   for o_ms, o_top1 in map(point, results))

    assert not any(strictly_dominated(r) for r in frontier)
    assert {point(r) for r in results if not strictly_dominated(r)} == {point(r) for r in frontier}
    assert len({point(r) for r in frontier}) == len(frontier)  # ties appear once
    assert [point(r) for r in frontier] == sorted(point(r) for r in frontier)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(env, *args):
    # `ray start --block` keeps the node's processes as its children: terminating it stops exactly
    # this node (`ray stop` would stop every Ray on the machine).
    ray_cli = Path(sys.executable).with_name("ray")
    return subprocess.Popen([str(ray_cli), "start", "--block", "--disable-usage-stats", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, **env), start_new_session=True)


def _stop(node):
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)


def test_the_same_sweep_runs_on_a_ray_cluster(sweep_2x2, images, tmp_path):
    """A head node without the latency resource, a wrong token, or more CPUs a cell than any node
    has, is refused in one line; once a node that offers the resource joins, a cell made on the
    cluster is byte for byte the local sweep's."""
    import socket

    import shutil
    import tempfile

    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Short: Ray's sockets live under it, and AF_UNIX paths stop at 107 bytes.
    ray_temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # Token authentication, as a real cluster should have it: every node and the driver share it.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(32).hex()}
    head = _ray_node(auth, "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                     f"--temp-dir={ray_temp}")
    nodes = [head]
    try:
        _wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=60)
        flags = _grid_flags(images, "int8", "96")
        out = tmp_path / "S"
        done = run_cli("sweep", *flags, "--ray-address", address, "--output", out, env=auth)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "tflite_latency" in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not out.exists()

        refused = run_cli("sweep", *flags, "--ray-address", address, "--output", out,
                          env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64})
        assert refused.returncode == 2 and "RAY_AUTH_MODE=token" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-2000:]

        nodes.append(_ray_node(auth, f"--address={address}", "--num-cpus=1",
                               '--resources={"tflite_latency": 1}'))
        for _ in range(3):  # the node may take a few seconds to register
            done = run_cli("sweep", *flags, "--ray-address", address, "--output", out,
                           "--latency-runs", "10", env=auth)
            if "tflite_latency" not in done.stderr:
                break
            time.sleep(3)
        assert done.returncode == 0, done.stderr[-3000:]
        # Each node has 1 CPU: a cell asking for 2 would never be placed; refused, not hung.
        wide = run_cli("sweep", *flags, "--ray-address", address, "--output", tmp_path / "W",
                       "--cpus-per-cell", "2", env=auth, timeout=120)
        assert wide.returncode == 2 and "--cpus-per-cell 1 or fewer" in wide.stderr, wide.stderr[-2000:]
        assert len(wide.stderr.strip().splitlines()) == 1 and not (tmp_path / "W").exists()
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(ray_temp, ignore_errors=True)
    cell = _sweep_json(out)["cells"][0]
    local = next(c for c in _sweep_json(sweep_2x2[0])["cells"]
                 if (c["resolution"], c["quantize"]) == ("96", "int8"))
    assert cell["state"] == "exported" and cell["key"] == local["key"]
    assert (out / cell["folder"] / "model.tflite").read_bytes() == \
        (sweep_2x2[0] / local["folder"] / "model.tflite").read_bytes()
    assert _sweep_json(out)["latency"]["where"].startswith("ray node")


def test_pruning_a_sweep_removes_the_cells_its_report_does_not_reference(sweep_2x2, tmp_path):
    """Cells of an earlier grid, or whose key no longer matches, are removed by
    `pipeline.cache --sweep`; the cells sweep.json references stay, byte for byte."""
    import shutil

    copy = tmp_path / "S"
    shutil.copytree(sweep_2x2[0], copy)
    referenced = sorted(c["folder"].split("/", 1)[1] for c in _sweep_json(copy)["cells"]
                        if (copy / c["folder"] / "cell.json").is_file())
    earlier = sorted({p.name for p in (copy / "cells").iterdir()} - set(referenced))
    kept_bytes = {name: (copy / "cells" / name / "model.tflite").read_bytes() for name in referenced}
    shutil.copytree(copy / "cells" / referenced[0], copy / "cells" / "r160_old_grid")
    # A referenced cell whose stored export is of other inputs (its key is not the sweep's now).
    stale = referenced[1]
    changed = copy / "cells" / stale / "cell.json"
    changed.write_text(json.dumps({**json.loads(changed.read_text()), "key": "0" * 64}))
    done = run_cli("cache", "--cache-dir", tmp_path / "empty_cache", "--sweep", copy)
    assert done.returncode == 0, done.stderr
    assert (f"in {2 + len(earlier)} cells not in its sweep.json; kept {len(referenced) - 1}"
            in done.stdout), done.stdout
    assert "– r160_old_grid" in done.stdout and f"– {stale}" in done.stdout
    live = [n for n in referenced if n != stale]
    assert sorted(p.name for p in (copy / "cells").iterdir()) == live
    assert {n: (copy / "cells" / n / "model.tflite").read_bytes() for n in live} == \
        {n: kept_bytes[n] for n in live}
    bad = run_cli("cache", "--sweep", tmp_path / "empty_cache")
    assert bad.returncode == 2 and "holds no readable sweep.json" in bad.stderr
