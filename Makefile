# wgpulse build, test and lab targets. Run as root for the lab and its tests.
GO        ?= go
PKG       := github.com/prometheus/common/version
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  := $(shell git rev-parse HEAD 2>/dev/null)
BRANCH    := $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null)
LDFLAGS   := -X $(PKG).Version=$(VERSION) -X $(PKG).Revision=$(REVISION) -X $(PKG).Branch=$(BRANCH) \
             -X $(PKG).BuildUser=$(USER) -X $(PKG).BuildDate=$(shell date -u +%Y%m%d-%H:%M:%S)
TEST_TIMEOUT ?= 25m
# install: DESTDIR stages (packaging), PREFIX is where the binary runs from.
PREFIX     ?= /usr/local
DESTDIR    ?=
SYSTEMDDIR ?= /lib/systemd/system
SYSCONFDIR ?= /etc

.PHONY: all build test unit lint generate bench fuzz deps demo clean install uninstall

all: build

# build: static binaries (CGO_ENABLED=0: Go's own resolver, no libc to map,
# 1.5 MB less RSS; the same binary runs on any Linux of the architecture).
build: export CGO_ENABLED = 0
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/wgpulse ./cmd/wgpulse
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/wgpulse-lab ./cmd/wgpulse-lab

# deps installs what the tests need (Debian/Ubuntu, as root) or says what is missing.
deps:
	@deploy/install-deps.sh

# test: lint, then every test; lab tests need root and /dev/net/tun
# (WGPULSE_REQUIRE_LAB=1 turns their skip into a failure, as CI does). The
# lab's timing-sensitive tests (RTT, jitter, failover bounds) run alone, not
# beside other packages on a 2-core runner; the VM nodes (qemu, software
# emulation) run last and print their phases.
test: deps lint
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v '/deploy/lab')
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./deploy/lab/
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./deploy/lab/vm/

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
# then the whole-run measurements once (probe targets at 1,000 and 10,000, failover
# outages on the lab, a simulated fleet under the real Prometheus, a 10-minute soak
# of the lab in auto with faults cycling (WGPULSE_SOAK=2m shortens it), and the
# side-by-side anchors (BenchmarkCollectorAnchor: the previous release at
# 10,000 peers; BenchmarkProberAnchor: Debian's fping and smokeping_prober at
# 1,000 targets, RTT against the system ping; WGPULSE_ANCHOR_RUNS rounds), and
# BenchmarkProberRSSOverScrapes and BenchmarkCollectorRSSOverTime (the agent's
# RSS over 120 scrapes, one every 5 s, 10 min each): ~70 min in all. Just the anchors:
#   go test -run '^$$' -bench 'CollectorAnchor|ProberAnchor' -benchtime=1x -timeout 60m ./cmd/internal/agent/
MEASUREMENTS := ThousandTargets|AgentProber1000|AgentProber10k|FleetPrometheus|FailoverOutage|EndpointOutage|MTUAndKeepaliveFix|DecisionToRoute|HundredGroupsCPU|Soak|CollectorAnchor|ProberAnchor|ProberRSSOverScrapes|CollectorRSSOverTime
bench:
	@deploy/install-deps.sh bench
	$(GO) test -run '^$$' -bench . -skip '$(MEASUREMENTS)' -benchmem -benchtime=60x -timeout 30m ./...
	$(GO) test -run '^$$' -bench '$(MEASUREMENTS)' -benchtime=1x -timeout 120m ./...
	@$(MAKE) --no-print-directory fuzz

# fuzz: each parser of untrusted input for FUZZTIME; `make test` runs their
# seed corpora (testdata/fuzz and f.Add). A crash stops with the input saved
# under testdata/fuzz: commit it as the regression test.
FUZZTIME ?= 60s
FUZZ_TARGETS := FuzzParseEchoReply:./prober FuzzParseConfig:./cmd/internal/agent FuzzParsePeerFile:./collector \
                FuzzNftRuleset:./collector/diagnose FuzzLoadState:./remediate
fuzz:
	@printf '%-20s %-22s %8s %12s  %s\n' target package time execs result
	@for t in $(FUZZ_TARGETS); do name=$${t%%:*}; pkg=$${t#*:}; start=$$(date +%s); \
	  out=$$($(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg 2>&1); rc=$$?; \
	  execs=$$(printf '%s\n' "$$out" | grep -o 'execs: [0-9]*' | tail -1 | cut -d' ' -f2); \
	  printf '%-20s %-22s %7ss %12s  %s\n' $$name $$pkg $$(( $$(date +%s) - start )) "$${execs:--}" $$([ $$rc = 0 ] && echo ok || echo FAILED); \
	  [ $$rc = 0 ] || { printf '%s\n' "$$out" | tail -30; exit 1; }; done

# demo: the lab plus an agent per site, with a fault timeline (root).
# DEMO_FLAGS=--hold keeps it up for Prometheus/Grafana.
demo: build
	@deploy/install-deps.sh demo
	./bin/wgpulse-lab demo $(DEMO_FLAGS)

# install: the binary, the hardened systemd unit (ExecStart under PREFIX) and,
# if there is none yet, an example config. Then, as root:
#   systemctl daemon-reload && systemctl enable --now wgpulse
install: build
	install -D -m 0755 bin/wgpulse $(DESTDIR)$(PREFIX)/bin/wgpulse
	install -d $(DESTDIR)$(SYSTEMDDIR)
	sed 's#/usr/local/bin/wgpulse#$(PREFIX)/bin/wgpulse#' deploy/systemd/wgpulse.service > $(DESTDIR)$(SYSTEMDDIR)/wgpulse.service
	chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/wgpulse.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/wgpulse/wgpulse.yml ]; then \
	  echo "kept the existing $(DESTDIR)$(SYSCONFDIR)/wgpulse/wgpulse.yml"; \
	else install -D -m 0644 deploy/systemd/wgpulse.yml $(DESTDIR)$(SYSCONFDIR)/wgpulse/wgpulse.yml; fi
	@echo "installed; as root: systemctl daemon-reload && systemctl enable --now wgpulse"

# uninstall removes the binary and the unit; your config and the remediator's
# state (/var/lib/wgpulse) stay. Stop the service first.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/wgpulse $(DESTDIR)$(SYSTEMDDIR)/wgpulse.service
	@echo "removed; kept $(SYSCONFDIR)/wgpulse/wgpulse.yml and /var/lib/wgpulse"

clean:
	rm -rf bin
