package llmretry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"syscall"
	"time"
)

// Failure says what kind of failure an attempt had, for observers that
// count them: a field to switch on, not a message to parse.
type Failure int

const (
	// FailureNone: no failure of the attempt (a cooldown's wait).
	FailureNone Failure = iota
	// FailureStatus: an error status.
	FailureStatus
	// FailureTransport: no response came (dial, reset, timeout, ...).
	FailureTransport
	// FailureFirstEvent: a 2xx stream whose first event is an error.
	FailureFirstEvent
	// FailureStream: a 2xx stream that broke, ended or timed out before
	// its first event.
	FailureStream
)

// verdict is the decision for one attempt.
type verdict struct {
	retry   bool
	failure Failure
	// cause says in a few words what went wrong ("status 503",
	// "connection reset"); it never holds a header value.
	cause string
	// status is the HTTP status the failure stands for when it is not the
	// response's own (an error sent inside a 2xx stream); 0 otherwise.
	status int
	// wait is a server-requested wait; waitOK says there is one.
	wait   time.Duration
	src    WaitSource
	waitOK bool
	// reason is why not to retry, when retry is false for a failure.
	reason Reason
	// window, for a stop on a used-up quota, is how long until it resets,
	// when known.
	window time.Duration
}

// RetryableStatus reports whether a status code is worth retrying on its
// own: 408, 425, 429, and every 5xx except those that name a lasting
// property of the server or the network rather than a passing state: 501
// Not Implemented, 505 HTTP Version Not Supported, 506 Variant Also
// Negotiates, 508 Loop Detected, 510 Not Extended and 511 Network
// Authentication Required. So 529 (Anthropic "overloaded") and Cloudflare's
// 520-524, in front of the OpenAI and Anthropic APIs, are retried. Every
// other 4xx is not: sending the same request again gets the same answer.
func RetryableStatus(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	case http.StatusNotImplemented, http.StatusHTTPVersionNotSupported,
		http.StatusVariantAlsoNegotiates, http.StatusLoopDetected,
		http.StatusNotExtended, http.StatusNetworkAuthenticationRequired:
		return false
	}
	return code >= 500 && code <= 599
}

// StatusCodes is the built-in rule for a response's status and headers:
// below 400 it delivers; an error status is retried if RetryableStatus says
// so, after the wait the headers ask for (HeaderWait), and stopped on
// otherwise. x-should-retry, when present on an error status, overrides the
// status rule, as the official SDKs let it. It passes on an attempt with no
// response.
func StatusCodes(a Attempt) Decision {
	resp := a.Response
	if resp == nil {
		return Decision{}
	}
	if resp.StatusCode < 400 {
		return Decision{Action: Deliver}
	}
	d := Decision{Action: Stop, Failure: FailureStatus, Cause: statusCause(resp.StatusCode)}
	retry := RetryableStatus(resp.StatusCode)
	if should, ok := shouldRetryHeader(resp.Header); ok {
		retry = should
	}
	if retry {
		d.Action = Retry
		if wait, src, ok := HeaderWait(resp.Header, a.Now); ok {
			d.Wait, d.Source = wait, src
		}
	}
	return d
}

// TransportErrors is the built-in rule for an attempt that got no response:
// retry what RetryableError says is worth it, stop on the rest. It passes on
// an attempt with a response.
func TransportErrors(a Attempt) Decision {
	if a.Err == nil {
		return Decision{}
	}
	cause, ok := transportCause(a.Err)
	if !ok {
		return Decision{Action: Stop, Failure: FailureTransport} // decide names the cause
	}
	return Decision{Action: Retry, Failure: FailureTransport, Cause: cause}
}

func statusCause(code int) string {
	return "status " + strconv.Itoa(code)
}

// RetryableError reports whether a transport error (no response came) is
// worth retrying: a dial failure, a timeout, a connection reset, EOF or
// broken pipe (typically a pooled keep-alive connection the server had
// already closed), HTTP/2 GOAWAY or REFUSED_STREAM. Not: an invalid header,
// a bad URL or scheme, a TLS certificate error, too many redirects, or a
// cancelled context. Errors are told apart by type, never by message text.
func RetryableError(err error) bool {
	_, ok := transportCause(err)
	return ok
}

// transportCause names a retryable transport error; ok is false for one
// that retrying cannot fix.
func transportCause(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	if errors.Is(err, context.Canceled) {
		return "", false
	}
	if isCertificateError(err) {
		return "", false
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		// "no such host" stays that way; a failed or timed-out lookup may not.
		if dnsErr.IsNotFound {
			return "", false
		}
		return "dns lookup failed", true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return "dial failed", true
	}
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset", true
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", true
	case errors.Is(err, syscall.ECONNABORTED):
		return "connection aborted", true
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe", true
	case errors.Is(err, syscall.ENOTCONN):
		return "not connected", true
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "connection closed before a response", true
	case errors.Is(err, net.ErrClosed):
		// The server closed the connection while the request was being
		// written, and the transport's reader closed it under the writer.
		return "connection closed before a response", true
	}
	if isHTTP2Retryable(err) {
		return "http2 stream refused", true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout", true
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// A per-attempt timeout (http.Client.Timeout in Do) that is not
		// the caller's own deadline; the caller's is checked before this.
		return "timeout", true
	}
	return "", false
}

func isCertificateError(err error) bool {
	var (
		verifyErr    *tls.CertificateVerificationError
		unknownAuth  x509.UnknownAuthorityError
		hostnameErr  x509.HostnameError
		invalidErr   x509.CertificateInvalidError
		recordHdrErr tls.RecordHeaderError
	)
	return errors.As(err, &verifyErr) || errors.As(err, &unknownAuth) ||
		errors.As(err, &hostnameErr) || errors.As(err, &invalidErr) ||
		errors.As(err, &recordHdrErr)
}

const h2RefusedStream = 0x7

// isHTTP2Retryable reports REFUSED_STREAM (the server never processed the
// stream) and GOAWAY. Their error types are unexported in net/http
// (http2StreamError, http2GoAwayError) and have no exported counterpart in
// the standard library, so they are recognised by type name and field, as
// are golang.org/x/net/http2's StreamError and GoAwayError. The integration
// tests prove the names on the wire.
func isHTTP2Retryable(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		v := reflect.ValueOf(e)
		if v.Kind() == reflect.Pointer && !v.IsNil() {
			v = v.Elem()
		}
		if v.Kind() != reflect.Struct {
			continue
		}
		switch v.Type().Name() {
		case "http2GoAwayError", "GoAwayError":
			return true
		case "http2StreamError", "StreamError":
			if code := v.FieldByName("Code"); code.IsValid() && code.CanUint() && code.Uint() == h2RefusedStream {
				return true
			}
		}
	}
	return false
}
