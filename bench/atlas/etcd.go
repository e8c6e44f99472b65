package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// etcdBin is Debian's etcd (package etcd-server).
const etcdBin = "/usr/bin/etcd"

// ensureEtcd installs etcd-server with apt-get when etcdBin is missing.
func ensureEtcd(ctx context.Context) error {
	if _, err := os.Stat(etcdBin); err == nil {
		return nil
	}
	progress("installing etcd-server (apt-get)")
	cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "etcd-server")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get install -y etcd-server: %v\n%s", err, out)
	}
	if _, err := os.Stat(etcdBin); err != nil {
		return fmt.Errorf("%s still missing after apt-get install etcd-server", etcdBin)
	}
	return nil
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// etcdCluster is a 3-member etcd cluster of processes on loopback.
type etcdCluster struct {
	members   []*atlasProc
	endpoints []string // host:port of the client URLs
}

func (c *etcdCluster) stop() {
	for _, m := range c.members {
		m.stop()
	}
}

// startEtcd starts the cluster with its data under dir and waits until
// every member reports itself healthy.
func startEtcd(ctx context.Context, dir string) (*etcdCluster, error) {
	const n = 3
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("bench%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	c := &etcdCluster{}
	for i := range n {
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		args := []string{
			"--name", fmt.Sprintf("bench%d", i),
			"--data-dir", filepath.Join(dir, fmt.Sprintf("etcd%d", i)),
			"--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer,
			"--listen-client-urls", client,
			"--advertise-client-urls", client,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", "atlas-bench",
		}
		p, err := spawn(etcdBin, args, filepath.Join(dir, fmt.Sprintf("etcd%d.log", i)))
		if err != nil {
			c.stop()
			return nil, err
		}
		c.members = append(c.members, p)
		c.endpoints = append(c.endpoints, strings.TrimPrefix(client, "http://"))
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for _, ep := range c.endpoints {
		for {
			ok := false
			if resp, err := hc.Get("http://" + ep + "/health"); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				ok = resp.StatusCode == http.StatusOK && strings.Contains(string(b), `"true"`)
			}
			if ok {
				break
			}
			for _, m := range c.members {
				if err := m.alive(); err != nil {
					c.stop()
					return nil, fmt.Errorf("etcd member: %v", err)
				}
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				c.stop()
				return nil, fmt.Errorf("etcd at %s not healthy in 30s", ep)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return c, nil
}
