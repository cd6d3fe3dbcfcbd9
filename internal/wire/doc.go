// Package wire reads what a request carries that llmretry must judge the
// same way wherever it looks: the credentials a client can put in it, its
// query, its path's segments, and the model its JSON body names. The
// failover Transport and the proxy both use it, so that a token the proxy
// checks is the token the Transport removes, and a path the proxy lets
// through is the path the Transport sends.
//
// It imports the standard library only, as the core package does.
package wire
