package hsm

/*
#cgo linux LDFLAGS: -ldl
#cgo freebsd LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

#include "pkcs11_cgo.h"

// miekg_ctx is miekg/pkcs11's struct ctx (v1.1.2, pkcs11.go): the
// library's dlopen handle, then the function list it took when it loaded
// the library.
typedef struct miekg_ctx {
	void *handle;
	CK_FUNCTION_LIST_PTR sym;
} miekg_ctx;

// miekg_function_list returns the function list miekg/pkcs11 calls, read
// out of its ctx for the library at path, for the calls miekg lacks. It
// is never taken by a second C_GetFunctionList: a module may hand out a
// new list on every call (p11-kit's proxy and client modules do), with
// state of its own that C_Initialize on the first list does not
// initialise, and sessions of its own. The handle in ctx must be the one
// dlopen gives for path, which shows that the layout read is miekg's;
// otherwise it returns NULL.
static CK_FUNCTION_LIST_PTR miekg_function_list(void *ctx, const char *path) {
	miekg_ctx *c = ctx;
	void *h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
	if (h == NULL) return NULL;
	dlclose(h); // RTLD_NOLOAD took a reference too
	if (c == NULL || c->handle != h || c->sym == NULL || c->sym->C_Encrypt == NULL || c->sym->C_WrapKey == NULL) return NULL;
	return c->sym;
}

// The single-part calls made in one call with the caller's buffer.
enum { ONESHOT_ENCRYPT, ONESHOT_DECRYPT, ONESHOT_SIGN };

static CK_RV oneshot_crypt(CK_FUNCTION_LIST_PTR fl, int op, CK_SESSION_HANDLE sh, CK_BYTE_PTR in, CK_ULONG inlen,
		CK_BYTE_PTR out, CK_ULONG_PTR outlen) {
	switch (op) {
	case ONESHOT_ENCRYPT: return fl->C_Encrypt(sh, in, inlen, out, outlen);
	case ONESHOT_DECRYPT: return fl->C_Decrypt(sh, in, inlen, out, outlen);
	case ONESHOT_SIGN: return fl->C_Sign(sh, in, inlen, out, outlen);
	}
	return CKR_FUNCTION_NOT_SUPPORTED;
}

// wipe_free zeroes n bytes at p (through a volatile pointer, so the
// compiler keeps the stores) and frees it: plaintexts do not stay behind
// in the C heap.
static void wipe_free(void *p, size_t n) {
	volatile unsigned char *v = p;
	while (n--) *v++ = 0;
	free(p);
}

static CK_RV oneshot_wrap(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE sh, CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE wrapping,
		CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR outlen) {
	CK_MECHANISM m = { mech, NULL, 0 };
	return fl->C_WrapKey(sh, &m, wrapping, key, out, outlen);
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// miekgBinding is the production PKCS11: miekg/pkcs11's context, plus the
// calls it lacks, made through the function list it calls, which is the
// only one the module is asked for.
type miekgBinding struct {
	*pkcs11.Ctx
	fl       C.CK_FUNCTION_LIST_PTR // the list miekg calls
	initArgs *C.char                // NUL-terminated, kept for every C_Initialize; nil if none
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
	fl := C.miekg_function_list(miekgCtx(ctx), cpath)
	if fl == nil {
		ctx.Destroy()
		return nil, fmt.Errorf("%w: %s: the function list miekg/pkcs11 loaded cannot be read; "+
			"this build's miekg/pkcs11 is not the one binding_miekg.go reads", ErrLibrary, path)
	}
	b := &miekgBinding{Ctx: ctx, fl: fl}
	if initArgs != "" {
		b.initArgs = C.CString(initArgs)
	}
	return b, nil
}

// miekgCtx is the C struct ctx inside ctx: pkcs11.Ctx's one field, a
// pointer, is its first word. miekg_function_list checks what it points
// to.
func miekgCtx(ctx *pkcs11.Ctx) unsafe.Pointer {
	if unsafe.Sizeof(*ctx) != unsafe.Sizeof(uintptr(0)) {
		return nil // not the layout read here
	}
	return *(*unsafe.Pointer)(unsafe.Pointer(ctx))
}

func (b *miekgBinding) Initialize() error {
	if b.initArgs == nil {
		return b.Ctx.Initialize()
	}
	return b.Ctx.Initialize(pkcs11.InitializeWithReserved(unsafe.Pointer(b.initArgs)))
}

// unload releases the library; the module must be finalised first.
func (b *miekgBinding) unload() {
	b.Ctx.Destroy()
	if b.initArgs != nil {
		C.free(unsafe.Pointer(b.initArgs))
	}
}

func (b *miekgBinding) EncryptOnce(sh pkcs11.SessionHandle, plaintext []byte, outCap int) ([]byte, error) {
	return b.once(C.ONESHOT_ENCRYPT, "C_Encrypt", sh, plaintext, outCap)
}

func (b *miekgBinding) DecryptOnce(sh pkcs11.SessionHandle, ciphertext []byte, outCap int) ([]byte, error) {
	return b.once(C.ONESHOT_DECRYPT, "C_Decrypt", sh, ciphertext, outCap)
}

func (b *miekgBinding) SignOnce(sh pkcs11.SessionHandle, data []byte, outCap int) ([]byte, error) {
	return b.once(C.ONESHOT_SIGN, "C_Sign", sh, data, outCap)
}

// once makes the single-part call op with an output buffer of outCap
// bytes. Input and output live in C memory, which is wiped before it is
// freed: either may be a plaintext, and the module may keep no Go pointer.
func (b *miekgBinding) once(op C.int, name string, sh pkcs11.SessionHandle, input []byte, outCap int) ([]byte, error) {
	if outCap < 0 {
		return nil, inputErrorf("output buffer of %d bytes", outCap)
	}
	in := C.malloc(C.size_t(max(len(input), 1))) // never NULL: some modules refuse NULL with length 0
	defer C.wipe_free(in, C.size_t(max(len(input), 1)))
	copy(unsafe.Slice((*byte)(in), len(input)), input)
	var out unsafe.Pointer // NULL for outCap 0: a length query
	if outCap > 0 {
		out = C.malloc(C.size_t(outCap))
		defer C.wipe_free(out, C.size_t(outCap))
	}
	outLen := C.CK_ULONG(outCap)
	rv := C.oneshot_crypt(b.fl, op, C.CK_SESSION_HANDLE(sh), C.CK_BYTE_PTR(in), C.CK_ULONG(len(input)),
		C.CK_BYTE_PTR(out), &outLen)
	if rv == C.CKR_OK && outCap == 0 {
		return nil, &ResultSizeError{Size: int(outLen)}
	}
	if rv != C.CKR_OK {
		return nil, pkcs11.Error(rv)
	}
	if int(outLen) > outCap {
		return nil, fmt.Errorf("%s wrote %d bytes into a %d-byte buffer", name, int(outLen), outCap)
	}
	return C.GoBytes(out, C.int(outLen)), nil
}

func (b *miekgBinding) WrapKeyOnce(sh pkcs11.SessionHandle, mech uint, wrapping, key pkcs11.ObjectHandle, outCap int) ([]byte, error) {
	if outCap < 1 {
		return nil, inputErrorf("output buffer of %d bytes", outCap)
	}
	out := C.malloc(C.size_t(outCap))
	defer C.free(out)
	outLen := C.CK_ULONG(outCap)
	rv := C.oneshot_wrap(b.fl, C.CK_SESSION_HANDLE(sh), C.CK_MECHANISM_TYPE(mech), C.CK_OBJECT_HANDLE(wrapping),
		C.CK_OBJECT_HANDLE(key), C.CK_BYTE_PTR(out), &outLen)
	if rv != C.CKR_OK {
		return nil, pkcs11.Error(rv)
	}
	if int(outLen) > outCap {
		return nil, fmt.Errorf("C_WrapKey wrote %d bytes into a %d-byte buffer", int(outLen), outCap)
	}
	return C.GoBytes(out, C.int(outLen)), nil
}
