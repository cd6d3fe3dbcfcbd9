package main

import "strings"

// withSmallStacks returns env with adaptivestackstart=0 added to its
// GODEBUG, and whether it added it: not when GODEBUG already sets
// adaptivestackstart, to either value.
func withSmallStacks(env []string) ([]string, bool) {
	const setting = "adaptivestackstart"
	out := make([]string, 0, len(env)+1)
	godebug := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			godebug = v
			continue
		}
		out = append(out, kv)
	}
	for kv := range strings.SplitSeq(godebug, ",") {
		if k, _, _ := strings.Cut(strings.TrimSpace(kv), "="); k == setting {
			return env, false
		}
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+setting+"=0"), true
}
