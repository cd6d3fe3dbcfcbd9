package redisstate

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry"
)

// Two processes (here, two States in one program) share one budget through
// Redis: in a full outage, the retries of the whole fleet stay within one
// budget's reserve, whichever process makes them. In a real program each
// process makes one State, with Addr pointing at your Redis, and calls
// Start, which syncs every SyncInterval (100 ms); this example uses the
// redis-server the tests started, and syncs by hand so its figures are
// exact.
func Example() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable) // a full outage
	}))
	defer srv.Close()

	ctx := context.Background()
	name := fmt.Sprintf("example-%d", time.Now().UnixNano()) // a fleet of its own for this run
	var states []*State
	var clients []*http.Client
	for range 2 {
		rc := redis.NewClient(&redis.Options{Addr: redisAddr})
		defer rc.Close()
		st, err := New(Config{Client: rc, Name: name, Budget: llmretry.BudgetConfig{Reserve: 4}})
		if err != nil {
			fmt.Println(err)
			return
		}
		states = append(states, st)
		fast := llmretry.WithPolicy(llmretry.Policy{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond})
		clients = append(clients, &http.Client{Transport: llmretry.NewTransport(nil, llmretry.WithBudget(st), llmretry.WithCooldowns(st), fast)})
	}
	for _, st := range []*State{states[0], states[1], states[0]} { // each sees the other
		_ = st.Sync(ctx)
	}
	for i := range 10 {
		if resp, err := clients[i%2].Get(srv.URL); err == nil {
			resp.Body.Close()
		}
	}
	for _, st := range []*State{states[0], states[1], states[0]} { // publish, then read the fleet's totals
		_ = st.Sync(ctx)
	}
	c := states[0].Counts()
	fmt.Println(c.Requests, "requests,", c.Retries, "retries across the fleet")
	// Output: 10 requests, 4 retries across the fleet
}
