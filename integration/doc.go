// Package integration tests llmretry with the real provider SDKs, each
// given an *http.Client whose Transport is llmretry's, against mock servers
// that speak the SDK's wire format. It is its own module so that the SDKs
// never reach users of the core package.
package integration
