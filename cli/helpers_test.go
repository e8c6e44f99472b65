package cli_test

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func writeFile(path, body string) error { return os.WriteFile(path, []byte(body), 0o600) }

func runWithFile(t *testing.T, url string, args ...string) (string, string, int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "in.json")
	if err := writeFile(path, args[len(args)-1]); err != nil {
		t.Fatal(err)
	}
	args[len(args)-1] = path
	return run(t, url, args...)
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
