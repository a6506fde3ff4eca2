# The two Quick-start commands: `make demo` and `make test`. Both install what is missing first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo fleet-demo test bench bench-fleet install system-deps pi-deps pi-check clean lowest lint

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[trainer,fleet,dev]'
	@touch $@

# Debian's mosquitto (real broker for the tests), gcc and g++ (compile the C encoder and the Arduino sketch on the host), openssl (test CA),
# postgresql (the fleet historian's tests start a private cluster with its initdb and pg_ctl), chromium (the
# dashboard's browser tests drive it through Playwright: no browser download) and systemd (systemd-analyze
# checks deploy/cm-fleet.service).
system-deps:
	@missing=""; \
	 { command -v mosquitto || test -x /usr/sbin/mosquitto; } >/dev/null 2>&1 || missing="$$missing mosquitto"; \
	 command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	 command -v g++ >/dev/null 2>&1 || missing="$$missing g++"; \
	 command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	 ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	 command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	 command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	 if [ -n "$$missing" ]; then \
	   echo "installing Debian packages:$$missing"; \
	   $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	 fi

# The suite runs in parallel (pytest-xdist). Most tests wait on real processes, a broker, ptys or a real-time
# stream, so three workers keep two cores busy. Each module runs whole on one worker (its fixtures are set up
# once), the slow ones first (tests/conftest.py) so that the long runs start at once. TEST_WORKERS=0 runs
# the suite serially; one test alone: .venv/bin/python -m pytest tests/test_link.py::test_loop_url
TEST_WORKERS ?= 3
test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder
	$(MAKE) --no-print-directory lowest

# ruff, mypy and the import layers (lint-imports), configured in pyproject.toml: kept clean by every `make test`.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The lowest versions pyproject.toml allows for the `edge` extra (what a Pi may end up with), in a venv of
# their own, running the tests of the device side that need no TensorFlow: a floor is a tested promise.
# Cached: a second `make test` reinstalls nothing unless pyproject.toml changed.
LOWEST       := .venv-lowest
LOWEST_STAMP := $(LOWEST)/.installed
LOWEST_TESTS := tests/test_outbox.py tests/test_publisher.py tests/test_checkpoint.py tests/test_config.py \
                tests/test_security.py tests/test_recorder.py tests/test_detector.py tests/test_features.py \
                tests/test_sensor.py tests/test_snapshot.py tests/test_frame.py tests/test_link.py \
                tests/test_replay.py tests/test_cadence.py tests/test_clock.py tests/test_guard.py tests/test_losses.py \
                tests/test_signature.py

$(LOWEST_STAMP): pyproject.toml scripts/lowest_requirements.py
	@test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(PYTHON) scripts/lowest_requirements.py edge > $(LOWEST)/requirements.txt
	$(LOWEST)/bin/python -m pip install -q -r $(LOWEST)/requirements.txt pytest pytest-timeout hypothesis jsonschema
	$(LOWEST)/bin/python -m pip install -q --no-deps -e .   # console scripts; dependencies stay at the floors
	@touch $@

lowest: $(LOWEST_STAMP) system-deps
	@$(LOWEST)/bin/python -m pip list 2>/dev/null | grep -iE '^(numpy|paho-mqtt|pyserial|cobs|voluptuous|tflite|ai-edge-litert|cryptography) '
	$(LOWEST)/bin/python -m pytest -q -ra -p no:cacheprovider $(LOWEST_TESTS) -k 'not cm_edge_itself'

# Debian's qemu-user-static (runs ARM programs on x86), binfmt-support (registers it with the kernel) and
# mmdebstrap (builds the Raspberry Pi OS-like root) for `make pi-check`.
pi-deps:
	@missing=""; \
	 command -v qemu-aarch64-static >/dev/null 2>&1 || missing="$$missing qemu-user-static"; \
	 command -v update-binfmts >/dev/null 2>&1 || missing="$$missing binfmt-support"; \
	 command -v mmdebstrap >/dev/null 2>&1 || missing="$$missing mmdebstrap"; \
	 if [ -n "$$missing" ]; then \
	   echo "installing Debian packages:$$missing"; \
	   $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	 fi

# The agent on an emulated Raspberry Pi: ARCH=arm64 (64-bit Pi OS, LiteRT) or ARCH=armhf (32-bit, numpy
# interpreter); PI_CHECK_SUBSET=ci runs fewer device tests. See scripts/pi_check.py.
ARCH ?= arm64
PI_CHECK_SUBSET ?= full
pi-check: $(STAMP) system-deps pi-deps
	$(SUDO) $(BIN)/python scripts/pi_check.py --arch $(ARCH) --subset $(PI_CHECK_SUBSET)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# A small fleet on this machine: Mosquitto, cm-fleet serve (and its dashboard, once built) and a few real agents
# replaying a run to failure in a loop; prints the dashboard's URL and a login. Ctrl-C stops it. See scripts/fleet_demo.py.
fleet-demo: $(STAMP) system-deps
	$(BIN)/python scripts/fleet_demo.py

bench: $(STAMP) system-deps
	$(BIN)/python bench/run.py

clean:
	rm -rf build demo-out fleet-demo-out bench/results.json bench/real_results.json .pytest_cache $(LOWEST)

# The fleet at scale (issue 21): cm-fleet simulate's devices on one Mosquitto, cm-fleet serve storing them;
# appends to bench/fleet_results.json. FLEET_DEVICES=1000 for one size; FLEET_BENCH_ARGS=--faults adds the faults.
FLEET_DEVICES ?= 1000,5000,10000
bench-fleet: $(STAMP) system-deps
	$(BIN)/python bench/bench_fleet.py --devices $(FLEET_DEVICES) $(FLEET_BENCH_ARGS)
