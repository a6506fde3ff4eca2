"""`make pi-check [ARCH=arm64|armhf]`: prove the edge agent on a Raspberry Pi OS-like root under qemu-user.

Steps (each timed):
  1. root: Debian bookworm (Python 3.11, as Raspberry Pi OS) for ARCH, built with mmdebstrap under qemu-user
     and cached as a tarball in /var/cache/cm-pi-check (CM_PI_CHECK_CACHE); later runs unpack the tarball.
  2. install: a venv with `.[edge]` only (armhf: over Debian's python3-numpy), and proof that no TensorFlow,
     Keras or pandas is importable there.
  3. model outputs: the emulated device's int8 outputs and scores against x86 LiteRT's, bit for bit, on the
     bundles the tests use (trained here on x86 and handed in: the device has no trainer).
  4. tests: the edge test subset (EDGE_TESTS) on the emulated device.
  5. HIL: x86 Mosquitto and cm-replay, the emulated cm-edge reading the pty; its telemetry and alerts against
     the same chain with an x86 cm-edge, field for field (alert ids aside).
  6. timing: per-snapshot time on the emulated device as a ratio to x86 (emulated timings say nothing absolute).

The emulated CPU is a real Pi core (QEMU_CPU): qemu's default `max` CPU gives other int8 outputs. LiteRT reads
/proc/cpuinfo and crashes on the host's x86 one, so an ARM one is bound over it. Needs root, Debian's
qemu-user-static, binfmt-support and mmdebstrap (the Makefile installs them), and network access to Debian's
and PyPI's mirrors. `--subset ci` runs fewer device tests (see EDGE_TESTS and .ci/run).
The same file runs inside the root (`--inside ...`) for the device's side of steps 3 and 6.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("CM_PI_CHECK_CACHE", "/var/cache/cm-pi-check"))
DEVICE = "pi-check"
TOPIC = f"cm/{DEVICE}"
TEST_EXTRAS = ("pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "jsonschema>=4.20")
# Tests that need neither the trainer nor a compiler: what a Pi with the `edge` extra can run. test_hil is
# left out: its chain (replay included) would run emulated with x86 timeouts; step 5 is that chain, across.
EDGE_TESTS = {
    "full": ("test_config.py", "test_detector.py", "test_features.py", "test_frame.py", "test_link.py",
             "test_outbox.py", "test_publisher.py", "test_sensor.py", "test_snapshot.py", "test_synth.py",
             "test_numpy_interpreter.py", "test_security.py",
             "test_ims.py", "test_replay.py", "test_install.py", "test_signature.py", "test_signature_cli.py"),
    # CI: the numerics an ARM CPU could change (the model's int8 outputs, the features); the codec, the
    # link, the publisher and the detector are exercised on the device by the HIL step anyway.
    # test_signature: the Ed25519 check that refuses bundles, through cryptography's wheel for that CPU.
    "ci": ("test_numpy_interpreter.py", "test_features.py", "test_signature.py"),
}
NEEDS_LITERT = ("test_int8_outputs_equal_litert_exactly", "test_scores_equal_litert_through_the_scorer",
                "test_load_interpreter_order_and_choice")


@dataclass(frozen=True)
class Arch:
    name: str  # Debian's
    qemu: str  # binfmt_misc entry qemu-<qemu>
    cpu: str  # QEMU_CPU: a core a Raspberry Pi has
    machine: str  # what uname -m says there
    packages: tuple[str, ...]
    system_numpy: bool  # the venv uses Debian's python3-numpy (no numpy >= 1.26 wheel exists there)
    cpuinfo: str


CPUINFO_A72 = "".join(
    f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n" for n in range(4)
) + "Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
CPUINFO_A7 = "".join(
    f"processor\t: {n}\nmodel name\t: ARMv7 Processor rev 5 (v7l)\nBogoMIPS\t: 38.40\nFeatures\t: half thumb "
    "fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm\nCPU implementer\t: 0x41\n"
    "CPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xc07\nCPU revision\t: 5\n\n" for n in range(4)
) + "Hardware\t: BCM2835\nRevision\t: a21041\nModel\t\t: Raspberry Pi 2 Model B Rev 1.1\n"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "mosquitto", "openssl")
ARCHES = {
    "arm64": Arch("arm64", "aarch64", "cortex-a72", "aarch64", BASE_PACKAGES, False, CPUINFO_A72),
    # python3-cryptography: PyPI has no cffi wheel for armv7l (pyproject.toml, the edge extra).
    "armhf": Arch("armhf", "arm", "cortex-a7", "armv7l", BASE_PACKAGES + ("python3-numpy", "python3-cryptography"), True,
                  CPUINFO_A7),
}


class CheckFailed(RuntimeError):
    pass


def step(title: str) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def timed() -> Iterator[None]:
        print(f"==> {title}", flush=True)
        started = time.monotonic()
        yield
        TIMES[title] = time.monotonic() - started
        print(f"    ({TIMES[title]:.1f} s)", flush=True)

    return timed()


TIMES: dict[str, float] = {}


def run(*args: object, **options) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, **options)


# --- the root ------------------------------------------------------------------------------------------


def require_binfmt(arch: Arch) -> None:
    """qemu-user-static registers with flag F, so the emulator works inside a chroot without being copied there."""
    entry = Path(f"/proc/sys/fs/binfmt_misc/qemu-{arch.qemu}")
    if not Path("/proc/sys/fs/binfmt_misc/status").exists():
        run("mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc")
    if not entry.exists() or "enabled" not in entry.read_text():
        run("update-binfmts", "--enable", f"qemu-{arch.qemu}")
    text = entry.read_text() if entry.exists() else ""
    if "enabled" not in text or "F" not in next((line for line in text.splitlines() if line.startswith("flags:")), ""):
        raise CheckFailed(f"{entry}: expected an enabled qemu-{arch.qemu} entry with flag F (Debian's "
                          f"qemu-user-static), got: {text or 'missing'}")


def root_tarball(arch: Arch) -> Path:
    """The cached root for `arch`, built once; its name changes with what goes into it."""
    key = hashlib.sha256(repr((SUITE, MIRROR, arch.name, arch.packages)).encode()).hexdigest()[:12]
    tarball = CACHE / f"{SUITE}-{arch.name}-{key}.tar"
    if tarball.exists():
        print(f"    cached: {tarball}")
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".tar.partial")
    print(f"    building {tarball} with mmdebstrap (a few minutes, once)")
    run("mmdebstrap", "--quiet", "--variant=apt", f"--architectures={arch.name}",
        f"--include={','.join(arch.packages)}", "--format=tar", SUITE, partial, MIRROR)
    partial.rename(tarball)
    return tarball


@contextlib.contextmanager
def mounted_root(tarball: Path, arch: Arch, work: Path) -> Iterator[Path]:
    """The root unpacked into `work`, with /proc (an ARM /proc/cpuinfo over it), /dev and the pip cache mounted."""
    root = work / "root"
    root.mkdir()
    run("tar", "-xf", tarball, "-C", root)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    # A host behind a TLS-inspecting proxy trusts its CA: so must pip in the root.
    host_ca = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
    if host_ca.is_file():
        shutil.copy(host_ca, root / "etc/cm-pi-check-ca.crt")
    cpuinfo = work / "cpuinfo"
    cpuinfo.write_text(arch.cpuinfo)
    pip_cache = CACHE / f"pip-{arch.name}"
    pip_cache.mkdir(parents=True, exist_ok=True)
    (root / "root/.cache/pip").mkdir(parents=True, exist_ok=True)
    shared = REPO.parent / "shared"  # the real data the tests read as ../shared
    mounts = [
        ("-t", "proc", "proc", root / "proc"),
        ("--bind", cpuinfo, root / "proc/cpuinfo"),
        ("--rbind", "/dev", root / "dev"),
        # LiteRT's cpuinfo also reads /sys/devices/system/cpu; without it XNNPACK falls back to kernels whose
        # rounding differs from a Pi's by one LSB now and then.
        ("--rbind", "/sys", root / "sys"),
        ("--bind", pip_cache, root / "root/.cache/pip"),
    ]
    if shared.is_dir():
        (root / "shared").mkdir()
        mounts.append(("--bind", shared, root / "shared"))
    done: list[Path] = []
    try:
        for *options, source, target in mounts:
            run("mount", *options, source, target)
            done.append(Path(target))
            if options == ["--rbind"]:
                run("mount", "--make-rslave", target)  # unmounting it later must not reach the host's
        yield root
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-R", "-l", str(target)], check=False)


def device_env(arch: Arch, **extra: str) -> dict[str, str]:
    env = {"PATH": "/opt/cm-edge/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "QEMU_CPU": arch.cpu, "PIP_CERT": "/etc/cm-pi-check-ca.crt", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PIP_DEFAULT_TIMEOUT": "180", "PYTHONDONTWRITEBYTECODE": "1"}
    return env | extra


def on_device(root: Path, arch: Arch, *args: object, env: dict[str, str] | None = None,
              **options) -> subprocess.CompletedProcess:
    command = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in (env or device_env(arch)).items()),
               *map(str, args)]
    return subprocess.run(command, check=True, **options)


def copy_source(target: Path) -> None:
    """The working tree as git sees it (tracked and new files), without the venv or build output."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


# --- steps 2-6 -----------------------------------------------------------------------------------------


def install(root: Path, arch: Arch, tarball: Path) -> None:
    """`pip install .[edge]` into /opt/cm-edge/venv, as deploy/install.sh does, plus the test runner.

    Emulated pip is slow, so the venv is cached beside the root, keyed by pyproject.toml: a later run with
    the same dependencies unpacks it and reinstalls only this package."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + repr((TEST_EXTRAS, tarball.name)).encode())
    cached = CACHE / f"venv-{arch.name}-{key.hexdigest()[:12]}.tar"
    if cached.exists():
        print(f"    dependencies cached: {cached}")
        run("tar", "-xf", cached, "-C", root)
        # Built in pip's isolated environment: the venv's own setuptools (Debian's 66) has no bdist_wheel.
        on_device(root, arch, "pip", "install", "--quiet", "--no-deps", "/src")
    else:
        venv = ["python3", "-m", "venv", *(["--system-site-packages"] if arch.system_numpy else []), "/opt/cm-edge/venv"]
        on_device(root, arch, *venv)
        on_device(root, arch, "pip", "install", "--quiet", "/src[edge]", *TEST_EXTRAS)
        partial = cached.with_suffix(".tar.partial")
        run("tar", "-cf", partial, "-C", root, "opt/cm-edge/venv")
        for stale in CACHE.glob(f"venv-{arch.name}-*.tar"):  # made for an older pyproject.toml
            stale.unlink()
        partial.rename(cached)
    on_device(root, arch, "pip", "check")
    report = on_device(root, arch, "python", "-c", (
        "import importlib.util, json, platform, numpy\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_keras', 'pandas', 'tflite_runtime') if importlib.util.find_spec(m)]\n"
        "litert = importlib.util.find_spec('ai_edge_litert') is not None\n"
        "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), 'numpy': numpy.__version__,"
        " 'numpy_from': numpy.__file__, 'litert': litert, 'heavy': heavy}))\n"
    ), capture_output=True, text=True)
    facts = json.loads(report.stdout.strip().splitlines()[-1])
    print(f"    {facts}")
    if facts["heavy"]:
        raise CheckFailed(f"the edge extra pulled in {facts['heavy']}: a Pi must not need them")
    if facts["machine"] != arch.machine:
        raise CheckFailed(f"uname -m in the root says {facts['machine']}, expected {arch.machine}")
    if arch.system_numpy != facts["numpy_from"].startswith("/usr/lib/python3/"):
        raise CheckFailed(f"numpy comes from {facts['numpy_from']}: expected {'Debian' if arch.system_numpy else 'the venv'}")
    if facts["litert"] == arch.system_numpy:
        raise CheckFailed(f"ai-edge-litert installed: {facts['litert']}, expected {not arch.system_numpy} on {arch.name}")


def hand_out_bundles(handoff: Path, log: Path) -> None:
    """The tests' runs and bundles, trained here: the device has no trainer. TensorFlow's chatter goes to `log`."""
    with log.open("wb") as output:
        trained = subprocess.run([sys.executable, str(REPO / "tests/trained.py"), str(handoff)], cwd=REPO,
                                 env=os.environ | {"PYTHONPATH": str(REPO)}, stdout=output, stderr=subprocess.STDOUT)
    if trained.returncode:
        raise CheckFailed(f"training the bundles failed:\n{log.read_text(errors='replace')[-3000:]}")


def model_outputs(bundles: Path, kind: str | None) -> dict[str, object]:
    """Raw int8 outputs on fixed inputs for every handed-in bundle, and the shared bundle's scores on its run.

    kind None: the interpreter edge.model.runtime picks on this machine."""

    sys.path.insert(0, str(REPO / "tests"))
    from probes import int8_inputs, raw_outputs, score_windows
    from trained import run_features

    from edge.model.bundle import load_bundle
    from edge.model.runtime import Model, load_interpreter

    results: dict[str, object] = {}
    for bundle_dir in sorted(p for p in bundles.iterdir() if (p / "model_card.json").exists()):
        model = load_bundle(bundle_dir).model_path
        interpreter = load_interpreter(model, kind=kind)
        (detail,) = interpreter.get_input_details()
        inputs = int8_inputs(tuple(detail["shape"]), detail["quantization"][1], count=200)
        results[f"{bundle_dir.name}:outputs"] = raw_outputs(interpreter, inputs)
        results[f"{bundle_dir.name}:interpreter"] = type(interpreter).__module__
    if kind:
        os.environ["CM_INTERPRETER"] = kind
    scores, errors = score_windows(Model(load_bundle(bundles / "bundle")), run_features(bundles / "run"))
    results["bundle:scores"], results["bundle:channel_errors"] = scores, errors
    return results


def compare_outputs(x86: dict, device: dict) -> list[str]:
    import numpy as np

    problems = []
    for key, expected in x86.items():
        if key.endswith(":interpreter"):
            continue
        actual = device[key]
        if expected.shape != actual.shape or expected.dtype != actual.dtype or expected.tobytes() != actual.tobytes():
            differing = int(np.sum(expected != actual)) if expected.shape == actual.shape else -1
            problems.append(f"{key}: {differing} values differ from x86 LiteRT's")
    return problems


def timing(bundle: Path, repeats: int = 5) -> dict[str, float]:
    """Median per-snapshot ms (features, model, detector) with the interpreter edge.model.runtime picks."""
    import statistics

    sys.path.insert(0, str(REPO / "bench"))
    import bench_runtime

    samples = bench_runtime.per_snapshot_ms(bundle, repeats)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples)}


def write_agent_config(directory: Path, port: int, tty: Path, bundle: Path, state: Path) -> Path:
    config = directory / "edge.toml"
    config.write_text(f'device_id = "{DEVICE}"\n[serial]\nport = "{tty}"\n[model]\nbundle = "{bundle}"\n'
                      f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n[outbox]\npath = "{state}/outbox.sqlite"\n')
    return config


def chain(run_dir: Path, files: int, agent: list[str], config_for, work: Path) -> dict:
    """cm-replay (x86) -> pty -> `agent` -> Mosquitto (x86) -> subscriber: every telemetry and alert payload."""
    sys.path.insert(0, str(REPO / "tests"))
    from broker import Mosquitto, Subscriber

    work.mkdir(parents=True, exist_ok=True)
    with Mosquitto(work / "broker") as broker, Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        config, tty = config_for(broker.port)
        log = (work / "agent.log").open("wb")
        process = subprocess.Popen([*agent, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            if not subscriber.wait_for(lambda s: s.on(f"{TOPIC}/status")[-1:] == [b"online"], 180):
                raise CheckFailed(f"the agent never came online: {(work / 'agent.log').read_text(errors='replace')}")
            started = time.monotonic()
            run(Path(sys.executable).parent / "cm-replay", run_dir, "--port", f"pty:{tty}", "--speed", "max",
                "--no-progress", capture_output=True)
            if not subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/telemetry")) >= files, 600):
                raise CheckFailed(f"telemetry incomplete: {(work / 'agent.log').read_text(errors='replace')}")
            elapsed = time.monotonic() - started
            subscriber.publish_acked(f"{TOPIC}/probe", b"")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
        telemetry = [json.loads(p) for p in subscriber.on(f"{TOPIC}/telemetry")]
        alerts = {}
        for payload in subscriber.on(f"{TOPIC}/alert"):
            alert = json.loads(payload)
            alerts.setdefault(alert.pop("id"), alert)
    return {"telemetry": telemetry, "alerts": list(alerts.values()), "seconds": elapsed}


def hil(root: Path, arch: Arch, handoff: Path, work: Path) -> dict[str, object]:
    """The shared bundle's run to failure (healthy half, then bearing 3 fails) through both chains."""
    run_dir = handoff / "bundles/run"
    files = len([p for p in run_dir.iterdir() if not p.name.startswith(".")])
    host_bin = Path(sys.executable).parent

    def host_config(port: int) -> tuple[Path, Path]:
        tty = work / "x86/ttyREPLAY"
        (work / "x86").mkdir(parents=True, exist_ok=True)
        return write_agent_config(work / "x86", port, tty, handoff / "bundles/bundle", work / "x86"), tty

    def device_config(port: int) -> tuple[Path, Path]:
        inside = Path("/handoff/hil")
        (root / inside.relative_to("/")).mkdir(parents=True, exist_ok=True)
        write_agent_config(root / inside.relative_to("/"), port, inside / "ttyREPLAY", Path("/handoff/bundles/bundle"), inside)
        return inside / "edge.toml", root / inside.relative_to("/") / "ttyREPLAY"

    # The device's config names paths inside the root; the agent reads it there.
    device_agent = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in device_env(arch).items()),
                    "/opt/cm-edge/venv/bin/cm-edge"]
    x86 = chain(run_dir, files, [str(host_bin / "cm-edge")], host_config, work / "x86")
    device = chain(run_dir, files, device_agent, device_config, work / "device")
    problems = []
    if len(device["telemetry"]) != len(x86["telemetry"]):
        problems.append(f"telemetry: {len(device['telemetry'])} payloads on {arch.name}, {len(x86['telemetry'])} on x86")
    for ours, theirs in zip(device["telemetry"], x86["telemetry"]):
        for key in ("timestamp", "snapshot", "features", "score", "channel_errors", "state", "reason"):
            if ours.get(key) != theirs.get(key):
                problems.append(f"telemetry {theirs['timestamp']}: {key} {ours.get(key)!r} on {arch.name}, "
                                f"{theirs.get(key)!r} on x86")
    if device["alerts"] != x86["alerts"]:
        problems.append(f"alerts differ: {arch.name} {device['alerts']} x86 {x86['alerts']}")
    states = [t["state"] for t in x86["telemetry"]]
    if "alarm" not in states:
        problems.append("the replayed run to failure raised no alarm: the comparison would prove little")
    return {"problems": problems, "snapshots": len(device["telemetry"]), "alerts": len(device["alerts"]),
            "x86_s": x86["seconds"], "device_s": device["seconds"]}


def check(arch: Arch, subset: str, keep: bool) -> None:
    if os.geteuid() != 0:
        raise CheckFailed("make pi-check needs root (chroot, mount, binfmt_misc)")
    with step(f"root: Debian {SUITE} {arch.name} (QEMU_CPU={arch.cpu})"):
        require_binfmt(arch)
        tarball = root_tarball(arch)
    work = Path(tempfile.mkdtemp(prefix=f"cm-pi-check-{arch.name}-", dir="/var/tmp"))
    try:
        with mounted_root(tarball, arch, work) as root:
            copy_source(root / "src")
            handoff = root / "handoff"
            with step("install .[edge] on the device, no TensorFlow"):
                install(root, arch, tarball)
            with step("bundles for the device, trained on x86"):
                hand_out_bundles(handoff / "bundles", work / "train.log")
            with step(f"model outputs on {arch.name} against x86 LiteRT, bit for bit"):
                compare_model_outputs(root, arch, handoff)
            with step(f"edge tests on {arch.name} ({subset} subset)"):
                edge_tests(root, arch, subset)
            with step(f"HIL: x86 broker and cm-replay, cm-edge on {arch.name}"):
                result = hil(root, arch, handoff, work / "hil")
                print(f"    {result['snapshots']} snapshots, {result['alerts']} alerts; chain {result['x86_s']:.1f} s "
                      f"on x86, {result['device_s']:.1f} s emulated")
                if result["problems"]:
                    raise CheckFailed("HIL: the emulated agent differs from x86:\n  " + "\n  ".join(result["problems"][:20]))
            with step("per-snapshot time, emulated / x86"):
                ratio(root, arch, handoff)
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def compare_model_outputs(root: Path, arch: Arch, handoff: Path) -> None:
    import numpy as np

    x86 = model_outputs(handoff / "bundles", kind="ai_edge_litert")
    on_device(root, arch, "python", "/src/scripts/pi_check.py", "--inside", "outputs", "/handoff/bundles",
              "/handoff/outputs.npz", cwd=None)
    with np.load(handoff / "outputs.npz") as loaded:
        device = dict(loaded)
    problems = compare_outputs(x86, device)
    interpreters = sorted({str(v) for k, v in device.items() if k.endswith(":interpreter")})
    print(f"    {sum(k.endswith(':outputs') for k in device)} bundles, interpreter on {arch.name}: {interpreters}")
    if problems:
        raise CheckFailed("model outputs differ from x86:\n  " + "\n  ".join(problems))


def edge_tests(root: Path, arch: Arch, subset: str) -> None:
    files = [f"tests/{name}" for name in EDGE_TESTS[subset]]
    deselect = " and ".join(f"not {name}" for name in NEEDS_LITERT) if arch.system_numpy else ""
    env = device_env(arch, CI="true", CM_TEST_BUNDLES="/handoff/bundles")
    # A slow emulated CPU: the per-test timeout is the suite's own (pyproject) times four.
    on_device(root, arch, "sh", "-c", f"cd /src && exec python -m pytest -q -p no:cacheprovider --timeout 1200 "
              f"-k '{deselect}' {' '.join(files)}", env=env)


def ratio(root: Path, arch: Arch, handoff: Path) -> None:
    bundle = handoff / "bundles/bundle"
    kind = "numpy" if arch.system_numpy else None  # x86 runs what the device runs
    if kind:
        os.environ["CM_INTERPRETER"] = kind
    try:
        x86 = timing(bundle)
    finally:
        os.environ.pop("CM_INTERPRETER", None)
    result = on_device(root, arch, "python", "/src/scripts/pi_check.py", "--inside", "timing", "/handoff/bundles/bundle",
                       capture_output=True, text=True)
    device = json.loads(result.stdout.strip().splitlines()[-1])
    name = "numpy interpreter" if kind else "LiteRT"
    print(f"    per snapshot (features, {name}, detector): emulated {arch.name} / x86 = "
          f"{device['median_ms'] / x86['median_ms']:.1f}x (medians of 5 runs of 200 snapshots)")


def inside(task: str, args: list[str]) -> None:
    """The device's side: runs in the root with the edge extra only."""
    import numpy as np

    if task == "outputs":
        np.savez(args[1], **{k: np.asarray(v) for k, v in model_outputs(Path(args[0]), kind=None).items()})
    elif task == "timing":
        print(json.dumps(timing(Path(args[0]))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHES), default="arm64")
    parser.add_argument("--subset", choices=sorted(EDGE_TESTS), default="full",
                        help="full: every edge test; ci: the ones an ARM CPU could break (see EDGE_TESTS)")
    parser.add_argument("--keep", action="store_true", help="keep the unpacked root under /var/tmp to look at")
    parser.add_argument("--inside", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.inside:
        sys.path.insert(0, str(REPO))
        inside(options.inside[0], options.inside[1:])
        return 0
    started = time.monotonic()
    try:
        check(ARCHES[options.arch], options.subset, options.keep)
    except (CheckFailed, subprocess.CalledProcessError) as error:
        print(f"pi-check {options.arch}: FAILED: {error}", file=sys.stderr)
        return 1
    steps = ", ".join(f"{title.split(':')[0]} {seconds:.0f} s" for title, seconds in TIMES.items())
    print(f"pi-check {options.arch}: passed in {time.monotonic() - started:.0f} s ({steps})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
