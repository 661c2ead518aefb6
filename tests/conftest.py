"""Shared fixtures. Docker tests use the real engine; the image settings come
from benchmark.yaml and UMLIP_* variables (CI sets a local base image)."""

import os

# BLAS single-threaded before numpy loads: ASE's cell filter does tiny matrix functions
# every step, and threaded BLAS makes the in-process EMT relaxations ~50x slower.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import signal
from pathlib import Path

import pytest

from helpers import REPO, SCREENSHOTS

# A shell without job control starts background commands with SIGINT ignored, and children inherit
# that: a test run started so would send its orchestrators a Ctrl-C they cannot see. A handler (not
# an ignore) is reset to the default in each child, so they get Ctrl-C as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def manifest():
    from orchestrator.manifest import load

    return load(REPO / "benchmark.yaml")


@pytest.fixture(scope="session")
def engine():
    from orchestrator.errors import BenchError
    from orchestrator.workers.docker import DockerEngine

    try:
        return DockerEngine()
    except BenchError as exc:
        if os.environ.get("CI"):
            raise  # CI installs an engine: its absence is a failure, not a skip
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def builder(engine, manifest, tmp_path_factory):
    from orchestrator.images import ImageBuilder

    return ImageBuilder.from_manifest(engine, manifest, tmp_path_factory.mktemp("build-logs"))


@pytest.fixture(scope="session")
def model_image(builder):
    """Build (or reuse) a model's image once per session."""
    from orchestrator.models import discover_models

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = builder.model(discover_models()[name])
        return cache[name]

    return get


@pytest.fixture(scope="session")
def slurm_node():
    """The local cluster's node name; skipped without SLURM, a failure in CI."""
    import shutil
    import subprocess

    listing = subprocess.run(["sinfo", "-h", "-o", "%N %T"], capture_output=True, text=True) \
        if shutil.which("sinfo") else None
    if listing is None or listing.returncode or not listing.stdout.strip():
        if os.environ.get("CI"):
            raise RuntimeError("CI starts SLURM (.ci/slurm start), but sinfo finds no node")
        pytest.skip("no SLURM here: `.ci/slurm start` (as root) makes a local one")
    return listing.stdout.split()[0]


def installed(command: list[str], how: str) -> str:
    """The version line of a tool the tests run for real; skipped without it, a failure in CI,
    which installs it (`how`)."""
    import shutil
    import subprocess

    found = subprocess.run(command, capture_output=True, text=True, env={"USER": "root", **os.environ}) \
        if shutil.which(command[0]) else None
    if found is None or found.returncode:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI installs {command[0]} ({how}), but `{' '.join(command)}` fails")
        pytest.skip(f"no {command[0]} here: {how}")
    return (found.stdout or found.stderr).strip()


@pytest.fixture(scope="session")
def apptainer():
    """A real Apptainer (.ci/apptainer start: as root, it prepares one)."""
    return installed(["apptainer", "--version"], ".ci/apptainer start")


@pytest.fixture(scope="session")
def podman():
    """A real Podman (Debian's package; CI asks it for no ulimits: see .ci/run)."""
    return installed(["podman", "--version"], "apt-get install podman")


@pytest.fixture(scope="session")
def charliecloud():
    """A real Charliecloud's ch-run (the image directories are made from the engine's export)."""
    return installed(["ch-run", "--version"], "apt-get install charliecloud-runtime")


@pytest.fixture(scope="session")
def cluster_folder():
    """A folder every user may walk through, standing for a cluster's shared filesystem: the
    results and cache of runs whose tasks run as an unprivileged user (Apptainer, Charliecloud),
    its images converted once for the whole session."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="umlip-cluster-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium from the system's packages, driven by selenium through the
    system's chromedriver, in a 1280-pixel window; skipped without one, a failure in CI
    (.ci/run installs both)."""
    import shutil

    chromium = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI installs chromium and chromium-driver, but neither chromium nor chromedriver is here")
        pytest.skip("no headless browser here: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # SwiftShader: WebGL (the 3-D viewer) in software, as on a machine without a GPU
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                     "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
