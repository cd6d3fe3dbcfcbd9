// Package release checks that the project can be released as its own
// modules: its test publishes this checkout's modules to a temporary
// file:// module proxy, as tagging a release would, then installs the
// command and builds a program that imports the library from there, with
// the workspace off. It also checks that every module is tidy on its own.
// RELEASING.md gives the steps it stands in for.
package release
