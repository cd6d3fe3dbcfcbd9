// Package llmretry makes calls to LLM provider APIs (OpenAI, Anthropic,
// Gemini, Azure OpenAI, OpenRouter, any OpenAI-compatible server) survive
// rate limits, overload and network faults, without ever replaying a
// stream that has started (with the opt-in stream continuation, a broken
// stream is finished instead, and nothing the caller has is sent to it
// again).
//
// Its Transport is an http.RoundTripper that drops into any *http.Client,
// and so into every official SDK. It retries only before the response is
// handed over: once the caller holds a response, nothing is sent again for
// it. For a Server-Sent Events stream, the hand-over point is its first
// output, so an error sent before it (after message_start, say) is still
// retried.
//
// With WithStreamContinuation (opt-in), a stream that breaks after its
// first output is finished instead: the request goes upstream again with
// the delivered text as the assistant's turn, and the continuation is
// spliced into the caller's stream. Nothing the caller has received is
// sent to it again.
//
// NewFailoverTransport retries elsewhere when waiting won't help soon
// enough: another key of the same target at once after a 429 or any
// server wait; the next target at once after a failure that asked no wait
// (a 5xx, a transport error), a wait longer than Failover.Threshold, or
// AttemptsPerTarget short waits sat out; backing off where it is only with
// nowhere else to go. Each verdict rests what it proves and no more (a key
// for one model, a key, a target), never for longer than Failover.MaxRest.
// All within one API family and the same hand-over point.
//
// Where to find what:
//
//   - policy.go: Policy, its defaults, backoff with jitter
//   - hints.go: server waits (Retry-After, retry-after-ms, x-should-retry)
//   - classifier.go: the decision's public shape (Classifier, Attempt,
//     Decision) and the chain of rules
//   - classify.go: the built-in rules by status and by error type
//   - providers.go: provider rules (quota bodies, RetryInfo, reset headers)
//   - transport.go: the attempt loop that Transport and Do share
//   - wait.go: deadline-aware waiting on an injectable Clock
//   - stream.go: the commit point at a stream's first output (sse.go scans
//     events; streamfamily.go, eventrole.go and streamerror.go say what
//     each means; jsonpeek.go reads their JSON)
//   - idle.go: the idle timeout on a returned body
//   - body.go: drained discards, held bytes put back, reads under a time limit
//   - request.go: each attempt's request, and the caller's body errors
//   - budget.go: the retry budget, one rule for a process and a fleet
//   - cooldown.go: a 429's cooldown, per key and model
//   - healthstore.go: the typed marks shared between Transports and a
//     fleet (HealthStore, Mark)
//   - route.go: where requests go: a plain Transport's own target, or a
//     failover Transport's targets and keys
//   - journey.go: one request's way through its route: choosing a key and
//     target, claiming and giving back probes
//   - next.go: what follows a failed attempt, the one wait-or-go decision
//   - proof.go: what a failed attempt proves, scoped (this key for this
//     model, this key, the target, nothing)
//   - health.go, record.go: key and target health as explicit states, and
//     how each attempt moves them
//   - streamwatch.go: a handed-over stream's end, counted for its target
//   - continuation.go, splice.go, seam.go: continuing a stream that broke
//     (when, how the request is built, the caller's stream, the seam)
//   - target.go: failover's configuration (Failover, Target, Key, Family)
//   - failover.go: NewFailoverTransport, health events, and aiming an
//     attempt at a target (its URL, key and model name)
//   - model.go: the model and credential a request names, read once
//   - internal/wire: credentials, query, path and JSON body, read one way
//     for the Transport and the proxy alike
//   - errors.go: Error and its Reasons
//
// Beside it: llmretrytest (a Clock for tests), mockllm (a fault-injecting
// mock provider), redisstate (budget and health shared through Redis,
// its own module) and cmd/llmretry (proxy, mock, demo; its own module).
package llmretry
