package llmretry

import (
	"net/http"
	"time"
)

// A Classifier decides on one attempt: deliver the response, retry, or
// stop. The Transport's loop is send, classify, then wait or hand over; the
// Policy, the budget and the deadline then say whether a Retry is made,
// and how long after.
//
// The built-in rules are Classifiers too, and DefaultClassifier chains
// them. To add a rule of your own, put it in front of them:
//
//	llmretry.WithClassifier(llmretry.Classifiers(myRule, llmretry.DefaultClassifier()))
//
// A Classifier must be safe for concurrent use. It runs before the response
// is handed over, so it may read the start of the body (Attempt.Body,
// Attempt.FirstEvent), which is put back for the caller.
type Classifier interface {
	Classify(a Attempt) Decision
}

// ClassifierFunc makes a function a Classifier.
type ClassifierFunc func(a Attempt) Decision

// Classify calls f.
func (f ClassifierFunc) Classify(a Attempt) Decision { return f(a) }

// Action is what a Decision says to do.
type Action int8

const (
	// Pass: no opinion; the next Classifier in the chain decides. A chain
	// that passes to its end delivers a response, and stops on an error.
	Pass Action = iota
	// Deliver: the response is an answer, not a failure; hand it over.
	Deliver
	// Retry: a failure worth trying again, if the Policy, the budget and
	// the deadline allow.
	Retry
	// Stop: a failure that retrying will not fix; hand over the response
	// (or return the error) now.
	Stop
)

var actionNames = [...]string{Pass: "pass", Deliver: "deliver", Retry: "retry", Stop: "stop"}

func (a Action) String() string {
	if a >= 0 && int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "Action(?)"
}

// Decision is a Classifier's answer. The zero Decision is Pass.
type Decision struct {
	Action Action
	// Wait, for Retry, is the wait the server asked for: a floor that
	// jitter only lengthens, and that ends retrying when it is above
	// Policy.MaxRetryAfter. Zero means the Policy's backoff. For a Stop on
	// a quota or spend limit it is how long until the quota resets, when
	// known: nothing waits on it, but a failover Transport rests the key
	// that long (zero: Failover.QuotaRest).
	Wait   time.Duration
	Source WaitSource
	// Failure and Cause describe a Retry or a Stop for events and logs.
	// Cause is a few words ("status 503: overloaded_error"); it must never
	// hold a header value or a secret. Left empty, they are filled in from
	// the attempt.
	Failure Failure
	Cause   string
	// Status is the HTTP status the failure stands for: for an error sent
	// inside a stream, the status its kind corresponds to (0: the
	// response's own).
	Status int
}

// Attempt is one attempt's outcome, as a Classifier sees it. It is only
// valid during Classify.
type Attempt struct {
	// Request is the request as sent (its body has been read).
	Request *http.Request
	// Response is the response; nil when Err is set.
	Response *http.Response
	// Err is the error of an attempt that got no response.
	Err error
	// Number is the attempt's number: 1 for the first.
	Number int
	// Now is when the attempt ended, on the Transport's Clock.
	Now time.Time

	t *Transport
}

// transport returns the Transport the attempt belongs to, or one with the
// defaults for an Attempt made by hand (in a Classifier's own tests).
func (a Attempt) transport() *Transport {
	if a.t != nil {
		return a.t
	}
	return defaultTransport()
}

// defaultTransport is the Transport a Classifier called outside of one
// (in a test, say) reads its rules from. Not inlined: a default config
// built inside Attempt.transport would sit in the frame of every caller,
// which are on the stack while a stream is held for its first output.
//
//go:noinline
func defaultTransport() *Transport { return &Transport{cfg: defaultConfig()} }

// Classifiers chains cs: each is asked in turn, and the first that does
// not Pass decides.
func Classifiers(cs ...Classifier) Classifier {
	chain := make(classifierChain, 0, len(cs))
	for _, c := range cs {
		if c != nil {
			chain = append(chain, c)
		}
	}
	return chain
}

type classifierChain []Classifier

func (ch classifierChain) Classify(a Attempt) Decision {
	for _, c := range ch {
		if d := c.Classify(a); d.Action != Pass {
			return d
		}
	}
	return Decision{}
}

// DefaultClassifier is the built-in decision, in this order:
// TransportErrors, ProviderErrors, StreamFirstEvent, then StatusCodes.
func DefaultClassifier() Classifier {
	return defaultClassifier(true, true)
}

func defaultClassifier(providerRules, firstEventPeek bool) Classifier {
	cs := []Classifier{ClassifierFunc(TransportErrors)}
	if providerRules {
		cs = append(cs, ClassifierFunc(ProviderErrors))
	}
	if firstEventPeek {
		cs = append(cs, ClassifierFunc(StreamFirstEvent))
	}
	return Classifiers(append(cs, ClassifierFunc(StatusCodes))...)
}

// WithClassifier sets the decision. It replaces the built-in rules, and
// WithoutProviderRules and WithoutFirstEventPeek with them; keep them by
// chaining DefaultClassifier() after your own rules.
func WithClassifier(c Classifier) Option {
	return func(cfg *config) {
		if c != nil {
			cfg.classifier = c
		}
	}
}

// decide runs the Transport's classifier and turns its Decision into the
// loop's verdict, filling in what a rule left out.
func (t *Transport) decide(a Attempt) verdict {
	d := t.cfg.classifier.Classify(a)
	if a.Err != nil && d.Action != Retry {
		d.Action = Stop // an error is never delivered
	}
	if d.Action == Pass || d.Action == Deliver {
		return verdict{}
	}
	if d.Failure == FailureNone {
		d.Failure = FailureStatus
		if a.Err != nil {
			d.Failure = FailureTransport
		}
	}
	if d.Cause == "" {
		switch {
		case a.Response != nil:
			d.Cause = statusCause(a.Response.StatusCode)
		default:
			d.Cause = "transport error"
		}
	}
	v := verdict{failure: d.Failure, cause: d.Cause, status: d.Status}
	if d.Action == Retry {
		v.retry = true
		if d.Wait > 0 {
			v.wait, v.src, v.waitOK = d.Wait, d.Source, true
		}
		return v
	}
	v.reason = ReasonNotRetryable
	v.window = d.Wait
	return v
}
