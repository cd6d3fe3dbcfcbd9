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

// Two processes (here, two States in one program) share one budget and
// their health marks through Redis: in a full outage, the retries of the
// whole fleet stay within one budget's reserve, whichever process makes
// them; and a key one process finds out of quota rests for the other too.
// In a real program each process makes one State, with Addr pointing at
// your Redis, gives it to its Transports with llmretry.WithBudget and
// llmretry.WithHealthStore, and calls Start, which syncs every
// SyncInterval (100 ms); this example uses the redis-server the tests
// started, and syncs by hand so its figures are exact.
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
		clients = append(clients, &http.Client{Transport: llmretry.NewTransport(nil, llmretry.WithBudget(st), fast)})
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

	// What a Transport of the first process marks (here, by hand: a key
	// whose quota is used up), the second knows after a sync.
	quota := llmretry.Mark{Kind: llmretry.MarkQuota, Scheme: "https", Host: "api.openai.com", Key: "3f2a9c"}
	states[0].Put(quota, time.Now().Add(time.Hour))
	for _, st := range states {
		_ = st.Sync(ctx)
	}
	fmt.Println("the second process rests the key:", !states[1].Until(quota).IsZero())
	// Output:
	// 10 requests, 4 retries across the fleet
	// the second process rests the key: true
}
