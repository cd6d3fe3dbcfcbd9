package wire

import (
	"net/http"
	"slices"
	"strings"
)

// KeyHeaders are the headers LLM APIs take a key or token in:
// Authorization (OpenAI and compatible servers, as "Bearer KEY"),
// x-api-key (Anthropic), api-key (Azure OpenAI), x-goog-api-key (Gemini),
// and Ocp-Apim-Subscription-Key (Azure API Management). They are matched
// in any case, and with '_' for '-' (servers behind CGI, WSGI or some
// proxies read X_Api_Key as X-Api-Key); Proxy-Authorization too.
var KeyHeaders = [...]string{"Authorization", "X-Api-Key", "Api-Key", "X-Goog-Api-Key", "Ocp-Apim-Subscription-Key", "Proxy-Authorization"}

// keyParams are the query parameters a client may put a key in, compared
// on their decoded names, in any case: Gemini's "key", OAuth's
// "access_token" and "oauth_token", Azure API Management's
// "subscription-key", and the spellings other APIs and clients use.
var keyParams = [...]string{"key", "access_token", "oauth_token", "api_key", "api-key", "apikey", "subscription-key", "subscription_key"}

// keyHeader returns the key header name names, if it is one: compared
// lower-cased, with '_' read as '-'.
func keyHeader(name string) (string, bool) {
	n := strings.ReplaceAll(strings.ToLower(name), "_", "-")
	for _, k := range KeyHeaders {
		if strings.EqualFold(n, k) {
			return k, true
		}
	}
	return "", false
}

// isSubprotocolKey reports the Realtime subprotocol that carries a key,
// in any case.
func subprotocolKey(p string) (string, bool) {
	p = strings.TrimSpace(p)
	if len(p) > len(realtimeKeyProtocol) && strings.EqualFold(p[:len(realtimeKeyProtocol)], realtimeKeyProtocol) {
		return p[len(realtimeKeyProtocol):], true
	}
	return "", false
}

// realtimeKeyProtocol starts the WebSocket subprotocol in which a browser
// sends an OpenAI Realtime key (browsers cannot set headers on a
// WebSocket): "openai-insecure-api-key.KEY".
const realtimeKeyProtocol = "openai-insecure-api-key."

// Credential is one credential a request carries.
type Credential struct {
	// Where says where it was found, for messages: a header's name, "query
	// parameter", or "Sec-WebSocket-Protocol". Never the value.
	Where string
	// Value is the secret itself: a key header's value, Authorization's
	// without its scheme, a parameter's decoded value.
	Value string
}

// Credentials returns every credential h and rawQuery carry, in every
// place a client can put one.
func Credentials(h http.Header, rawQuery string) []Credential {
	var out []Credential
	names := make([]string, 0, len(h))
	for name := range h {
		if _, ok := keyHeader(name); ok {
			names = append(names, name)
		}
	}
	slices.Sort(names) // the same order every time, for messages
	for _, name := range names {
		k, _ := keyHeader(name)
		for _, v := range h[name] {
			if k == "Authorization" || k == "Proxy-Authorization" {
				v = withoutScheme(v)
			}
			out = append(out, Credential{Where: k, Value: v})
		}
	}
	for _, v := range h.Values("Sec-Websocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if key, ok := subprotocolKey(p); ok {
				out = append(out, Credential{Where: "Sec-WebSocket-Protocol", Value: key})
			}
		}
	}
	if rawQuery != "" {
		params, _ := ParseQuery(rawQuery)
		for _, p := range params {
			if IsKeyParam(p.Name) {
				out = append(out, Credential{Where: "query parameter", Value: p.Value})
			}
		}
	}
	return out
}

// withoutScheme is an Authorization value without its scheme ("Bearer",
// in any case, or any other): the credential itself.
func withoutScheme(v string) string {
	v = strings.TrimSpace(v)
	if scheme, rest, ok := strings.Cut(v, " "); ok && scheme != "" && !strings.ContainsAny(scheme, "=") {
		return strings.TrimSpace(rest)
	}
	return v
}

// IsKeyParam reports whether a query parameter, by its decoded name, holds
// a key.
func IsKeyParam(name string) bool {
	for _, k := range keyParams {
		if strings.EqualFold(name, k) {
			return true
		}
	}
	return false
}

// HasCredentials reports whether h or rawQuery carry any credential.
func HasCredentials(h http.Header, rawQuery string) bool {
	return len(Credentials(h, rawQuery)) > 0
}

// StripCredentials removes every credential from h (which it modifies) and
// returns rawQuery without its key parameters, and the number of query
// parts it could not parse and so dropped (a part that does not parse
// cannot be told not to be a key).
func StripCredentials(h http.Header, rawQuery string) (query string, dropped int) {
	for name := range h {
		if _, ok := keyHeader(name); ok {
			delete(h, name)
		}
	}
	h.Del("Cookie") // no LLM API takes one, and it may carry a session
	if vs := h.Values("Sec-Websocket-Protocol"); len(vs) > 0 {
		var keep []string
		for _, v := range vs {
			for _, p := range strings.Split(v, ",") {
				p = strings.TrimSpace(p)
				if _, isKey := subprotocolKey(p); p != "" && !isKey {
					keep = append(keep, p)
				}
			}
		}
		h.Del("Sec-Websocket-Protocol")
		if len(keep) > 0 {
			h.Set("Sec-Websocket-Protocol", strings.Join(keep, ", "))
		}
	}
	if rawQuery == "" {
		return "", 0
	}
	params, dropped := ParseQuery(rawQuery)
	kept := params[:0]
	for _, p := range params {
		if !IsKeyParam(p.Name) {
			kept = append(kept, p)
		}
	}
	return JoinQuery(kept), dropped
}
