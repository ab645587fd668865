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

func (c *HTTPClient) do(ctx context.Context, method, path string, body []byte) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/v1/"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("X-Vault-Token", c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body) // drained, so the connection is reused
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d %.200s", method, path, resp.StatusCode, data)
	}
	return nil
}

// Post sends a JSON body and expects 200.
func (c *HTTPClient) Post(ctx context.Context, path string, body []byte) error {
	return c.do(ctx, http.MethodPost, path, body)
}

// Get expects 200.
func (c *HTTPClient) Get(ctx context.Context, path string) error {
	return c.do(ctx, http.MethodGet, path, nil)
}

// PostJSON sends a body and returns the decoded response, for setup.
func (c *HTTPClient) PostJSON(ctx context.Context, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/"+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		return nil, fmt.Errorf("POST %s: %d %.300s", path, resp.StatusCode, data)
	}
	return data, nil
}

func (c *HTTPClient) getJSON(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/"+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d", path, resp.StatusCode)
	}
	return data, nil
}
