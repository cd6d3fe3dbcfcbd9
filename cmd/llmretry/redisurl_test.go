package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// A --redis URL that did not parse was printed whole, password included,
// and go-redis's reason was dropped. Now the part between :// and the
// last @ is blanked, and the reason is the parser's own, from the inner
// error (a *url.Error quotes the whole URL).
func TestRedisURLThatDoesNotParseShowsNoPassword(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"redis://user:s3cret-Pa55@localhost:63x79/0", `--redis "redis://xxxxx@localhost:63x79/0": want redis://HOST:PORT/DB (or rediss:// for TLS); it does not parse: invalid port ":63x79" after host`},
		{"redis://:s3cret-Pa55@localhost:6379/zero", `--redis "redis://xxxxx@localhost:6379/zero": want redis://HOST:PORT/DB (or rediss:// for TLS); invalid database number: "zero"`},
		{"redis://:s3cret%zzPa55@localhost:6379/0", `--redis "redis://xxxxx@localhost:6379/0": want redis://HOST:PORT/DB (or rediss:// for TLS); it does not parse: invalid URL escape "xxxxx"`},
		{"mysql://root:s3cret-Pa55@db/0", `--redis "mysql://xxxxx@db/0": want redis://HOST:PORT/DB (or rediss:// for TLS); it has scheme "mysql"`},
		{"s3cret-Pa55@localhost", `--redis "xxxxx@localhost": want redis://HOST:PORT/DB (or rediss:// for TLS); it has no scheme`},
		{"redis://a@b:s3cret-Pa55@localhost:x/0", `--redis "redis://xxxxx@localhost:x/0"`},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"proxy", "--upstream", "http://127.0.0.1:1", "--redis", tc.url}, &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) || strings.Contains(stderr.String(), "s3cret") || strings.Contains(stderr.String(), "Pa55") {
			t.Errorf("%s: exit %d, stderr:\n%s\nwant %s", tc.url, code, stderr.String(), tc.want)
		}
	}
}
