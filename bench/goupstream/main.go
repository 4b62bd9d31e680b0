// Command goupstream is the benchmarks' fast upstream and mock API. Any path not listed below
// answers a fixed body (-size bytes) to a request without a body, and the decimal length of the
// body it consumed to a request with one, so the proxy under test, not the upstream, is what the
// load generator measures.
//
// Paths with a meaning of their own:
//
//	/token           OAuth token endpoint: {"access_token":"tok-N","expires_in":-token-ttl}
//	/csrf            CSRF endpoint: X-Csrf-Token and a Set-Cookie when asked with "X-Csrf-Token: fetch"
//	/stats           JSON counts of token, CSRF and all requests, for the benchmarks to check
//	/fault/reset...  the connection is reset without an answer
//	/fault/timeout.. the answer comes after -fault-sleep (longer than the proxy's timeout)
//	/fault/5xx...    503
//	/verify/KIND...  418 unless the credentials of KIND arrived (none, basic, bearer, csrf,
//	                 params, cert), then the usual body
//
// With -tls-addr it also listens with TLS and requires a client certificate signed by
// -client-ca, for the client-certificate benchmarks.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

const (
	csrfToken  = "csrf-token-1"
	csrfCookie = "sap-XSRF=c1"
	apiKey     = "k-123"
)

type upstream struct {
	body       []byte
	length     string
	tokenTTL   int
	tokenDelay time.Duration
	faultSleep time.Duration
	basic      string
	requests   atomic.Int64
	tokens     atomic.Int64
	csrfs      atomic.Int64
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.requests.Add(1)
	path := r.URL.Path
	// The benchmarks' data paths come first so the common case costs one prefix check.
	if strings.HasPrefix(path, "/data") {
		u.data(w, r)
		return
	}
	switch {
	case path == "/token":
		u.token(w, r)
	case path == "/csrf":
		u.csrf(w, r)
	case path == "/stats":
		u.stats(w)
	case strings.HasPrefix(path, "/fault/"):
		u.fault(w, r, strings.TrimPrefix(path, "/fault/"))
	case strings.HasPrefix(path, "/verify/"):
		kind := strings.SplitN(strings.TrimPrefix(path, "/verify/"), "/", 2)[0]
		if reason := u.verify(kind, r); reason != "" {
			http.Error(w, reason, http.StatusTeapot)
			return
		}
		u.data(w, r)
	default:
		u.data(w, r)
	}
}

func (u *upstream) data(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h["Content-Type"] = []string{"application/octet-stream"}
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		answer := strconv.FormatInt(n, 10)
		h["Content-Length"] = []string{strconv.Itoa(len(answer))}
		_, _ = io.WriteString(w, answer)
		return
	}
	h["Content-Length"] = []string{u.length}
	_, _ = w.Write(u.body)
}

func (u *upstream) token(w http.ResponseWriter, r *http.Request) {
	n := u.tokens.Add(1)
	_, _ = io.Copy(io.Discard, r.Body)
	if u.tokenDelay > 0 {
		time.Sleep(u.tokenDelay)
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"access_token":"tok-%d","token_type":"bearer","expires_in":%d}`, n, u.tokenTTL)
}

func (u *upstream) csrf(w http.ResponseWriter, r *http.Request) {
	u.csrfs.Add(1)
	if !strings.EqualFold(r.Header.Get("X-Csrf-Token"), "fetch") {
		http.Error(w, "X-Csrf-Token: fetch expected", http.StatusForbidden)
		return
	}
	h := w.Header()
	h.Set("X-Csrf-Token", csrfToken)
	h.Add("Set-Cookie", csrfCookie+"; Path=/; HttpOnly")
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

func (u *upstream) stats(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"requests":%d,"token":%d,"csrf":%d}`,
		u.requests.Load(), u.tokens.Load(), u.csrfs.Load())
}

func (u *upstream) fault(w http.ResponseWriter, r *http.Request, kind string) {
	switch {
	case strings.HasPrefix(kind, "reset"):
		hj, ok := w.(http.Hijacker)
		if !ok {
			panic(http.ErrAbortHandler)
		}
		conn, _, err := hj.Hijack()
		if err != nil {
			return
		}
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0) // close with RST rather than FIN
		}
		_ = conn.Close()
	case strings.HasPrefix(kind, "timeout"):
		select {
		case <-time.After(u.faultSleep):
		case <-r.Context().Done():
			return
		}
		u.data(w, r)
	case strings.HasPrefix(kind, "5xx"):
		http.Error(w, "upstream fault", http.StatusServiceUnavailable)
	default:
		http.NotFound(w, r)
	}
}

// verify returns "" when the credentials of kind arrived, else what was wrong.
func (u *upstream) verify(kind string, r *http.Request) string {
	auth := r.Header.Get("Authorization")
	bearer := strings.HasPrefix(auth, "Bearer tok-")
	switch kind {
	case "none":
		if auth != "" {
			return "unexpected Authorization"
		}
	case "basic":
		if auth != u.basic {
			return "wrong Basic credentials"
		}
	case "bearer":
		if !bearer {
			return "no Bearer token"
		}
	case "csrf":
		if !bearer {
			return "no Bearer token"
		}
		if r.Header.Get("X-Csrf-Token") != csrfToken {
			return "wrong CSRF token"
		}
		if !strings.Contains(r.Header.Get("Cookie"), csrfCookie) {
			return "no CSRF cookie"
		}
	case "params":
		if r.Header.Get("X-Api-Key") != apiKey {
			return "no X-Api-Key header"
		}
		if r.URL.Query().Get("sap-language") != "EN" {
			return "no sap-language query parameter"
		}
	case "cert":
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			return "no client certificate"
		}
	default:
		return "unknown verify kind " + kind
	}
	return ""
}

func serveTLS(addr, certFile, keyFile, caFile string, handler http.Handler) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("no certificates in %s", caFile)
	}
	server := &http.Server{
		Addr:    addr,
		Handler: handler,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"http/1.1"},
		},
	}
	return server.ListenAndServeTLS("", "")
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9100", "listen address (plain HTTP)")
	size := flag.Int("size", 1024, "response body size in bytes")
	tlsAddr := flag.String("tls-addr", "", "also listen here with TLS, requiring a client certificate")
	certFile := flag.String("cert", "", "server certificate (PEM) for -tls-addr")
	keyFile := flag.String("key", "", "server key (PEM) for -tls-addr")
	caFile := flag.String("client-ca", "", "CA (PEM) that client certificates must chain to")
	tokenTTL := flag.Int("token-ttl", 3600, "expires_in of issued tokens, seconds")
	tokenDelay := flag.Duration("token-delay", 0, "time the token endpoint takes to answer")
	faultSleep := flag.Duration("fault-sleep", 15*time.Second, "delay of /fault/timeout")
	basic := flag.String("basic", "alice:s3cret", "user:password that /verify/basic expects")
	flag.Parse()
	body := bytes.Repeat([]byte("x"), *size)
	u := &upstream{
		body:       body,
		length:     strconv.Itoa(len(body)),
		tokenTTL:   *tokenTTL,
		tokenDelay: *tokenDelay,
		faultSleep: *faultSleep,
		basic:      "Basic " + base64.StdEncoding.EncodeToString([]byte(*basic)),
	}
	if *tlsAddr != "" {
		go func() {
			log.Fatal(serveTLS(*tlsAddr, *certFile, *keyFile, *caFile, u))
		}()
	}
	log.Fatal(http.ListenAndServe(*addr, u))
}
