package main

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// A --redis URL may hold a password (redis://:PASSWORD@HOST:PORT/DB), and
// one that does not parse is the operator's to fix: the message shows the
// URL with its user and password blanked, and says why it does not parse
// in the parser's own words, taken from the inner error only: a
// *url.Error quotes the whole URL.

// redactRedisURL returns raw with everything between "://" (or the start,
// without one) and the last "@" replaced, and the part replaced.
func redactRedisURL(raw string) (shown, secret string) {
	at := strings.LastIndex(raw, "@")
	if at < 0 {
		return raw, ""
	}
	from := 0
	if i := strings.Index(raw, "://"); i >= 0 && i < at {
		from = i + len("://")
	}
	return raw[:from] + "xxxxx" + raw[at:], raw[from:at]
}

// redisURLProblem says what is wrong with a --redis URL that redis.ParseURL
// refused with err, without the secret it may hold.
func redisURLProblem(raw string, err error) string {
	shown, secret := redactRedisURL(raw)
	var why string
	var ue *url.Error
	switch {
	case errors.As(err, &ue):
		why = "it does not parse: " + ue.Err.Error()
	default:
		why = strings.TrimPrefix(err.Error(), "redis: ")
		if u, perr := url.Parse(raw); perr == nil && u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix" {
			why = "it has no scheme"
			if u.Scheme != "" {
				why = "it has scheme " + strconv.Quote(u.Scheme)
			}
		}
	}
	if secret != "" {
		why = strings.ReplaceAll(why, secret, "xxxxx")
		// A bad escape in the password is quoted by itself ("%zz").
		for _, q := range quoted(why) {
			if strings.Contains(secret, q) {
				why = strings.ReplaceAll(why, strconv.Quote(q), `"xxxxx"`)
			}
		}
	}
	return fmt.Sprintf("--redis %q: want redis://HOST:PORT/DB (or rediss:// for TLS); %s", shown, why)
}

// quoted returns the Go-quoted strings in s.
func quoted(s string) []string {
	var out []string
	for {
		i := strings.IndexByte(s, '"')
		if i < 0 {
			return out
		}
		q, err := strconv.QuotedPrefix(s[i:])
		if err != nil {
			return out
		}
		if u, err := strconv.Unquote(q); err == nil && u != "" {
			out = append(out, u)
		}
		s = s[i+len(q):]
	}
}
