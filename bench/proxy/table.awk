# Turns run.sh's wrk lines into a Markdown table: for each target, plain
# and streamed, the median over rounds of its requests/s, its share of the
# same round's direct and nginx runs, and its p50/p99 over direct's.
function ms(v) {
	if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
	if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
	if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
	return v + 0
}
# median of the values of a[k, 1..n]
function median(a, k, n,    v, i, j, t) {
	for (i = 1; i <= n; i++) v[i] = a[k, i]
	for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
	return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
/^### / {
	split($3, s, "="); split($4, rp, "="); rep = rp[2] ? rp[2] : 1
	key = $2 " " s[2]; if (!(key in seen)) { seen[key] = 1; order[++n] = key }
	if (rep > reps) reps = rep
	next
}
/^ +50%/ { p50[key, rep] = ms($2) }
/^ +99%/ { p99[key, rep] = ms($2) }
/^Requests\/sec/ { rps[key, rep] = $2 }
/^CPU\/request/ { cpu[key, rep] = $2 }
/^ +(Non-2xx|Socket errors)/ { errs[key] = errs[key] " (round " rep ": " $0 ")" }
END {
	for (i = 1; i <= n; i++) {
		k = order[i]; split(k, a, " "); d = "direct " a[2]; x = "nginx " a[2]
		for (j = 1; j <= reps; j++) {
			ofd[k, j] = 100 * rps[k, j] / rps[d, j]; ofx[k, j] = 100 * rps[k, j] / rps[x, j]
			a50[k, j] = p50[k, j] - p50[d, j]; a99[k, j] = p99[k, j] - p99[d, j]
		}
	}
	print ""
	print "| target | stream | requests/s | of direct | of nginx | p50 | p99 | added p50 | added p99 | server CPU/request |"
	print "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
	for (i = 1; i <= n; i++) {
		k = order[i]; split(k, a, " ")
		c = ((k, 1) in cpu) ? sprintf("%.0f us", median(cpu, k, reps)) : "-"
		printf "| %s | %s | %.0f | %.0f%% | %.0f%% | %.2f ms | %.2f ms | %+.2f ms | %+.2f ms | %s |\n",
			a[1], (a[2] == 1 ? "yes" : "no"), median(rps, k, reps), median(ofd, k, reps), median(ofx, k, reps),
			median(p50, k, reps), median(p99, k, reps), median(a50, k, reps), median(a99, k, reps), c
	}
	print ""
	for (i = 1; i <= n; i++) if (order[i] in errs) {
		split(order[i], a, " ")
		print "wrk saw errors on " a[1] (a[2] == 1 ? ", streamed" : ", plain") ":" errs[order[i]]
	}
	print "Medians over " reps " round(s); each share and each added latency is against the same round's run."
}
