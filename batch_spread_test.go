package hsmkms

import (
	"context"
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// The items of one batch run on several sessions at once (a network HSM
// answers them in parallel), and still come back in input order with each
// failure in its own item: one bad item in the middle of 1,000.
func TestBatchItemsSpreadOverSessionsKeepOrderAndErrors(t *testing.T) {
	m, ft := faultyMount(t)
	m.mustOK(logical.UpdateOperation, "config", map[string]interface{}{"pool_size": 8, "batch_concurrency": 8})
	client, _, err := m.b.hsmClient(context.Background(), m.storage)
	if err != nil {
		t.Fatal(err)
	}
	if open := client.Stats().Open; open > 2 {
		t.Fatalf("%d sessions open before the batch; the test needs few", open)
	}
	ft.SetLatency(time.Millisecond) // every call a network round trip
	const n, bad = 1000, 500
	items := make([]interface{}, n)
	for i := range items {
		items[i] = map[string]interface{}{"plaintext": base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("item %d", i))), "reference": fmt.Sprint(i)}
	}
	items[bad] = map[string]interface{}{"plaintext": "not base64!", "reference": fmt.Sprint(bad)}
	resp, err := m.do(logical.UpdateOperation, "encrypt/default", map[string]interface{}{"batch_input": items, "partial_failure_response_code": 200})
	if err != nil {
		t.Fatal(err)
	}
	results := batchResultsOf(t, resp)
	if len(results) != n {
		t.Fatalf("%d results for %d items", len(results), n)
	}
	decryptItems := make([]interface{}, 0, n-1)
	for i, r := range results {
		if r.Reference != fmt.Sprint(i) {
			t.Fatalf("result %d carries reference %v", i, r.Reference)
		}
		if (i == bad) != (r.Error != "") {
			t.Fatalf("result %d: error %q", i, r.Error)
		}
		if i != bad {
			decryptItems = append(decryptItems, map[string]interface{}{"ciphertext": r.Ciphertext, "reference": fmt.Sprint(i)})
		}
	}
	if open := client.Stats().Open; open < 2 {
		t.Fatalf("the batch ran on %d session: its items did not spread over the pool", open)
	}
	resp = m.mustOK(logical.UpdateOperation, "decrypt/default", map[string]interface{}{"batch_input": decryptItems})
	for _, r := range batchResultsOf(t, resp) {
		var i int
		if _, err := fmt.Sscan(r.Reference, &i); err != nil {
			t.Fatal(err)
		}
		if got, _ := base64.StdEncoding.DecodeString(r.Plaintext); string(got) != fmt.Sprintf("item %d", i) {
			t.Fatalf("item %d decrypted to %q", i, got)
		}
	}
}
