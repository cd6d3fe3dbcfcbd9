package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"

	"github.com/llmretry/llmretry/internal/wire"
)

// A client's token is judged once, by the Router, in the one reading of a
// request's credentials that the failover Transport shares (package wire):
// every place a client can put a key (the four key headers, "Bearer" in
// any case; a key or access_token query parameter, its name decoded; an
// OpenAI Realtime key in Sec-WebSocket-Protocol). With clients configured,
// each credential presented must be a client's token; then all of them are
// removed, so that no token reaches an upstream in a form the judge did
// not see. The target's key goes in their place.

// clientToken is a client's token, kept as its hash: compared in constant
// time, and never printed.
type clientToken struct {
	id  string
	sum [32]byte
}

// Messages for a request without a token and one with a wrong token.
// Neither says anything of the tokens that exist.
const (
	msgNoToken = "llmretry proxy: no client token: send the token this proxy's config gives you as the API key " +
		"(Authorization: Bearer, x-api-key, api-key or x-goog-api-key)"
	msgWrongToken = "llmretry proxy: the credential in %s is not a client token of this proxy: " +
		"send the token its config gives you as the API key, and no other key"
)

// place names where a credential was found, for msgWrongToken.
func place(where string) string {
	if where == "query parameter" {
		return "a query parameter"
	}
	return "the " + where + " header"
}

// judge reports whether the credentials in h and rawQuery let the request
// in: at least one, and each a client's token. When one is not, wrongIn
// says where it was (a header's name, never a value). Every credential is
// compared with every token, in constant time, whether or not an earlier
// one matched. An empty credential (an SDK's placeholder) counts as none.
func judge(clients []clientToken, h http.Header, rawQuery string) (wrongIn string, ok bool) {
	presented := 0
	for _, c := range wire.Credentials(h, rawQuery) {
		if c.Value == "" {
			continue
		}
		presented++
		sum := sha256.Sum256([]byte(c.Value))
		match := 0
		for _, tok := range clients {
			match |= subtle.ConstantTimeCompare(sum[:], tok.sum[:])
		}
		if match == 0 && wrongIn == "" {
			wrongIn = c.Where
		}
	}
	return wrongIn, presented > 0 && wrongIn == ""
}
