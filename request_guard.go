package hsmkms

import (
	"context"
	"encoding/json"
	"math"
	"strconv"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/errutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// HandleRequest checks every field's type before the framework does: the
// SDK's conversion errors quote the submitted value, which for a plaintext
// or a PIN sent as a list would put the secret in the response and the
// audit log. Whole numbers are checked for range too, so a huge
// key_version is not read as a negative one. Every request is counted in
// the mount's metrics with the status Vault answers it with.
func (b *backend) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	start := time.Now()
	route := b.Route(req.Path)
	if len(req.Data) > 0 {
		objectFieldsAsStrings(req.Data)
		if route != nil {
			if msg := checkFieldTypes(route.Fields, req.Data); msg != "" {
				resp, err := logical.ErrorResponse(msg), logical.ErrInvalidRequest
				b.metrics.observeRequest(route, req, resp, err, time.Since(start))
				return resp, err
			}
		}
	}
	resp, err := b.Backend.HandleRequest(ctx, req)
	if !b.markerDone.Load() && req.MountAccessor != "" {
		b.clientMu.RLock()
		client := b.client
		b.clientMu.RUnlock()
		if client != nil {
			b.ensureMountMarker(ctx, client, req.MountAccessor)
		}
	}
	b.metrics.observeRequest(route, req, resp, err, time.Since(start))
	return resp, err
}

// HandleExistenceCheck runs the same check first: Vault asks the existence
// check (encrypt's, for upsert) before the request, and the SDK's field
// validation there quotes the submitted value in its error as well.
func (b *backend) HandleExistenceCheck(ctx context.Context, req *logical.Request) (bool, bool, error) {
	if len(req.Data) > 0 {
		objectFieldsAsStrings(req.Data)
		if p := b.Route(req.Path); p != nil {
			if msg := checkFieldTypes(p.Fields, req.Data); msg != "" {
				return false, false, errutil.UserError{Err: msg}
			}
		}
	}
	return b.Backend.HandleExistenceCheck(ctx, req)
}

// checkFieldTypes returns a message, naming the field and never its
// value, for the first field that does not convert to its schema's type.
func checkFieldTypes(schema map[string]*framework.FieldSchema, raw map[string]interface{}) string {
	fd := &framework.FieldData{Raw: raw, Schema: schema}
	for name, value := range raw {
		s, ok := schema[name]
		if !ok {
			continue
		}
		if _, _, err := fd.GetOkErr(name); err != nil {
			return name + " must be " + typeDescription(s.Type)
		}
		if s.Type == framework.TypeInt && !fitsInt32(value) {
			return name + " is out of range"
		}
	}
	return ""
}

// jsonObjectFields are string fields that also take a JSON object (a JWK
// sent as an object rather than as a string).
var jsonObjectFields = map[string]bool{"jwk": true}

// objectFieldsAsStrings turns an object given for a jsonObjectFields field
// into its JSON text before the framework converts fields: its conversion
// error would quote the object, a private key, into the response.
func objectFieldsAsStrings(data map[string]interface{}) {
	for name := range jsonObjectFields {
		if obj, ok := data[name].(map[string]interface{}); ok {
			if b, err := json.Marshal(obj); err == nil {
				data[name] = string(b)
			} else {
				data[name] = nil
			}
		}
	}
}

func fitsInt32(v interface{}) bool {
	var f float64
	switch n := v.(type) {
	case json.Number:
		parsed, err := strconv.ParseFloat(string(n), 64)
		if err != nil {
			return true // not a number: the conversion check speaks for it
		}
		f = parsed
	case float64:
		f = n
	case int64:
		f = float64(n)
	case string:
		parsed, err := strconv.ParseFloat(n, 64)
		if err != nil {
			return true
		}
		f = parsed
	default:
		return true
	}
	return f >= math.MinInt32 && f <= math.MaxInt32
}

func typeDescription(t framework.FieldType) string {
	switch t {
	case framework.TypeString, framework.TypeLowerCaseString, framework.TypeNameString:
		return "a string"
	case framework.TypeInt, framework.TypeInt64:
		return "a whole number"
	case framework.TypeBool:
		return "true or false"
	case framework.TypeDurationSecond, framework.TypeSignedDurationSecond:
		return "a duration (seconds, or a string such as 1h)"
	case framework.TypeMap:
		return "an object"
	case framework.TypeKVPairs:
		return "an object of strings, or a list of key=value strings"
	case framework.TypeSlice, framework.TypeStringSlice, framework.TypeCommaStringSlice, framework.TypeCommaIntSlice:
		return "a list"
	}
	return "of type " + t.String()
}
