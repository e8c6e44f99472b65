package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestREADMETutorial runs the README's tutorial block as it stands, from
// the repository root, in bash, and checks what it printed. It uses the
// default ports (4400, 4000, 4001, 5100, 5101): the only test that does.
func TestREADMETutorial(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the tutorial")
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := bytes.Cut(readme, []byte("<!-- tutorial -->\n```sh\n"))
	block, _, ok2 := bytes.Cut(rest, []byte("```\n<!-- /tutorial -->"))
	if !ok || !ok2 {
		t.Fatal("README has no tutorial block between <!-- tutorial --> markers")
	}
	root, _ := filepath.Abs("..")
	work := t.TempDir()
	script := "set -euo pipefail\ncd " + root + "\n" + string(block)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Env = append(os.Environ(), "TUTORIAL_TMP="+work, "SWITCHBOARD_SOURCE="+root)
	// Its own process group: the tutorial's background processes end with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	defer func() {
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			time.Sleep(500 * time.Millisecond)
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		for _, f := range []string{"dev.log", "identity.log", "dashboard.log"} {
			os.Remove(filepath.Join(root, f))
		}
		os.RemoveAll(filepath.Join(root, ".switchboard"))
	}()
	err = cmd.Run()
	logs := func() string {
		var b strings.Builder
		for _, f := range []string{"dev.log", "identity.log", "dashboard.log"} {
			l, _ := os.ReadFile(filepath.Join(root, f))
			b.WriteString("--- " + f + "\n" + string(l))
		}
		return b.String()
	}
	if err != nil {
		t.Fatalf("the tutorial failed: %v\n%s\n%s", err, out.String(), logs())
	}
	for _, want := range []string{`"dashboard":"teams"`, `"from":"identity-`, "identity   1", `"message":"hi from Atlas"`, "service    hello"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the tutorial's output lacks %q:\n%s\n%s", want, out.String(), logs())
		}
	}
}
