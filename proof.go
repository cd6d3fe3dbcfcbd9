package llmretry

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// What a failed attempt proves about where it went, and so how far its
// verdict reaches: every verdict is scoped to what it proves. A 401 says
// the key is invalid, for every model. A 403 or 404 that names a model, or
// a permission on one, says only that this key may not use that model. A
// 403 that concerns the request (a region block, a content policy, a
// gateway's quota) says nothing of the key. A 5xx says something of the target, a 429 of the
// key's limit for the model.

// proof is what one attempt proved.
type proof struct {
	// target: the target failed (a 5xx, a 529, a transport error, a
	// stream that broke before its output): it counts towards ejection.
	target bool
	key    keyProof
	// rest is how long the key is told to wait (keyWait), or its quota's
	// window (keyQuota; 0: Failover.QuotaRest).
	rest time.Duration
}

// keyProof is what an attempt proved about its key.
type keyProof uint8

const (
	keyNothing keyProof = iota
	// keyWait: the key was told to wait (a 429, any server wait), for the
	// request's model.
	keyWait
	// keyQuota: the key's quota or credit is used up, for every model.
	keyQuota
	// keyRefused: the key is not valid (401), for every model.
	keyRefused
	// keyDeniedModel: the key may not use the model (a 403 that names it
	// or a permission); another key may.
	keyDeniedModel
	// keyNoModel: the target does not know the model for this key (a 404
	// that names it); another target may, but no other key of this one
	// is tried for it.
	keyNoModel
)

// failedAsAKey reports a proof against the key: another key may serve.
func (p proof) failedAsAKey() bool { return p.key != keyNothing }

// prove reads what an attempt proved from its verdict and response. The
// response's body is read (a bounded peek, put back) only for a 403 or 404
// on a route that holds its keys.
func (t *Transport) prove(j *journey, resp *http.Response, v verdict) proof {
	status := v.status
	if status == 0 && resp != nil {
		status = resp.StatusCode
	}
	if v.retry {
		// A 2xx retried is a stream that failed before its output with no
		// status of its own: the target's failure, as a 5xx is.
		p := proof{target: resp == nil || status >= 500 || status < 300}
		if status == http.StatusTooManyRequests || v.waitOK {
			p.key, p.rest = keyWait, v.wait
		}
		return p
	}
	if v.reason != ReasonNotRetryable || status == 0 {
		return proof{} // a success, or a stop that is not about the attempt
	}
	switch status {
	case http.StatusUnauthorized:
		return proof{key: keyRefused}
	case http.StatusPaymentRequired, http.StatusTooManyRequests:
		return proof{key: keyQuota, rest: v.window}
	case http.StatusForbidden, http.StatusNotFound:
		if !j.rt.holdsKeys || resp == nil {
			return proof{}
		}
		body, _ := Attempt{Response: resp, t: t}.Body()
		switch denialOf(status, body, j.modelName()) {
		case deniedModel:
			return proof{key: keyDeniedModel}
		case unknownModel:
			return proof{key: keyNoModel}
		}
	}
	return proof{}
}

// denial is what a 403 or 404 is about.
type denial uint8

const (
	deniedRequest denial = iota // the request, not the key: rests nothing
	deniedModel                 // this key may not use the model
	unknownModel                // this target does not know the model
)

// denialOf reads a 403 or 404 body. From providers' documentation and
// the errors users report:
//   - OpenAI: 403 model_not_found, "Project ... does not have access to
//     model ..."; 404 model_not_found, "The model ... does not exist or you
//     do not have access to it"; 403 unsupported_country_region_territory
//     is about where the request came from.
//   - Anthropic: 403 permission_error ("Your API key does not have
//     permission to use the specified resource"); 404 not_found_error on a
//     model.
//   - Gemini: 403 PERMISSION_DENIED; 404 NOT_FOUND ("models/... is not
//     found").
//
// A 403 that is not a provider's JSON error (a CDN's or WAF's HTML page,
// Azure API Management's token quota, {"statusCode":403,...}) is about the
// request or a gateway: it rests no key; so does one about where the
// request came from (a region) or what it asked (a content policy,
// moderation). A provider's 403 that names
// nothing is taken as a permission on what the request asked for, the
// model: it rests the key for that model only, never for the others, and
// the key is rechecked. A 404 rests the key for the model only when it
// names a model; any other 404 (a wrong path) rests nothing.
func denialOf(status int, body []byte, model string) denial {
	var env errorEnvelope
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '[' { // Gemini sometimes wraps the error in a list
		var list []json.RawMessage
		if json.Unmarshal(body, &list) == nil && len(list) > 0 {
			body = list[0]
		}
	}
	if json.Unmarshal(body, &env) != nil || env.Error == nil {
		return deniedRequest
	}
	e := env.Error
	code := strings.Trim(string(e.Code), `"`)
	msg := strings.ToLower(e.Message)
	namesModel := code == "model_not_found" || strings.Contains(msg, "model") ||
		model != "" && strings.Contains(e.Message, model)
	if status == http.StatusNotFound {
		if namesModel {
			return unknownModel
		}
		return deniedRequest
	}
	switch {
	case code == "unsupported_country_region_territory",
		strings.Contains(msg, "country, region, or territory"),
		strings.Contains(msg, "region") && !namesModel:
		return deniedRequest // where the request came from
	case code == "content_policy_violation", code == "content_filter", strings.Contains(msg, "content policy"),
		strings.Contains(msg, "content management policy"), strings.Contains(msg, "safety system"),
		strings.Contains(msg, "flagged"), strings.Contains(msg, "moderation"):
		return deniedRequest // what the request asked
	}
	return deniedModel
}
