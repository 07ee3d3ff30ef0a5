package main

import (
	"os"
	"strings"
)

// envOr returns the environment variable's value, or def when it is unset;
// the managed plugin's settable env reaches the daemon this way.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// envList is envOr for a comma-separated list.
func envList(name string, def []string) []string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return strings.Split(v, ",")
	}
	return def
}
