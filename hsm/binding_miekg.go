package hsm

/*
#cgo linux LDFLAGS: -ldl
#cgo freebsd LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

#include "pkcs11_cgo.h"

// oneshot holds this package's own reference to a module miekg/pkcs11 has
// loaded: dlopen of the same path returns the same library, so the
// function list reaches the same state and sessions.
typedef struct oneshot {
	void *handle;
	CK_FUNCTION_LIST_PTR fl;
} oneshot;

static oneshot *oneshot_open(const char *path) {
	oneshot *o = calloc(1, sizeof(oneshot));
	if (o == NULL) return NULL;
	o->handle = dlopen(path, RTLD_LAZY);
	if (o->handle == NULL) { free(o); return NULL; }
	CK_C_GetFunctionList get = (CK_C_GetFunctionList) dlsym(o->handle, "C_GetFunctionList");
	if (get == NULL || get(&o->fl) != CKR_OK || o->fl == NULL) {
		dlclose(o->handle);
		free(o);
		return NULL;
	}
	return o;
}

static void oneshot_close(oneshot *o) {
	if (o == NULL) return;
	dlclose(o->handle);
	free(o);
}

static CK_RV oneshot_encrypt(oneshot *o, CK_SESSION_HANDLE sh, CK_BYTE_PTR in, CK_ULONG inlen,
		CK_BYTE_PTR out, CK_ULONG_PTR outlen) {
	return o->fl->C_Encrypt(sh, in, inlen, out, outlen);
}

static CK_RV oneshot_wrap(oneshot *o, CK_SESSION_HANDLE sh, CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE wrapping,
		CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR outlen) {
	CK_MECHANISM m = { mech, NULL, 0 };
	return o->fl->C_WrapKey(sh, &m, wrapping, key, out, outlen);
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// miekgBinding is the production PKCS11: miekg/pkcs11's context, plus the
// one call it lacks, made through the module's own function list.
type miekgBinding struct {
	*pkcs11.Ctx
	oneshot  *C.oneshot
	initArgs *C.char // NUL-terminated, kept for every C_Initialize; nil if none
}

// loadMiekg loads the module at path. initArgs, when not empty, is passed
// to every C_Initialize in CK_C_INITIALIZE_ARGS.pReserved (NSS softokn
// takes its whole configuration that way).
func loadMiekg(path, initArgs string) (*miekgBinding, error) {
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: %s", ErrLibrary, path)
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	o := C.oneshot_open(cpath)
	if o == nil {
		ctx.Destroy()
		return nil, fmt.Errorf("%w: %s has no C_GetFunctionList", ErrLibrary, path)
	}
	b := &miekgBinding{Ctx: ctx, oneshot: o}
	if initArgs != "" {
		b.initArgs = C.CString(initArgs)
	}
	return b, nil
}

func (b *miekgBinding) Initialize() error {
	if b.initArgs == nil {
		return b.Ctx.Initialize()
	}
	return b.Ctx.Initialize(pkcs11.InitializeWithReserved(unsafe.Pointer(b.initArgs)))
}

// unload releases the library; the module must be finalised first.
func (b *miekgBinding) unload() {
	C.oneshot_close(b.oneshot)
	b.Ctx.Destroy()
	if b.initArgs != nil {
		C.free(unsafe.Pointer(b.initArgs))
	}
}

func (b *miekgBinding) EncryptOnce(sh pkcs11.SessionHandle, plaintext []byte, outCap int) ([]byte, error) {
	if outCap < 1 {
		return nil, fmt.Errorf("%w: output buffer of %d bytes", ErrInvalidInput, outCap)
	}
	in := C.CBytes(plaintext) // a C copy: the module may keep no Go pointer
	defer C.free(in)
	out := C.malloc(C.size_t(outCap))
	defer C.free(out)
	outLen := C.CK_ULONG(outCap)
	rv := C.oneshot_encrypt(b.oneshot, C.CK_SESSION_HANDLE(sh), C.CK_BYTE_PTR(in), C.CK_ULONG(len(plaintext)),
		C.CK_BYTE_PTR(out), &outLen)
	if rv != C.CKR_OK {
		return nil, pkcs11.Error(rv)
	}
	if int(outLen) > outCap {
		return nil, fmt.Errorf("C_Encrypt wrote %d bytes into a %d-byte buffer", int(outLen), outCap)
	}
	return C.GoBytes(out, C.int(outLen)), nil
}

func (b *miekgBinding) WrapKeyOnce(sh pkcs11.SessionHandle, mech uint, wrapping, key pkcs11.ObjectHandle, outCap int) ([]byte, error) {
	if outCap < 1 {
		return nil, fmt.Errorf("%w: output buffer of %d bytes", ErrInvalidInput, outCap)
	}
	out := C.malloc(C.size_t(outCap))
	defer C.free(out)
	outLen := C.CK_ULONG(outCap)
	rv := C.oneshot_wrap(b.oneshot, C.CK_SESSION_HANDLE(sh), C.CK_MECHANISM_TYPE(mech), C.CK_OBJECT_HANDLE(wrapping),
		C.CK_OBJECT_HANDLE(key), C.CK_BYTE_PTR(out), &outLen)
	if rv != C.CKR_OK {
		return nil, pkcs11.Error(rv)
	}
	if int(outLen) > outCap {
		return nil, fmt.Errorf("C_WrapKey wrote %d bytes into a %d-byte buffer", int(outLen), outCap)
	}
	return C.GoBytes(out, C.int(outLen)), nil
}
