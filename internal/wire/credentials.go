package wire

import (
	"net/http"
	"strings"
)

// KeyHeaders are the headers LLM APIs take a key or token in:
// Authorization (OpenAI and compatible servers, as "Bearer KEY"),
// x-api-key (Anthropic), api-key (Azure OpenAI), x-goog-api-key (Gemini).
var KeyHeaders = [...]string{"Authorization", "X-Api-Key", "Api-Key", "X-Goog-Api-Key"}

// keyParams are the query parameters a client may put a key in, compared
// on their decoded names, in any case: Gemini's "key", OAuth's
// "access_token", and the spellings other APIs and clients use.
var keyParams = [...]string{"key", "access_token", "api_key", "api-key", "apikey"}

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
	for _, name := range KeyHeaders {
		for _, v := range h.Values(name) {
			if name == "Authorization" {
				v = withoutScheme(v)
			}
			out = append(out, Credential{Where: name, Value: v})
		}
	}
	for _, v := range h.Values("Sec-Websocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if key, ok := strings.CutPrefix(strings.TrimSpace(p), realtimeKeyProtocol); ok {
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
	for _, name := range KeyHeaders {
		h.Del(name)
	}
	if vs := h.Values("Sec-Websocket-Protocol"); len(vs) > 0 {
		var keep []string
		for _, v := range vs {
			for _, p := range strings.Split(v, ",") {
				p = strings.TrimSpace(p)
				if p != "" && !strings.HasPrefix(p, realtimeKeyProtocol) {
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
