//go:build !unix

package main

// smallStacks does nothing where a process cannot execute itself again in
// place (stackstart.go).
func smallStacks([]string) {}
