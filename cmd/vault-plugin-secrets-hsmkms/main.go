// Command vault-plugin-secrets-hsmkms serves the hsmkms secrets engine to
// Vault. Every mount of the plugin runs in this one process (multiplexing),
// sharing the PKCS#11 module and login.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/plugin"
)

// pprofAddrEnv, when set at plugin registration (`-env`), serves Go's
// profiler on that address (loopback only) for performance work.
const pprofAddrEnv = "HSMKMS_PPROF_ADDR"

func main() {
	if addr := os.Getenv(pprofAddrEnv); addr != "" {
		servePprof(addr)
	}
	exitWhenOrphaned(hclog.New(&hclog.LoggerOptions{Name: "hsmkms"}))
	meta := &api.PluginAPIClientMeta{}
	flags := meta.FlagSet()
	if err := flags.Parse(os.Args[1:]); err != nil {
		fatal(err)
	}
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: backendFactory(),
		TLSProviderFunc:    api.VaultPluginTLSProvider(meta.GetTLSConfig()),
	})
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
	os.Exit(1)
}
