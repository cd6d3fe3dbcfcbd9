package proxy

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// OpenAI Realtime and Gemini Live are WebSockets: with the default flags
// (an idle timeout on), upgrades got a 502, because the idle timeout wrapped
// the 101's body and took away its Write. They pass through now.
func TestWebSocketsPassWithDefaultFlags(t *testing.T) {
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	})
	base, _, _ := start(t, upstream, func(c *Config) { c.IdleTimeout = 5 * time.Minute }) // the command's default
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/v1/realtime?model=gpt-realtime", nil)
	if err != nil {
		t.Fatalf("dial through the proxy: %v (response %v)", err, resp)
	}
	defer conn.CloseNow()
	for _, msg := range []string{`{"type":"session.update"}`, `{"type":"response.create"}`} {
		if err := conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := conn.Read(ctx)
		if err != nil || string(got) != "echo: "+msg {
			t.Fatalf("got %q %v", got, err)
		}
	}
	_ = conn.Close(websocket.StatusNormalClosure, "")
}
