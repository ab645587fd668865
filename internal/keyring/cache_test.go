package keyring

import (
	"errors"
	"testing"
)

type value struct{ n int }

func TestCacheFillsOnMissAndServesAfter(t *testing.T) {
	var c Cache[value]
	reads := 0
	read := func() (*value, error) { reads++; return &value{1}, nil }
	for range 3 {
		v, err := c.Load("a", read)
		if err != nil || v.n != 1 {
			t.Fatalf("Load = %v, %v", v, err)
		}
	}
	if reads != 1 {
		t.Errorf("storage read %d times, want 1", reads)
	}
}

func TestCacheNeverKeepsAValueReadBeforeAPublication(t *testing.T) {
	var c Cache[value]
	// The reader reads the old value, then a writer publishes a new one
	// before the reader fills: the old value must not be cached.
	v, err := c.Load("a", func() (*value, error) {
		c.Publish("a", &value{2})
		return &value{1}, nil
	})
	if err != nil || v.n != 1 {
		t.Fatalf("Load = %v, %v (the reader gets what it read)", v, err)
	}
	got, ok := c.Get("a")
	if !ok || got.n != 2 {
		t.Fatalf("cache holds %v, want the published value 2", got)
	}
	// A removal races the same way.
	c.Publish("b", nil)
	_, _ = c.Load("b", func() (*value, error) {
		c.Publish("b", nil)
		return &value{1}, nil
	})
	if got, ok := c.Get("b"); ok {
		t.Fatalf("cache holds %v for a value removed while it was read", got)
	}
}

func TestCacheKeepsNoMissAndNoError(t *testing.T) {
	var c Cache[value]
	if v, err := c.Load("a", func() (*value, error) { return nil, nil }); v != nil || err != nil {
		t.Fatalf("Load of nothing = %v, %v", v, err)
	}
	boom := errors.New("storage down")
	if _, err := c.Load("a", func() (*value, error) { return &value{1}, boom }); !errors.Is(err, boom) {
		t.Fatalf("Load error = %v", err)
	}
	if _, ok := c.Get("a"); ok {
		t.Fatal("a failed read was cached")
	}
	c.Publish("a", &value{3})
	c.Forget()
	if _, ok := c.Get("a"); ok {
		t.Fatal("Forget kept a value")
	}
}
