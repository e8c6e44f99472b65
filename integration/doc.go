// Package integration holds end-to-end tests: the real switchboard binary,
// started as processes on 127.0.0.1, killed and restarted.
package integration
