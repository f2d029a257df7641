# sandworker developer entry points. Every target installs what it needs.
PY      ?= /usr/bin/python3.11
VENV    := .venv
VPY     := $(CURDIR)/$(VENV)/bin/python
STAMP   := $(VENV)/.installed
APT_PKGS := bubblewrap procps util-linux iproute2 hyperfine

.PHONY: run try-sandbox test lint typecheck schema check-schema bench apt clean install install-venv install-service

$(STAMP): pyproject.toml
	@if ! $(PY) -c 'import ensurepip' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv; \
	  else echo "error: $(PY) with venv support is needed: apt-get install python3.11-venv" >&2; exit 1; fi; fi
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "note: missing apt packages:$$missing (run as root to install)"; fi; fi

# `make run` starts the worker daemon in the foreground on a development home
# (./dev-home, ignored by git: certificates, trust, client profile, policy) and
# prints the command that runs a script against it. Ctrl-C stops it.
run: $(STAMP) apt
	$(VENV)/bin/sandworker doctor --policy-dir policies/default.toml || true
	$(VENV)/bin/sandworker serve --dev

# The sandbox alone, without the daemon: one sample script under the default policy.
try-sandbox: $(STAMP) apt
	$(VENV)/bin/sandworker sandbox run --project demo --policy-dir policies/default.toml \
	  --state-dir $(CURDIR)/dev-home/sandbox-state -v bench/sample-script.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	rm -rf .build/mypy && mkdir -p .build/mypy/sandworker
	cp sandworker/__init__.py .build/mypy/sandworker/
	ln -s $(CURDIR)/daemon .build/mypy/sandworker/daemon
	ln -s $(CURDIR)/sandbox .build/mypy/sandworker/sandbox
	cd .build/mypy && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml -p sandworker

schema: $(STAMP)
	$(VENV)/bin/sandworker policy schema > policies/schema/policy.v1.json
	$(VENV)/bin/sandworker policy docs > policies/REFERENCE.md
	mkdir -p config/schema
	$(VENV)/bin/sandworker config schema > config/schema/config.v1.json
	$(VENV)/bin/sandworker config docs > config/REFERENCE.md
	$(VENV)/bin/sandworker metrics docs > monitoring/METRICS.md

check-schema: $(STAMP)
	$(VENV)/bin/sandworker policy schema | diff -u policies/schema/policy.v1.json - \
	  || { echo "policies/schema/policy.v1.json is stale: run 'make schema' and commit it" >&2; exit 1; }
	$(VENV)/bin/sandworker policy docs | diff -u policies/REFERENCE.md - \
	  || { echo "policies/REFERENCE.md is stale: run 'make schema' and commit it" >&2; exit 1; }
	$(VENV)/bin/sandworker config schema | diff -u config/schema/config.v1.json - \
	  || { echo "config/schema/config.v1.json is stale: run 'make schema' and commit it" >&2; exit 1; }
	$(VENV)/bin/sandworker config docs | diff -u config/REFERENCE.md - \
	  || { echo "config/REFERENCE.md is stale: run 'make schema' and commit it" >&2; exit 1; }
	$(VENV)/bin/sandworker metrics docs | diff -u monitoring/METRICS.md - \
	  || { echo "monitoring/METRICS.md is stale: run 'make schema' and commit it" >&2; exit 1; }

# promtool (tests check the metrics and the alerting rules with it): the binary alone,
# taken out of Debian's prometheus package, which is not installed (no server is started).
PROMTOOL := .build/promtool/root/usr/bin/promtool
$(PROMTOOL):
	mkdir -p .build/promtool
	cd .build/promtool && { apt-get download prometheus 2>/dev/null || \
	  { apt-get update -qq && apt-get download prometheus; }; } && dpkg-deb -x prometheus_*.deb root

test: $(STAMP) apt $(PROMTOOL) lint typecheck check-schema
	$(VPY) -m pytest -q -ra $(PYTEST_ARGS)

bench: $(STAMP) apt
	$(VPY) bench/spawn.py
	$(VPY) bench/e2e.py
	$(VPY) bench/proxy.py

# `make install` (root): the daemon in $(PREFIX), a virtualenv of its own, `sandworker` in
# $(BINDIR), and `make install-service`: the systemd unit, the sysusers and tmpfiles files
# (applied at once), /etc/sandworker with the shipped policies and configuration (files
# already there are kept). DESTDIR stages it all under another root. See the README.
PREFIX  ?= /opt/sandworker
BINDIR  ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system
ETC     := $(DESTDIR)/etc/sandworker

install: install-venv install-service

install-venv:
	$(PY) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install -q .
	install -d $(DESTDIR)$(BINDIR)
	ln -sfn $(PREFIX)/bin/sandworker $(DESTDIR)$(BINDIR)/sandworker

install-service:
	install -D -m 0644 systemd/sandworker.service $(DESTDIR)$(UNITDIR)/sandworker.service
	install -D -m 0644 systemd/sandworker.sysusers $(DESTDIR)/usr/lib/sysusers.d/sandworker.conf
	install -D -m 0644 systemd/sandworker.tmpfiles $(DESTDIR)/usr/lib/tmpfiles.d/sandworker.conf
	systemd-sysusers --root=$(DESTDIR)/ $(DESTDIR)/usr/lib/sysusers.d/sandworker.conf
	systemd-tmpfiles --root=$(DESTDIR)/ --create $(DESTDIR)/usr/lib/tmpfiles.d/sandworker.conf
	for f in policies/default.toml policies/strict.toml; do t=$(ETC)/policies/$${f#policies/}; \
	  test -e $$t || { install -m 0640 $$f $$t && chgrp --reference=$(ETC) $$t; }; done
	test -e $(ETC)/sandworker.toml || { install -m 0640 systemd/sandworker.toml $(ETC)/ \
	  && chgrp --reference=$(ETC) $(ETC)/sandworker.toml; }
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf $(VENV) .build .pytest_cache .mypy_cache .ruff_cache
