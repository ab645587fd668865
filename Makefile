# hsmkms: `make dev` runs a dev Vault with the plugin on SoftHSM; `make test`
# runs every test. Both install what is missing on a Debian machine with Go.
SHELL := /bin/bash
export CGO_ENABLED := 1

.PHONY: dev test bench deps vault openbao plugin unit e2e lint clean

dev:
	bash scripts/dev.sh

deps:
	bash scripts/deps.sh

vault: deps
	bash scripts/build-vault.sh >/dev/null

# OpenBao, which the e2e crypto suite also runs on.
openbao: deps
	bash scripts/build-openbao.sh >/dev/null

plugin:
	source scripts/lib.sh && build_plugin

test: deps vault openbao
	bash scripts/test.sh

bench: deps vault
	bash scripts/bench.sh

unit: deps
	go test -count=1 ./hsm/... ./internal/... .

e2e: deps vault openbao
	HSMKMS_VAULT_BIN=$$(bash scripts/build-vault.sh) HSMKMS_OPENBAO_BIN=$$(bash scripts/build-openbao.sh) go test -count=1 -timeout 20m -v ./e2e/

lint:
	test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	go vet ./...
	go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

clean:
	rm -rf bin .dev bench-results
