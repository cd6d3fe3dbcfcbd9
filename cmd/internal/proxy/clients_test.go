package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// tokenForms are the ways a client can send its token: every form the
// proxy reads a credential in, and others a client could try. Each is a
// method and a request line's target under /openai, and headers.
func tokenForms(tok string) map[string]struct {
	target string
	header []string
} {
	type form = struct {
		target string
		header []string
	}
	enc := url.QueryEscape(tok)
	path := "/openai/chat/completions"
	return map[string]form{
		"Authorization: Bearer":     {path, []string{"Authorization", "Bearer " + tok}},
		"Authorization: bearer":     {path, []string{"Authorization", "bearer " + tok}},
		"Authorization: BEARER":     {path, []string{"Authorization", "BEARER   " + tok}},
		"Authorization: Token":      {path, []string{"Authorization", "Token " + tok}},
		"Authorization, bare":       {path, []string{"Authorization", tok}},
		"x-api-key":                 {path, []string{"x-api-key", tok}},
		"api-key":                   {path, []string{"api-key", tok}},
		"x-goog-api-key":            {path, []string{"x-goog-api-key", tok}},
		"X_Api_Key":                 {path, []string{"X_Api_Key", tok}},
		"X-API-KEY":                 {path, []string{"X-API-KEY", tok}},
		"Ocp-Apim-Subscription-Key": {path, []string{"Ocp-Apim-Subscription-Key", tok}},
		"realtime in capitals":      {path, []string{"Sec-WebSocket-Protocol", "realtime, OpenAI-Insecure-Api-Key." + tok}},
		"?subscription-key=":        {path + "?subscription-key=" + enc, nil},
		"?oauth_token=":             {path + "?oauth_token=" + enc, nil},
		"realtime subprotocol":      {path, []string{"Sec-WebSocket-Protocol", "realtime, openai-insecure-api-key." + tok}},
		"?key=":                     {path + "?key=" + enc, nil},
		"?%6Bey=":                   {path + "?%6Bey=" + enc, nil},
		"?ke%79=":                   {path + "?alt=sse&ke%79=" + enc, nil},
		"?%6b%65%79=":               {path + "?%6b%65%79=" + enc, nil},
		"?KEY=":                     {path + "?KEY=" + enc, nil},
		"?Key= twice":               {path + "?Key=" + enc + "&Key=" + enc, nil},
		"?key= value escaped":       {path + "?key=" + strings.ReplaceAll(tok, "-", "%2D"), nil},
		"?access_token=":            {path + "?access_token=" + enc, nil},
		"?access%5Ftoken=":          {path + "?access%5Ftoken=" + enc, nil},
		"?api_key=":                 {path + "?api_key=" + enc, nil},
		"?apikey=":                  {path + "?apikey=" + enc, nil},
		"?api-key=":                 {path + "?api-key=" + enc, nil},
		"header and query":          {path + "?key=" + enc, []string{"x-api-key", tok}},
		"Proxy-Authorization":       {path, []string{"Authorization", "Bearer " + tok, "Proxy-Authorization", "Bearer " + tok}},
	}
}

// A token sent as ?%6Bey=TOKEN or ?ke%79=TOKEN was taken for the client's
// token, then forwarded to the upstream unchanged. Every credential is now
// judged in one reading (package wire) and removed: whatever form a client
// sends its token in, the upstream never sees it, with clients configured
// or without.
func TestClientTokenIsNeverForwardedInAnyForm(t *testing.T) {
	up := newWireLog(t, nil)
	for _, clients := range []string{"clients: [{id: app, env: TOKEN}]\n", ""} {
		base, _, _ := startRouter(t, keyedRoute(up.URL, clients, ""), map[string]string{"KEY": "sk-upstream", "TOKEN": testToken})
		for name, f := range tokenForms(testToken) {
			before := len(up.seen())
			resp := do(t, http.MethodPost, base+f.target, `{"model":"gpt-4o"}`, f.header...)
			if resp.StatusCode != 200 {
				t.Errorf("clients %q, %s: status %d, want 200", clients, name, resp.StatusCode)
				continue
			}
			got := up.seen()[before:]
			if len(got) != 1 {
				t.Fatalf("clients %q, %s: %d requests upstream", clients, name, len(got))
			}
			if spelled := strings.NewReplacer("%2D", "-", "%2d", "-").Replace(got[0]); strings.Contains(spelled, testToken) || strings.Contains(strings.ToLower(got[0]), "insecure-api-key") {
				t.Errorf("clients %q, %s: the upstream saw the token:\n%s", clients, name, got[0])
			}
			if !strings.Contains(got[0], "Authorization: Bearer sk-upstream") {
				t.Errorf("clients %q, %s: the upstream did not get the target's key:\n%s", clients, name, got[0])
			}
		}
		// What is not a credential passes as it was written.
		before := len(up.seen())
		do(t, http.MethodPost, base+"/openai/chat/completions?alt=sse&%6Bey="+testToken+"&q=a%2Fb", `{"model":"gpt-4o"}`, "Authorization", "Bearer "+testToken)
		if got := up.seen()[before:]; len(got) != 1 || !strings.HasPrefix(got[0], "POST /v1/chat/completions?alt=sse&q=a%2Fb HTTP/1.1") {
			t.Errorf("clients %q: the query was not kept as written: %q", clients, got)
		}
	}
}

// A Cookie is removed on a route that holds keys, with clients configured
// or without: no LLM API takes one, and it may carry the caller's session
// with another site (a browser adds cookies on its own).
func TestCookieIsNeverForwardedOnAKeyedRoute(t *testing.T) {
	up := newWireLog(t, nil)
	for _, clients := range []string{"clients: [{id: app, env: TOKEN}]\n", ""} {
		base, _, _ := startRouter(t, keyedRoute(up.URL, clients, ""), map[string]string{"KEY": "sk-upstream", "TOKEN": testToken})
		before := len(up.seen())
		resp := do(t, http.MethodPost, base+"/openai/chat/completions", `{"model":"gpt-4o"}`,
			"Authorization", "Bearer "+testToken, "Cookie", "session=caller-session")
		got := up.seen()[before:]
		if resp.StatusCode != 200 || len(got) != 1 {
			t.Fatalf("clients %q: status %d after %d requests upstream", clients, resp.StatusCode, len(got))
		}
		if strings.Contains(got[0], "caller-session") {
			t.Errorf("clients %q: the upstream saw the cookie:\n%s", clients, got[0])
		}
	}
}

// OpenAI Realtime from a browser sends its key as a WebSocket subprotocol:
// the upgrade goes through with the token checked and removed, and the
// upstream gets the target's key.
func TestRealtimeSubprotocolTokenIsCheckedAndRemoved(t *testing.T) {
	seen := make(chan http.Header, 1)
	up := newWireLog(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"realtime"}})
		if err != nil {
			return
		}
		_ = c.Close(websocket.StatusNormalClosure, "")
	})
	base, _, _ := startRouter(t, keyedRoute(up.URL, "clients: [{id: app, env: TOKEN}]\n", ""), map[string]string{"KEY": "sk-upstream", "TOKEN": testToken})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws := "ws" + strings.TrimPrefix(base, "http") + "/openai/realtime?model=gpt-realtime"
	_, resp, err := websocket.Dial(ctx, ws, &websocket.DialOptions{Subprotocols: []string{"realtime", "openai-insecure-api-key.wrong-token-0123456789"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a wrong token: %v, %v; want 401", err, resp)
	}
	conn, _, err := websocket.Dial(ctx, ws, &websocket.DialOptions{Subprotocols: []string{"realtime", "openai-insecure-api-key." + testToken}})
	if err != nil {
		t.Fatal(err)
	}
	conn.CloseNow()
	h := <-seen
	if p := h.Get("Sec-Websocket-Protocol"); p != "realtime" || h.Get("Authorization") != "Bearer sk-upstream" {
		t.Fatalf("the upstream got subprotocols %q and Authorization %q", p, h.Get("Authorization"))
	}
}

// Every credential a request carries must be a client's token: a known
// token does not carry an unknown key past the check. A wrong token and a
// missing one get different messages, neither saying which tokens exist.
func TestWrongAndMissingTokensAreToldApart(t *testing.T) {
	up := newWireLog(t, nil)
	base, _, _ := startRouter(t, keyedRoute(up.URL, "clients: [{id: app, env: TOKEN}]\n", ""), map[string]string{"KEY": "sk-upstream", "TOKEN": testToken})
	for name, c := range map[string]struct {
		target string
		header []string
		want   string
	}{
		"none":               {"/openai/chat/completions", nil, "no client token"},
		"empty key":          {"/openai/chat/completions", []string{"x-api-key", ""}, "no client token"},
		"wrong bearer":       {"/openai/chat/completions", []string{"Authorization", "Bearer " + testToken + "x"}, "the credential in the Authorization header is not a client token"},
		"upstream key":       {"/openai/chat/completions", []string{"X-Api-Key", "sk-upstream"}, "the credential in the X-Api-Key header is not a client token"},
		"token and a key":    {"/openai/chat/completions?key=sk-other", []string{"Authorization", "Bearer " + testToken}, "the credential in a query parameter is not a client token"},
		"token prefix":       {"/openai/chat/completions", []string{"Authorization", "Bearer " + testToken[:10]}, "is not a client token"},
		"undecodable query":  {"/openai/chat/completions?ke%zzy=" + testToken, []string{"Authorization", "Bearer " + testToken}, "does not decode"},
		"semicolon in query": {"/openai/chat/completions?a=1;key=" + testToken, []string{"Authorization", "Bearer " + testToken}, "does not decode"},
	} {
		req, _ := http.NewRequest(http.MethodPost, base+c.target, strings.NewReader(`{"model":"m"}`))
		for i := 0; i+1 < len(c.header); i += 2 {
			req.Header.Set(c.header[i], c.header[i+1])
		}
		resp, err := client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		_, _ = io.Copy(&b, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 4 || !strings.Contains(b.String(), c.want) {
			t.Errorf("%s: status %d, body %s; want %q", name, resp.StatusCode, b.String(), c.want)
		}
		for _, leak := range []string{"app", "0123456789"} {
			if strings.Contains(strings.ReplaceAll(b.String(), "application", ""), leak) {
				t.Errorf("%s: the answer says %q: %s", name, leak, b.String())
			}
		}
	}
	if n := len(up.seen()); n != 0 {
		t.Fatalf("the upstream got %d requests", n)
	}
}

// A token sent as a chunked body's trailer is never sent on: trailers of
// the client's request are dropped once its body is held. (The proxy's own
// HTTP/1.1 client, which the command uses, writes a request as it is.)
func TestClientTokenInARequestTrailerIsNotForwarded(t *testing.T) {
	up := newWireLog(t, nil)
	fc, err := ParseConfig("test.yaml", []byte(keyedRoute(up.URL, "", "")), env(map[string]string{"KEY": "sk-upstream"}))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := NewRouter(fc, Config{}) // the command's own upstream client
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(rt)
	srv.Config = NewServer(rt)
	srv.Start()
	defer srv.Close()
	base := srv.URL
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "POST /openai/chat/completions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTrailer: X-Api-Key\r\nConnection: close\r\n\r\n"+
		"12\r\n{\"model\":\"gpt-4o\"}\r\n0\r\nX-Api-Key: "+testToken+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("response %v", resp)
	}
	got := up.seen()
	if len(got) != 1 || strings.Contains(got[0], testToken) || strings.Contains(strings.ToLower(got[0]), "chunked") {
		t.Fatalf("the upstream got:\n%s", got)
	}
}
