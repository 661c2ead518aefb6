# make bench MODEL=chgnet                      relax, merge, score, report (last line: the run folder)
# make bench MODEL="chgnet sevennet-0" DATASET=path LIMIT=20 DIM=0D,2D GPUS=0,1 PROTOCOL=authors
# make bench MODEL=mace BACKEND=slurm            the same run as array jobs on a SLURM cluster (benchmark.yaml: slurm)
# make weights MODEL=mace                      download a model's weights into the cache (once)
# make lock MODEL=mace                         re-resolve a model's packages: images/<model>/requirements.lock
# make lock HOST=1                             re-resolve the host's packages: requirements.lock (uv, every Python)
#                                              (PYTHON=3.13: that runtime's; neither: every runtime's and model's)
# make bundle RUN=results/<run> [WITH=data,images]  one archive of a run: build inputs, settings, results, report
# make reproduce BUNDLE=<file> [GPUS=0] [ENGINE=batched]  rerun a bundle here from its own inputs, then compare
# make compare A=<run or bundle> B=<run or bundle>  side by side; exit 0 reproduced, 1 differs, 2 cannot compare
# make selftest [GPUS=0]                       rerun the reference bundles (reference/) here: does this machine agree?
# make report                                  reports of every finished run + leaderboard
# make models [FORMAT=csv|json]                the models: tag, image, weights, what you supply
# make test                                    import contracts, unit tests and Docker integration tests
# make test-zoo                                every model image from a clean cache: build, contract, one relaxation
# make test-unit                               import contracts and the tests that need neither Docker nor SLURM
# make test-fast                               the tests a developer runs while editing (well under a minute)
# make build MODEL=mace                        build (or reuse) a model's image, and print its tag
# make doctor [MODEL=...] [GPUS=0]             check the engine, GPUs, manifest, caches and backend
# make perf [LIMIT=50] [LOAD=1]                pipeline overhead vs a plain ASE loop (CHGNet, LIMIT structures); LOAD: busy processes beside it
# make perf-engine MODEL=sevennet-0 LIMIT=100  batched engine vs sequential ASE: agreement and speed (GPUS=0: on a GPU)
#                                              (BREAKDOWN=1: the sequential engine's step by part; PROFILE=1: the batched one's)
# make perf-peer [PEERS=torchsim-sevennet] [LIMIT=50] [THREADS=1,2]  the project's engines beside TorchSim and plain ASE
#                                              (GPUS=0: on a GPU; LOCK=1: re-resolve tests/perf/peer/*/requirements.lock)
# make clean-venv                              remove the host's environment (.venv)
#
# One name per concept: MODEL, DATASET, LIMIT (structures: per dimensionality for bench, in all for
# perf), DIM, GPUS (cpu, all, or GPU indices), PROTOCOL, BACKEND, ENGINE; RUN a run folder, BUNDLE
# a bundle, A and B the two sides of a comparison (either).

# the host's interpreter for the venv (PYTHON is make lock's Python version of a runtime)
HOST_PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL_ARGS = $(if $(MODEL),--models $(MODEL))
BENCH_ARGS = $(MODEL_ARGS) $(if $(DATASET),--dataset $(DATASET)) \
             $(if $(LIMIT),--limit $(LIMIT)) $(if $(DIM),--dim $(DIM)) $(if $(GPUS),--gpus $(GPUS)) \
             $(if $(PROTOCOL),--protocol $(PROTOCOL)) $(if $(BACKEND),--backend $(BACKEND)) \
             $(if $(ENGINE),--engine $(ENGINE))
# the perf scripts: LIMIT structures, on the CPU unless GPUS names a GPU (the first is used)
PERF_ARGS = $(if $(LIMIT),--structures $(LIMIT)) $(if $(filter-out cpu,$(GPUS)),--device cuda)

.PHONY: bench build bundle reproduce compare selftest lock weights report test test-unit test-fast test-zoo perf perf-engine perf-peer doctor models clean-venv

# the host's scoring stack, exactly as locked (hashes checked): see orchestrator/host.py
$(VENV)/.installed: requirements.lock
	$(HOST_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	touch $@

bench: $(VENV)/.installed
	$(PY) -m orchestrator bench $(BENCH_ARGS)

build: $(VENV)/.installed
	$(PY) -m orchestrator build $(MODEL_ARGS)

lock: $(VENV)/.installed
	$(PY) -m orchestrator lock $(MODEL_ARGS) $(if $(PYTHON),--python $(PYTHON)) $(if $(HOST),--host)

weights: $(VENV)/.installed
	$(PY) -m orchestrator weights $(MODEL_ARGS)

bundle: $(VENV)/.installed
	$(PY) -m orchestrator bundle $(RUN) $(if $(findstring data,$(WITH)),--with-data) $(if $(findstring images,$(WITH)),--with-images)

reproduce: $(VENV)/.installed
	$(PY) -m orchestrator reproduce $(BUNDLE) $(if $(GPUS),--gpus $(GPUS)) $(if $(ENGINE),--engine $(ENGINE)) $(if $(DATASET),--dataset $(DATASET))

compare: $(VENV)/.installed
	$(PY) -m orchestrator compare $(A) $(B)

selftest: $(VENV)/.installed
	$(PY) -m orchestrator selftest $(if $(GPUS),--gpus $(GPUS)) $(if $(ENGINE),--engine $(ENGINE)) $(if $(ONLY),--only $(ONLY))

report: $(VENV)/.installed
	$(PY) -m orchestrator report

doctor: $(VENV)/.installed
	$(PY) -m orchestrator doctor $(MODEL_ARGS) $(if $(GPUS),--gpus $(GPUS)) $(if $(BACKEND),--backend $(BACKEND))

models: $(VENV)/.installed
	$(PY) -m orchestrator models $(if $(FORMAT),--format $(FORMAT))

test: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

test-zoo: $(VENV)/.installed
	$(PY) -m orchestrator zoo $(MODEL_ARGS)

test-unit: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not docker and not slurm" $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not docker and not slurm and not slow" $(PYTEST_ARGS)

perf: $(VENV)/.installed
	$(PY) tests/perf/pipeline_overhead.py $(if $(LIMIT),--structures $(LIMIT)) $(if $(LOAD),--load $(LOAD))

perf-engine: $(VENV)/.installed
	$(PY) tests/perf/engine_speed.py $(if $(MODEL),--model $(MODEL)) $(PERF_ARGS) $(if $(THREADS),--threads $(THREADS)) $(if $(LOAD),--load $(LOAD)) $(if $(BREAKDOWN),--breakdown) $(if $(PROFILE),--profile)

perf-peer: $(VENV)/.installed
	$(PY) tests/perf/peer_speed.py $(if $(PEERS),--peers $(PEERS)) $(PERF_ARGS) $(if $(THREADS),--threads $(THREADS)) $(if $(FMAX),--fmax $(FMAX)) $(if $(LOCK),--lock)

clean-venv:
	rm -rf $(VENV)
