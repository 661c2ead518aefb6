"""Shared fixtures. Docker tests use the real engine; the image settings come
from benchmark.yaml and UMLIP_* variables (CI sets a local base image)."""

import os

# BLAS single-threaded before numpy loads: ASE's cell filter does tiny matrix functions
# every step, and threaded BLAS makes the in-process EMT relaxations ~50x slower.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import signal

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


@pytest.fixture(scope="session")
def apptainer():
    """A real Apptainer's version line; skipped without one, a failure in CI (.ci/apptainer start)."""
    import shutil
    import subprocess

    found = subprocess.run(["apptainer", "--version"], capture_output=True, text=True) \
        if shutil.which("apptainer") else None
    if found is None or found.returncode:
        if os.environ.get("CI"):
            raise RuntimeError("CI installs Apptainer (.ci/apptainer start), but `apptainer --version` fails")
        pytest.skip("no Apptainer here: `.ci/apptainer start` (as root) prepares one")
    return found.stdout.strip()


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
