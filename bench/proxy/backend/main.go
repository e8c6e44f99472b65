// Command backend is the HTTP server behind the proxies in bench/proxy: a
// fasthttp server that answers every request with 200 and a small fixed
// body, so that the backends cost as little as possible and the proxy in
// front of them is what the benchmark measures. Request bodies are read
// as they arrive and dropped.
//
//	backend -listen 127.0.0.1:8081 [-size 13]
//
// It serves until SIGTERM or SIGINT.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on (loopback only)")
	size := flag.Int("size", 13, "body size in bytes")
	flag.Parse()
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		log.Fatalf("backend: -listen must be a loopback address such as 127.0.0.1:8081, got %q", *listen)
	}
	body := []byte("Hello, World!")
	if *size != len(body) {
		body = bytes.Repeat([]byte("x"), max(*size, 0))
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("backend: %v", err)
	}
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if ctx.Request.IsBodyStream() {
				// An upload (run.sh's upload rows): read and dropped.
				_, _ = io.Copy(io.Discard, ctx.RequestBodyStream())
			}
			ctx.SetContentType("text/plain")
			ctx.SetBody(body)
		},
		Name:        "backend",
		IdleTimeout: 2 * time.Minute,
		// Bodies of any size are read as they come, not held.
		StreamRequestBody: true,
	}
	fmt.Fprintf(os.Stderr, "backend: listening on %s\n", ln.Addr())
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		_ = srv.Shutdown()
	}()
	if err := srv.Serve(ln); err != nil {
		log.Fatalf("backend: %v", err)
	}
}
