# The two commands: `make demo` and `make test`. Each sets itself up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# ordinary users' venv: Debian's Python (the root venv's may live under /root, which they cannot enter)
USER_VENV  := .venv-user
USER_STAMP := $(USER_VENV)/.installed
TEST_OUT ?= test-output

.PHONY: demo test lint install bench bench-slurm clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,slurm,mpi]'
	touch $(TEST_STAMP)

$(USER_STAMP): pyproject.toml
	/usr/bin/python3 -m venv $(USER_VENV)
	$(USER_VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(USER_STAMP)

install: $(STAMP)

## demo: the main job, an ensemble sweep on the embedded local backend
demo: $(STAMP)
	$(BIN)/htc demo

## the local-backend tests run again as an ordinary user (tests/restrictive.py; `root` and `slurm` ones left out)
USER_TESTS := tests/test_sandbox.py tests/test_call_sandbox.py tests/test_job_files.py tests/test_memory_limits.py \
              tests/test_limits.py tests/test_server_security.py tests/test_runtime_local.py tests/test_retries.py \
              tests/test_dask_security.py tests/test_unconfined.py tests/test_private_root.py \
              tests/test_command_zygote.py tests/test_local_commands.py tests/test_dependencies_chained.py \
              tests/test_log_packs.py tests/test_command_feed.py
## and as that user without user namespaces (no sandbox: jobs run unconfined, tests marked `sandbox` left out);
## test_sandbox.py and test_call_sandbox.py are left out whole: what of them is not `sandbox` runs the same there.
## The server, the `htc` command, the notebook layer and the local-only notebooks too (run from the user's
## copies): there they serve, submit and dry-run unconfined.
NO_USERNS_TESTS := $(filter-out tests/test_sandbox.py tests/test_call_sandbox.py,$(USER_TESTS)) \
                   tests/test_server.py tests/test_server_e2e.py tests/test_cli.py tests/test_notebook_layer.py \
                   notebooks/01-quickstart.ipynb notebooks/03-htc-batches.ipynb notebooks/05-ensemble-sweep.ipynb

## test: every test; SLURM, MPI and browser parts are required (never skipped).
## Brings the SLURM test cluster up, runs the tests in two lanes side by side, always brings it down, exits
## with the first failing status. The SLURM lane (`-m slurm`: every test that uses the cluster, in order, in
## one process; its output is printed when it ends) runs beside the local lane: the rest as root, then the
## local-backend tests as an ordinary user, with and without user namespaces.
test: system-deps $(TEST_STAMP) $(USER_STAMP)
	$(MAKE) --no-print-directory lint
	mkdir -p $(TEST_OUT)
	$(MAKE) --no-print-directory slurm-up || { $(MAKE) --no-print-directory slurm-down; exit 1; }
	@echo "== SLURM lane (-m slurm) in the background, into $(TEST_OUT)/slurm-lane.log; shown when it ends"
	HTC_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m slurm --basetemp=$(SLURM_LANE_TMP) \
	  --junitxml=$(TEST_OUT)/junit-slurm.xml > $(TEST_OUT)/slurm-lane.log 2>&1 & lane=$$!; \
	  HTC_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slurm" --junitxml=$(TEST_OUT)/junit.xml; \
	  rc=$$?; $(BIN)/python tests/restrictive.py suite htc-user userns $(USER_TESTS); user=$$?; \
	  $(BIN)/python tests/restrictive.py suite htc-user no-userns $(NO_USERNS_TESTS); nouserns=$$?; \
	  wait $$lane; slurm=$$?; echo "== SLURM lane (-m slurm)"; cat $(TEST_OUT)/slurm-lane.log; \
	  $(MAKE) --no-print-directory slurm-down; down=$$?; \
	  for s in $$slurm $$rc $$user $$nouserns $$down; do [ $$s -eq 0 ] || exit $$s; done
SLURM_LANE_TMP := /tmp/pytest-of-$(shell id -un)/slurm-lane

## lint: ruff (tests and benchmarks too) and mypy, as configured in pyproject.toml; `make test` runs it first,
## before the SLURM cluster comes up, so a finding fails fast
lint: $(TEST_STAMP)
	$(BIN)/ruff check htc_notebook tests bench
	$(BIN)/mypy htc_notebook

## system-deps: Debian packages for the SLURM test cluster and the venv (root; apt-get only what is missing).
## Keep in sync with htc_notebook/devcluster/install.py (a test compares them).
.PHONY: system-deps slurm-up slurm-down
SYSTEM_PACKAGES := slurmctld slurmd slurm-client slurmdbd mariadb-server munge openmpi-bin libopenmpi-dev iproute2 util-linux python3-venv chromium bubblewrap docker-registry skopeo umoci busybox-static charliecloud-runtime lammps
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install" $$missing; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

## slurm-up / slurm-down: the local 4-node SLURM test cluster (root; docs/test-cluster.md)
slurm-up: $(STAMP)
	$(BIN)/htc slurm up

slurm-down: $(STAMP)
	$(BIN)/htc slurm down

## bench: the benchmarks; figures go to bench/results.md
bench: $(TEST_STAMP)
	$(BIN)/python bench/throughput.py --write bench/results.md
	$(BIN)/python bench/throughput.py --work-ms 20 --jobs 300 --pairs 5 --write bench/results.md

## bench-slurm: the SLURM benchmarks (needs make slurm-up)
bench-slurm: $(TEST_STAMP)
	$(BIN)/python bench/slurm.py --write bench/results.md

clean:
	rm -rf $(VENV) $(USER_VENV) htc-data $(TEST_OUT)
