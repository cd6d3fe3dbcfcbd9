package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"slices"
	"testing"
	"testing/synctest"
)

var stormOut = flag.String("storm-out", "", "write the storm-control table to this file")

// TestStormTable runs every storm-control scenario under each policy in
// virtual time, prints the table recorded in BENCHMARKS.md, and checks the
// new budget's targets:
//
//	go test ./bench/sim -run TestStormTable -v -args -storm-out ../results/storm.md
func TestStormTable(t *testing.T) {
	scale := 1
	if testing.Short() {
		scale = 0 // no run: see below
	}
	if scale == 0 {
		t.Skip("the storm simulation is not run with -short")
	}
	const none, old, neu = 0, 1, 6
	ss := stormScenarios(scale)
	results := make([][]result, len(ss))
	// Each run is its own bubble of virtual time, independent of the
	// others: in parallel, the table takes half the wall time on two CPUs.
	// The runs the checks below read; the rest of the table (the peers'
	// columns: gRPC, AWS, Finagle, SRE, and the rows no target is set
	// for) is for BENCHMARKS.md, and runs only when the table is written
	// (-storm-out): half the test command's simulation was runs that no
	// check read.
	checked := map[string][]int{
		"independent faults 5%": {none, neu}, "independent faults 10%": {none, neu},
		"independent faults 30%": {none, neu}, "independent faults 50%": {none, neu},
		"full outage":                        {neu},
		"overload at 1.5 C (C a rate)":       {none, neu},
		"overload at 1.5 C (C in slots)":     {old, neu},
		"per-model limit: the healthy model": {none, neu},
	}
	t.Run("runs", func(t *testing.T) {
		for i, sc := range ss {
			results[i] = make([]result, len(stormPolicies))
			for j, p := range stormPolicies {
				if *stormOut == "" && !slices.Contains(checked[sc.name], j) {
					continue
				}
				t.Run(fmt.Sprintf("%d-%d", i, j), func(t *testing.T) {
					t.Parallel()
					synctest.Test(t, func(t *testing.T) { results[i][j] = runStorm(sc, p) })
				})
			}
		}
	})
	table := stormTable(ss, results)
	t.Log("\n" + table)
	if *stormOut != "" {
		if err := os.WriteFile(*stormOut, []byte(table), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// cell is a run's result; a check that reads a run the map above leaves
	// out fails here, rather than compare zeros.
	cell := func(name string, j int) result {
		for i, sc := range ss {
			if sc.name != name {
				continue
			}
			if !results[i][j].ran {
				t.Fatalf("%s under %s did not run: add it to checked", name, stormPolicies[j].name)
			}
			return results[i][j]
		}
		t.Fatalf("no scenario %q", name)
		return result{}
	}
	for _, name := range []string{"independent faults 5%", "independent faults 10%", "independent faults 30%", "independent faults 50%"} {
		n, w := cell(name, neu), cell(name, none)
		if d := math.Abs(n.success-w.success) * 100; d > 0.5 {
			t.Errorf("%s: success %.2f%% against %.2f%% without storm control: %.2f points apart, target 0.5",
				name, n.success*100, w.success*100, d)
		}
	}
	if n := cell("full outage", neu); n.attempts > 1.10+10.0/4000 {
		t.Errorf("full outage: %.3f attempts per request, target 1.10", n.attempts)
	}
	// An upstream whose capacity is a rate: the targets, met.
	n, w := cell("overload at 1.5 C (C a rate)", neu), cell("overload at 1.5 C (C a rate)", none)
	if d := (w.success - n.success) * 100; d > 1 {
		t.Errorf("overload (rate): success %.2f%% against %.2f%% without storm control, target within 1 point", n.success*100, w.success*100)
	}
	if n.attempts > 1.25 {
		t.Errorf("overload (rate): %.3f attempts per request, target at most 1.25", n.attempts)
	}
	// An upstream whose capacity is in slots: retries there fill slots that
	// Poisson arrivals leave idle, so they buy success, and the 1-point
	// target is missed (BENCHMARKS.md says by how much). Guarded: attempts
	// stay within 1.25, and success is no worse than the old budget's.
	n, o := cell("overload at 1.5 C (C in slots)", neu), cell("overload at 1.5 C (C in slots)", old)
	if n.attempts > 1.25 || n.success < o.success-0.005 {
		t.Errorf("overload (slots): %.3f attempts, %.2f%% success (old budget %.2f%%)", n.attempts, n.success*100, o.success*100)
	}
	n, w = cell("per-model limit: the healthy model", neu), cell("per-model limit: the healthy model", none)
	if n.p99 > w.p99 {
		t.Errorf("a healthy model beside a limited one waited: p99 %v against %v without cooldowns", n.p99, w.p99)
	}
}
