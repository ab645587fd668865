package hsm

/*
#include <stdlib.h>
#include <string.h>

#include "pkcs11_cgo.h"
*/
import "C"

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// gcmParams is a CK_GCM_PARAMS whose IV and AAD live in C memory owned
// here, passed to the module as plain parameter bytes. A token that
// ignores the caller's IV may write its own into that buffer (AWS
// CloudHSM does); IV reads it back. Keeping the structure in the
// mechanism's visible bytes (miekg's GCMParams hides them) also lets a
// test token behave like such an HSM.
type gcmParams struct {
	c *C.CK_GCM_PARAMS
}

func newGCMParams(iv, aad []byte, tagBits int) *gcmParams {
	p := (*C.CK_GCM_PARAMS)(C.calloc(1, C.sizeof_CK_GCM_PARAMS))
	p.pIv = (C.CK_BYTE_PTR)(C.CBytes(iv))
	p.ulIvLen = C.CK_ULONG(len(iv))
	p.ulIvBits = C.CK_ULONG(len(iv) * 8)
	if len(aad) > 0 {
		p.pAAD = (C.CK_BYTE_PTR)(C.CBytes(aad))
		p.ulAADLen = C.CK_ULONG(len(aad))
	}
	p.ulTagBits = C.CK_ULONG(tagBits)
	return &gcmParams{c: p}
}

// mechanism is CKM_AES_GCM with these parameters; the parameters must
// outlive the operation (until C_Encrypt or C_Decrypt returned).
func (g *gcmParams) mechanism() []*pkcs11.Mechanism {
	raw := C.GoBytes(unsafe.Pointer(g.c), C.sizeof_CK_GCM_PARAMS)
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, raw)}
}

// IV returns the IV buffer's content now: the caller's, or the one the
// token wrote there.
func (g *gcmParams) IV() []byte {
	return C.GoBytes(unsafe.Pointer(g.c.pIv), C.int(g.c.ulIvLen))
}

func (g *gcmParams) free() {
	C.free(unsafe.Pointer(g.c.pIv))
	if g.c.pAAD != nil {
		C.free(unsafe.Pointer(g.c.pAAD))
	}
	C.free(unsafe.Pointer(g.c))
}
