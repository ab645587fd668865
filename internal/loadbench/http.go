package loadbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// HTTPClient sends Vault API requests over kept-alive connections.
type HTTPClient struct {
	base  string
	token string
	http  *http.Client
}

// NewHTTPClient keeps up to conns idle connections to addr.
func NewHTTPClient(addr, token string, conns int) *HTTPClient {
	tr := &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute}
	return &HTTPClient{base: addr, token: token, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// send makes one request and returns the body of a 2xx answer.
func (c *HTTPClient) send(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/v1/"+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body) // drained, so the connection is reused
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return nil, fmt.Errorf("%s %s: %d %.300s", method, path, resp.StatusCode, data)
	}
	return data, nil
}

// Post sends a JSON body and expects success.
func (c *HTTPClient) Post(ctx context.Context, path string, body []byte) error {
	_, err := c.send(ctx, http.MethodPost, path, body)
	return err
}

// Get expects success.
func (c *HTTPClient) Get(ctx context.Context, path string) error {
	_, err := c.send(ctx, http.MethodGet, path, nil)
	return err
}

// PostJSON sends a body and returns the response body, for setup.
func (c *HTTPClient) PostJSON(ctx context.Context, path string, body []byte) ([]byte, error) {
	return c.send(ctx, http.MethodPost, path, body)
}

func (c *HTTPClient) getJSON(ctx context.Context, path string) ([]byte, error) {
	return c.send(ctx, http.MethodGet, path, nil)
}
