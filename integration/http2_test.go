package integration

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
)

// h2cServer is a raw HTTP/2 (prior knowledge, no TLS) server that plays a
// script per request: it answers the nth request, on whatever connection
// it comes, with script[n-1] (the last repeats). Per request, not per
// connection: net/http may dial a connection it then never sends on (a
// dial it started for a request that found another), and under load it
// did, so counting connections once failed this file's tests.
type h2cServer struct {
	ln       net.Listener
	script   []h2Action
	requests atomic.Int32
}

type h2Action int

const (
	sendGoAway h2Action = iota // GOAWAY naming the stream, then close: never processed
	answerOK                   // 200 "ok"
)

func startH2C(t *testing.T, script ...h2Action) *h2cServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &h2cServer{ln: ln, script: script}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.serve(c)
			}()
		}
	}()
	return s
}

// serve handles one connection, answering each request as the script
// says.
func (s *h2cServer) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil {
		return
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		return
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			id := f.StreamID
			n := int(s.requests.Add(1))
			switch s.script[min(n, len(s.script))-1] {
			case sendGoAway:
				_ = fr.WriteGoAway(id, http2.ErrCodeNo, nil)
				return // close: the stream was named, never answered
			case answerOK:
				var hb bytes.Buffer
				enc := hpack.NewEncoder(&hb)
				_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "text/plain"})
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
				_ = fr.WriteData(id, true, []byte("ok"))
			}
		}
	}
}

func h2cClient(t *testing.T, opts ...llmretry.Option) *http.Client {
	base := &http.Transport{Protocols: new(http.Protocols)}
	base.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(base.CloseIdleConnections)
	opts = append([]llmretry.Option{llmretry.WithClock(llmretrytest.NewClock(time.Now()))}, opts...)
	return &http.Client{Transport: llmretry.NewTransport(base, opts...), Timeout: 20 * time.Second}
}

// net/http's own HTTP/2 GOAWAY error is unexported and recognised by its
// type name; this proves, on the wire, that the name still matches.
func TestHTTP2GoAwayIsRetried(t *testing.T) {
	s := startH2C(t, sendGoAway, answerOK)
	resp, err := h2cClient(t).Get("http://" + s.ln.Addr().String() + "/v1/models")
	if err != nil {
		t.Fatalf("%v (requests %d)", err, s.requests.Load())
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || string(b) != "ok" || s.requests.Load() != 2 {
		t.Fatalf("proto %s body %q requests %d", resp.Proto, b, s.requests.Load())
	}
}

// Without llmretry, the same GOAWAY reaches the caller as an error that
// RetryableError accepts.
func TestHTTP2GoAwayErrorIsRetryable(t *testing.T) {
	s := startH2C(t, sendGoAway)
	base := &http.Transport{Protocols: new(http.Protocols)}
	base.Protocols.SetUnencryptedHTTP2(true)
	defer base.CloseIdleConnections()
	_, err := (&http.Client{Transport: base}).Get("http://" + s.ln.Addr().String() + "/")
	if err == nil || !llmretry.RetryableError(err) {
		t.Fatalf("got %v (retryable %v)", err, llmretry.RetryableError(err))
	}
}

// net/http retries REFUSED_STREAM itself, on the wire, until the context
// ends, so it never reaches llmretry from http.Transport. From
// golang.org/x/net/http2's Transport it does, as this StreamError.
func TestXNetHTTP2Errors(t *testing.T) {
	cases := []struct {
		err   error
		retry bool
	}{
		{http2.StreamError{StreamID: 1, Code: http2.ErrCodeRefusedStream}, true},
		{http2.StreamError{StreamID: 1, Code: http2.ErrCodeProtocol}, false},
		//lint:ignore SA1019 deprecated, but x/net/http2's Transport still returns it
		{http2.GoAwayError{LastStreamID: 1, ErrCode: http2.ErrCodeNo}, true},
	}
	for _, tc := range cases {
		if got := llmretry.RetryableError(tc.err); got != tc.retry {
			t.Errorf("%v: retryable %v, want %v", tc.err, got, tc.retry)
		}
	}
}
