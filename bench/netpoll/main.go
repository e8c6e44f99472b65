// Command netpoll shows the order in which the Go runtime runs goroutines
// whose connections became ready together: the cause of the sidecar's
// added p99 (bench/README.md, session 6).
//
// It serves -conns connections on 127.0.0.1 with GOMAXPROCS=1, each from a
// goroutine blocked in Read. A client process (this program again, with
// -client) writes one byte to each connection in turn, a few microseconds
// apart, while the server's only P is busy; the runtime then finds them all
// ready in one poll. The program prints the order the server ran them in
// against the order they became ready, for -rounds rounds. The released
// runtime (netpoll_epoll.go pushes each onto the head of a list) runs
// them last-ready-first; bench/proxy/fifo-netpoll.sh builds a runtime that
// keeps epoll's order, for comparison:
//
//	go run ./bench/netpoll
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"time"
)

func main() {
	conns := flag.Int("conns", 32, "connections made ready together")
	rounds := flag.Int("rounds", 20, "rounds")
	client := flag.String("client", "", "(internal) be the client of this address")
	flag.Parse()
	if *client != "" {
		if err := runClient(*client, *conns, *rounds); err != nil {
			fmt.Fprintln(os.Stderr, "netpoll client:", err)
			os.Exit(1)
		}
		return
	}
	if err := runServer(*conns, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "netpoll:", err)
		os.Exit(1)
	}
}

// runClient connects n connections, then for each round waits for the go
// byte on the first one and writes a byte to every connection in order.
func runClient(addr string, n, rounds int) error {
	cs := make([]net.Conn, n)
	for i := range cs {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		cs[i] = c
	}
	ctl := bufio.NewReader(cs[0])
	for range rounds {
		if _, err := ctl.ReadByte(); err != nil {
			return err
		}
		for _, c := range cs {
			if _, err := c.Write([]byte{1}); err != nil {
				return err
			}
			spin(5 * time.Microsecond) // a distinct readiness order
		}
	}
	return nil
}

func runServer(n, rounds int) error {
	if n < 2 || rounds < 1 {
		return fmt.Errorf("-conns must be at least 2 and -rounds at least 1")
	}
	runtime.GOMAXPROCS(1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "-client", ln.Addr().String(), "-conns", fmt.Sprint(n), "-rounds", fmt.Sprint(rounds))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	cs := make([]net.Conn, n)
	for i := range cs {
		if cs[i], err = ln.Accept(); err != nil {
			return err
		}
		defer cs[i].Close()
	}
	// The client dials in order and the kernel queues them in order, so
	// accept order is dial order: connection i is the client's i-th.
	var (
		mu    sync.Mutex
		order []int
	)
	inversions, pairs, waitedBehind := 0, 0, 0
	for r := range rounds {
		order = order[:0]
		var wg sync.WaitGroup
		for i, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var b [1]byte
				if _, err := c.Read(b[:]); err != nil {
					return
				}
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
			}()
		}
		runtime.Gosched() // let every reader block in Read
		if _, err := cs[0].Write([]byte{0}); err != nil {
			return err
		}
		// Hold the only P while the client writes, so that the runtime
		// finds every connection ready at its next poll.
		spin(time.Duration(n)*20*time.Microsecond + 2*time.Millisecond)
		wg.Wait()
		if len(order) != n {
			return fmt.Errorf("round %d: %d of %d connections read", r, len(order), n)
		}
		for a := range order {
			for b := a + 1; b < n; b++ {
				pairs++
				if order[a] > order[b] {
					inversions++
				}
			}
		}
		for pos, i := range order {
			if i == 0 {
				waitedBehind += pos
			}
		}
		if r == 0 {
			fmt.Printf("round 1: ran %v (ready in the order 0..%d)\n", order, n-1)
		}
	}
	fmt.Printf("%s, %d connections ready together, %d rounds:\n", runtime.Version(), n, rounds)
	fmt.Printf("  pairs run in the reverse of their ready order: %.0f%% (0%% = first ready, first run)\n", 100*float64(inversions)/float64(pairs))
	fmt.Printf("  the first ready ran after, on average:         %.1f of the other %d\n", float64(waitedBehind)/float64(rounds), n-1)
	return nil
}

// spin busy-waits for d without giving up the P.
func spin(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}
