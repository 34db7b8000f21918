# The README's two commands:
#   make reproduce   set up .venv, then run every experiment at the default (quick) scale
#   make test        set up .venv, then pytest and the regression check on the committed results
PYTHON ?= python3
# seeds run at once, each in its own single-threaded process (the experiments use one torch thread each)
JOBS ?= 2
VENV ?= .venv

.PHONY: venv test reproduce l2l clean-venv

venv:
	@PYTHON="$(PYTHON)" VENV="$(VENV)" bash scripts/setup_env.sh

test: venv
	WANDB_MODE=disabled WANDB_SILENT=true "$(VENV)/bin/python" -m pytest -q
	@if [ -f replication/cli.py ]; then \
	  echo "$(VENV)/bin/metainf-repro check"; WANDB_MODE=disabled "$(VENV)/bin/metainf-repro" check; \
	else echo "replication/cli.py not present yet: skipping 'metainf-repro check'"; fi

reproduce: venv
	"$(VENV)/bin/metainf-repro" all --scale quick --jobs $(JOBS)

l2l:
	@if [ ! -x "$(VENV)/bin/python" ]; then echo "no $(VENV): run 'make venv' first" >&2; exit 1; fi
	PYTHON="$(VENV)/bin/python" bash scripts/install_learn2learn.sh

clean-venv:
	rm -rf "$(VENV)"
