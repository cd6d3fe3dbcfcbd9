// Package bench holds the benchmarks that compare llmretry with a bare
// http.Transport and with hashicorp/go-retryablehttp, and the overload
// simulations. It is its own module so that benchmark-only dependencies
// never reach users of the core package. Results: ../BENCHMARKS.md.
package bench
