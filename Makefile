# The two Quick-start commands: `make demo` and `make test`. Both install what is missing first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench install system-deps pi-deps pi-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[trainer,dev]'
	@touch $@

# Debian's mosquitto (real broker for the tests), gcc and g++ (compile the C encoder and the Arduino sketch on the host) and openssl (test CA).
system-deps:
	@missing=""; \
	 { command -v mosquitto || test -x /usr/sbin/mosquitto; } >/dev/null 2>&1 || missing="$$missing mosquitto"; \
	 command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	 command -v g++ >/dev/null 2>&1 || missing="$$missing g++"; \
	 command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	 if [ -n "$$missing" ]; then \
	   echo "installing Debian packages:$$missing"; \
	   $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	 fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -ra

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

bench: $(STAMP) system-deps
	$(BIN)/python bench/run.py

clean:
	rm -rf build demo-out bench/results.json .pytest_cache
