package llmretry

import (
	"crypto/sha256"
	"net/http"

	"github.com/llmretry/llmretry/internal/wire"
)

// What a request names that its health is kept by: the model (rate
// limits, denials and renames are per model) and the caller's credential
// (a plain Transport's cooldowns are per key). Both are read at most once
// per request, and only when something needs them: a plain request that no
// cooldown concerns reads neither.

// modelName is the model the request names, read once: from a Gemini
// path, or the JSON body's top-level "model" (a fresh copy from GetBody,
// never the body being sent).
func (j *journey) modelName() string {
	if !j.modelRead {
		j.modelRead = true
		j.model = j.readModel()
	}
	return j.model
}

func (j *journey) readModel() string {
	if name, _ := wire.ModelInPath(j.req.URL.EscapedPath()); name != "" {
		return name
	}
	req := j.req
	if req.Body == nil || req.Body == http.NoBody || req.GetBody == nil || !jsonBody(req) {
		return ""
	}
	body, err := req.GetBody()
	if err != nil {
		return ""
	}
	defer body.Close()
	bm, err := wire.ReadModel(body)
	if err != nil || bm.Problem != "" {
		return ""
	}
	j.body = bm
	return bm.Name
}

// callerCred is Mark.Key of the caller's own credentials, read once.
func (j *journey) callerCred() string {
	if !j.credRead {
		j.credRead = true
		creds := wire.Credentials(j.req.Header, j.req.URL.RawQuery)
		if len(creds) > 0 {
			h := sha256.New()
			for _, c := range creds {
				writeCredential(h, c.Where, c.Value)
			}
			j.cred = credentialSum(h)
		}
	}
	return j.cred
}
