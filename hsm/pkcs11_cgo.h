/* The platform macros the OASIS PKCS#11 headers expect, then the headers:
 * included by this package's cgo files. */
#ifndef HSMKMS_PKCS11_CGO_H
#define HSMKMS_PKCS11_CGO_H
#define CK_PTR *
#ifndef NULL_PTR
#define NULL_PTR 0
#endif
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType (* name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType (* name)
#include "pkcs11.h"
#endif
