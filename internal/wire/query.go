package wire

import (
	"net/url"
	"strings"
)

// Param is one query parameter: as written, and decoded.
type Param struct {
	// Raw is the part as the client wrote it ("na%6De=v"), so that a kept
	// parameter is sent byte for byte.
	Raw string
	// Name and Value are decoded.
	Name, Value string
}

// ParseQuery splits rawQuery into its parameters, in order, decoding
// each; a part that does not decode (a bad escape, a ';', which Go's
// servers refuse as a separator) is counted in dropped and left out.
func ParseQuery(rawQuery string) (params []Param, dropped int) {
	for part := range strings.SplitSeq(rawQuery, "&") {
		if part == "" {
			continue
		}
		if strings.Contains(part, ";") {
			dropped++
			continue
		}
		rawName, rawValue, _ := strings.Cut(part, "=")
		name, err1 := url.QueryUnescape(rawName)
		value, err2 := url.QueryUnescape(rawValue)
		if err1 != nil || err2 != nil {
			dropped++
			continue
		}
		params = append(params, Param{Raw: part, Name: name, Value: value})
	}
	return params, dropped
}

// JoinQuery writes params back as a query, each as it was written.
func JoinQuery(params []Param) string {
	var b strings.Builder
	for i, p := range params {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.Raw)
	}
	return b.String()
}

// TargetQuery is the query an attempt sends to a target that holds its
// own key: the caller's parameters that parse, in their order, without
// any key parameter, and without the names the target's base URL sets;
// then the base URL's own (Azure's api-version). dropped counts the
// caller's parts that did not parse.
func TargetQuery(caller, base string) (query string, dropped int) {
	params, dropped := ParseQuery(caller)
	baseParams, _ := ParseQuery(base)
	kept := params[:0]
	for _, p := range params {
		if IsKeyParam(p.Name) || setBy(baseParams, p.Name) {
			continue
		}
		kept = append(kept, p)
	}
	return JoinQuery(append(kept, baseParams...)), dropped
}

func setBy(params []Param, name string) bool {
	for _, p := range params {
		if p.Name == name {
			return true
		}
	}
	return false
}
