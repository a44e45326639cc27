# The two commands a newcomer needs: `make run` and `make test`. Each target calls a script in scripts/.
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: install run test bench lint images clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/install.sh
	VENV=$(VENV) scripts/install.sh
	touch $(STAMP)

run: install
	VENV=$(VENV) scripts/run_local.sh

test: install
	VENV=$(VENV) scripts/test.sh $(ARGS)

bench: install
	VENV=$(VENV) scripts/bench.sh

lint: install
	VENV=$(VENV) scripts/lint.sh

images:
	scripts/build_images.sh

clean:
	rm -rf $(VENV) .run *.egg-info .pytest_cache
