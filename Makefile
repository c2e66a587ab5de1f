# zhlora: the two set-up commands are `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch is pinned here (CI / developer install path) to the local CPU wheel; the package
# metadata itself only asks for torch>=2.3 so real users bring their own build.
TORCH   := torch==2.13.0
EXTRAS  := train,serve,gec,export,glm4,deepspeed,webui,qlora,test

.PHONY: venv test demo clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH)"
	DS_BUILD_OPS=0 $(VPY) -m pip install -q -e ".[$(EXTRAS)]" "$(TORCH)"
	# llama-cpp-python compiles llama.cpp (10+ minutes on 2 cores the first time; pip caches the
	# wheel). Best effort: where it cannot build, the llama.cpp tests skip with a reason.
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(VPY) -m pip install -q -e ".[llamacpp]" "$(TORCH)" \
		|| echo "zhlora: llama-cpp-python did not build; the llama.cpp tests will skip"
	touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(VPY) -m pytest -p no:cacheprovider --durations=15 tests

demo: $(STAMP)
	$(VPY) -m zhlora demo

clean:
	rm -rf $(VENV) .demo
