// Command goupstream is the benchmarks' fast upstream: a fixed 1 KiB body for any path, so the
// proxy under test, not the upstream, is what the load generator measures.
package main

import (
	"bytes"
	"flag"
	"log"
	"net/http"
	"strconv"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9100", "listen address")
	size := flag.Int("size", 1024, "response body size in bytes")
	flag.Parse()
	body := bytes.Repeat([]byte("x"), *size)
	length := strconv.Itoa(len(body))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/octet-stream"}
		h["Content-Length"] = []string{length}
		_, _ = w.Write(body)
	})
	log.Fatal(http.ListenAndServe(*addr, handler))
}
