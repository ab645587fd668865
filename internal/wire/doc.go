// Package wire holds the plugin's formats: what a request or a response
// carries, independent of keys, storage and tokens. It parses and writes
// Transit's versioned strings (vault:v<N>:<base64>), builds the AAD a
// ciphertext is bound to, encodes public keys (PEM, JWK, raw Ed25519),
// parses and checks JWKs and PEM public keys, and keeps the one registry of
// hash names.
//
// It imports nothing of the plugin and nothing of Vault, so its tests and
// fuzz targets run on a machine with no PKCS#11 module. What a parsed value
// means to the plugin (which key type a JWK becomes, which version a
// ciphertext opens) is decided by the caller.
package wire
