package llmretry

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Reason says why retrying stopped.
type Reason int

const (
	// ReasonExhausted: every attempt the Policy allows was made.
	ReasonExhausted Reason = iota + 1
	// ReasonNotRetryable: the failure is one that retrying cannot fix
	// (a TLS certificate error, a malformed URL, a quota that is used up).
	ReasonNotRetryable
	// ReasonContextDone: the caller's context was cancelled or ran out.
	ReasonContextDone
	// ReasonDeadline: the next wait would end after the context's deadline,
	// so no wait was started.
	ReasonDeadline
	// ReasonRetryAfterTooLong: the server asked for a wait longer than
	// Policy.MaxRetryAfter.
	ReasonRetryAfterTooLong
	// ReasonBodyNotReplayable: the request body cannot be sent again
	// (no GetBody), so it got exactly one attempt.
	ReasonBodyNotReplayable
	// ReasonInvalidRequest: the request could not be sent at all (nil
	// request or URL, a header value with a control character). Nothing was
	// sent.
	ReasonInvalidRequest
	// ReasonBudget: the retry budget was spent, so the retry was skipped.
	ReasonBudget
	// ReasonUnavailable: a failover Transport had nowhere to send the
	// request: no target serves its model, or every key of those that do
	// is out. Nothing was sent.
	ReasonUnavailable
)

var reasonNames = map[Reason]string{
	ReasonExhausted:         "attempts exhausted",
	ReasonNotRetryable:      "not retryable",
	ReasonContextDone:       "context done",
	ReasonDeadline:          "wait would pass the deadline",
	ReasonRetryAfterTooLong: "server wait above MaxRetryAfter",
	ReasonBodyNotReplayable: "request body not replayable",
	ReasonInvalidRequest:    "invalid request",
	ReasonBudget:            "retry budget spent",
	ReasonUnavailable:       "no target or key available",
}

func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// Error is returned when no response can be handed to the caller. When
// retrying stops while a response is in hand, that response is returned
// instead, with its body intact, and no Error is made.
//
// Err, the last underlying error, is reachable with errors.Is and errors.As
// (context.Canceled, *net.OpError, ...).
type Error struct {
	// Method and URL name the request; URL carries no query string and no
	// user info, as either may hold a credential.
	Method string
	URL    string
	// Attempts is how many attempts were sent (0 when nothing was sent).
	Attempts int
	// Reason says why retrying stopped.
	Reason Reason
	// Wait is the wait that was refused, for ReasonDeadline and
	// ReasonRetryAfterTooLong.
	Wait time.Duration
	// Target is the failover target of the last attempt (or, when nothing
	// was sent, of the wait); empty without failover.
	Target string
	// Err is the last underlying error.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("llmretry: ")
	if e.Method != "" || e.URL != "" {
		b.WriteString(e.Method)
		b.WriteByte(' ')
		b.WriteString(e.URL)
		b.WriteString(": ")
	}
	switch e.Attempts {
	case 0:
		b.WriteString("nothing sent")
	case 1:
		b.WriteString("gave up after 1 attempt")
	default:
		fmt.Fprintf(&b, "gave up after %d attempts", e.Attempts)
	}
	b.WriteString(" (")
	b.WriteString(e.Reason.String())
	if e.Wait > 0 {
		fmt.Fprintf(&b, ": %v", e.Wait)
	}
	b.WriteByte(')')
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(errorText(e.Err))
	}
	return b.String()
}

// Timeout reports whether the last underlying error was a timeout, so that
// code checking net.Error on the *url.Error an http.Client returns still
// sees one.
func (e *Error) Timeout() bool {
	var t interface{ Timeout() bool }
	return errors.As(e.Err, &t) && t.Timeout()
}

// Unwrap returns the last underlying error.
func (e *Error) Unwrap() error { return e.Err }

// errorText is err's message without the URL that a *url.Error repeats:
// the URL's query may hold an API key (Gemini's ?key=).
func errorText(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Op + ": " + ue.Err.Error()
	}
	return err.Error()
}

// scrubError returns err with no query string or user info left anywhere
// in its chain: every *url.Error (which http.Client wraps around any
// failure, with the full URL, ?key= included) is rebuilt with a redacted
// URL. It runs on each error as it comes back from an attempt, before the
// error reaches an Error, an event or a log, so that neither Unwrap, %+v
// nor errors.As can find the secret later.
func scrubError(err error) error {
	var ue *url.Error
	if err == nil || !errors.As(err, &ue) {
		return err
	}
	if top, ok := err.(*url.Error); ok {
		return &url.Error{Op: top.Op, URL: redactRawURL(top.URL), Err: scrubError(top.Err)}
	}
	// A *url.Error under a wrapper of some other type, which cannot be
	// rebuilt: keep its text, redacted, and what the *url.Error wrapped.
	inner := scrubError(ue.Err)
	msg := strings.ReplaceAll(err.Error(), ue.URL, redactRawURL(ue.URL))
	if u, perr := url.Parse(ue.URL); perr != nil || u.RawQuery != "" && strings.Contains(msg, u.RawQuery) ||
		u.User != nil && strings.Contains(msg, u.User.String()) {
		msg = errorText(inner) // the URL appeared in some other form: keep none of it
	}
	return &scrubbedError{msg: msg, err: inner}
}

// scrubbedError stands for an error whose chain held a URL with a secret.
type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// redactRawURL is redactURL for a URL in text form.
func redactRawURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return redactURL(u)
}

// redactURL renders u without user info, query or fragment.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	return u.Scheme + "://" + u.Host + u.EscapedPath()
}
