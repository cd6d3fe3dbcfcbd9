package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Beyond the 128 streams the proxy leaves with net/http, a stream is
// taken from it, and its connection then serves the client's next
// request: the command serves the listener that gives taken connections
// back (proxy.Listener). Served on its bare listener, every stream beyond
// the 128 ended with Connection: close.
func TestCommandServesTheNextRequestOnATakenConnection(t *testing.T) {
	const held = 128 // proxy.DefaultKeptStreams: the streams that stay with net/http
	arrived, release := make(chan struct{}, held), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		if r.URL.Query().Get("hold") != "" {
			arrived <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	}))
	defer up.Close()
	base, _ := startCommand(t, "--upstream", up.URL+"/v1")
	addr := strings.TrimPrefix(base, "http://")
	tr := &http.Transport{MaxIdleConnsPerHost: held}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	defer wg.Wait()
	var once sync.Once
	letGo := func() { once.Do(func() { close(release) }) }
	defer letGo()
	for range held {
		wg.Go(func() {
			resp, err := c.Post(base+"/v1/chat/completions?hold=1", "application/json", strings.NewReader(`{"stream":true}`))
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	for range held {
		select {
		case <-arrived:
		case <-time.After(30 * time.Second):
			t.Fatal("the held streams did not all reach the upstream")
		}
	}

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	for i := range 2 {
		body := `{"stream":true}`
		if _, err := io.WriteString(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: "+addr+"\r\nContent-Type: application/json\r\nContent-Length: "+
			strconv.Itoa(len(body))+"\r\n\r\n"+body); err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || resp.Close || string(b) != "data: [DONE]\n\n" {
			t.Fatalf("request %d: %d close %v body %q %v: want the stream whole, its connection open", i+1, resp.StatusCode, resp.Close, b, err)
		}
	}
	letGo()
}
