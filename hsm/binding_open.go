package hsm

import (
	"fmt"
	"sync"
)

// OpenBinding loads the PKCS#11 module at library on its own, outside the
// process's module registry, and initialises it, passing initArgs (NSS
// softokn's parameter string; "" for none) to C_Initialize. It is for
// benchmarks and tools that need the raw token: the binding the plugin
// calls, EncryptOnce included (NSS's AES-GCM needs it), with none of a
// Client's pool, shared login, handle cache or recovery. close finalises
// and unloads the module; it may be called more than once.
//
// A module is initialised once per process: OpenBinding refuses a module
// that is already initialised, by Open or by another OpenBinding, and a
// process must not Open a module it holds through OpenBinding.
func OpenBinding(library, initArgs string) (p PKCS11, close func(), err error) {
	modules.Lock()
	_, registered := modules.byPath[library]
	modules.Unlock()
	if registered {
		return nil, nil, fmt.Errorf("%w: %s is already loaded by a Client in this process", ErrLibrary, library)
	}
	b, err := loadMiekg(library, initArgs)
	if err != nil {
		return nil, nil, err
	}
	if err := b.Initialize(); err != nil {
		b.unload()
		return nil, nil, fmt.Errorf("%w: C_Initialize: %w", ErrLibrary, err)
	}
	var once sync.Once
	return b, func() {
		once.Do(func() {
			_ = b.Finalize()
			b.unload()
		})
	}, nil
}
