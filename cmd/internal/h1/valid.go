package h1

import (
	"fmt"
	"net/http"
)

// validate refuses what net/http's Transport refuses before writing: a
// missing host, a method or header name that is not a token, a header value
// with control characters (which Request.Write would not stop: a newline in
// a value must not become a header of its own). Errors name the header,
// never its value, which may be a secret.
func validate(req *http.Request) error {
	if req.URL.Host == "" {
		return errMissingHost
	}
	if req.Method != "" && !isToken(req.Method) {
		return fmt.Errorf("net/http: invalid method %q", req.Method)
	}
	if err := validHeaders("header", req.Header); err != nil {
		return err
	}
	return validHeaders("trailer", req.Trailer)
}

func validHeaders(kind string, h http.Header) error {
	for k, vv := range h {
		if !isToken(k) {
			return fmt.Errorf("net/http: invalid %s field name %q", kind, k)
		}
		for _, v := range vv {
			if hasCTL(v) {
				return fmt.Errorf("net/http: invalid %s field value for %q", kind, k)
			}
		}
	}
	return nil
}

// hasCTL reports a control character other than tab, byte by byte: every
// header of every plain-HTTP request passes here.
func hasCTL(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return true
		}
	}
	return false
}

// isToken reports whether s is an RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenByte[s[i]] {
			return false
		}
	}
	return true
}

var tokenByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()
