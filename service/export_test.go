package service

import "io"

// SetLogOutput moves the logs of services built after it, for a test.
func SetLogOutput(w io.Writer) (restore func()) {
	old := logOutput
	logOutput = w
	return func() { logOutput = old }
}

// FindSelf is findSelf, for a test.
var FindSelf = findSelf

// RedactURLs is redactURLs, for the fuzzer.
var RedactURLs = redactURLs
