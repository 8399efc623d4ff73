# wgpulse build, test and lab targets. Run as root for the lab and its tests.
GO        ?= go
PKG       := github.com/prometheus/common/version
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  := $(shell git rev-parse HEAD 2>/dev/null)
BRANCH    := $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null)
LDFLAGS   := -X $(PKG).Version=$(VERSION) -X $(PKG).Revision=$(REVISION) -X $(PKG).Branch=$(BRANCH) \
             -X $(PKG).BuildUser=$(USER) -X $(PKG).BuildDate=$(shell date -u +%Y%m%d-%H:%M:%S)
TEST_TIMEOUT ?= 25m

.PHONY: all build test unit lint generate bench deps demo clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/wgpulse ./cmd/wgpulse
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/wgpulse-lab ./cmd/wgpulse-lab

# deps installs what the tests need (Debian/Ubuntu, as root) or says what is missing.
deps:
	@deploy/install-deps.sh

# test: lint, then every test; lab tests need root and /dev/net/tun
# (WGPULSE_REQUIRE_LAB=1 turns their skip into a failure, as CI does).
test: deps lint
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# unit: the tests that need neither root nor the lab.
unit:
	$(GO) test -short -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed on: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# generate refreshes the committed dashboards/*.json and alerts/*.yml (default config).
generate:
	$(GO) run ./cmd/wgpulse generate --out .

# bench: per-operation benchmarks over 60 iterations (60 polls, 60 scrapes),
# then the whole-run measurements (1,000 probe targets for 10-25 s) once.
MEASUREMENTS := ThousandTargets|AgentProber1000|FailoverOutage|EndpointOutage|MTUAndKeepaliveFix|DecisionToRoute|HundredGroupsCPU
bench:
	$(GO) test -run '^$$' -bench . -skip '$(MEASUREMENTS)' -benchmem -benchtime=60x -timeout 30m ./...
	$(GO) test -run '^$$' -bench '$(MEASUREMENTS)' -benchtime=1x -timeout 30m ./...

# demo: the lab plus an agent per site, with a fault timeline (root).
# DEMO_FLAGS=--hold keeps it up for Prometheus/Grafana.
demo: build
	./bin/wgpulse-lab demo $(DEMO_FLAGS)

clean:
	rm -rf bin
