# hsmkms: `make dev` runs a dev Vault with the plugin on SoftHSM; `make test`
# runs every test. Both install what is missing on a Debian machine with Go.
SHELL := /bin/bash
export CGO_ENABLED := 1

.PHONY: dev test bench deps vault openbao plugin release unit e2e lint clean

dev:
	bash scripts/dev.sh

deps:
	bash scripts/deps.sh

vault: deps
	bash scripts/build-vault.sh >/dev/null

# OpenBao, which the e2e crypto suite also runs on.
openbao: deps
	bash scripts/build-openbao.sh >/dev/null

# The plugin into bin/, reporting VERSION to Vault (v0.0.0-dev unless set):
# make plugin VERSION=v1.2.3
plugin:
	source scripts/lib.sh && VERSION=$(VERSION) build_plugin

# The plugin for linux/amd64 and linux/arm64, SHA256SUMS and each binary's
# build info into dist/: make release VERSION=v1.2.3
release:
	bash scripts/deps.sh release
	VERSION=$(VERSION) bash scripts/release.sh

# Builds what it needs itself, in parallel with the tests that do not need it.
test:
	bash scripts/test.sh

bench: deps vault
	bash scripts/bench.sh

unit: deps
	go test -count=1 ./hsm/... ./internal/... .

e2e: deps vault openbao
	HSMKMS_E2E=1 HSMKMS_VAULT_BIN=$$(bash scripts/build-vault.sh) HSMKMS_OPENBAO_BIN=$$(bash scripts/build-openbao.sh) go test -count=1 -timeout 20m -v ./e2e/

lint:
	test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	go vet ./...
	go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

clean:
	rm -rf bin .dev bench-results dist test-logs
