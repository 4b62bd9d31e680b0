// Command goproxy is the benchmarks' yardstick: httputil.ReverseProxy doing the same route work as
// the gateway (path routing, credentials, X-Forwarded-* removed) for one configured route.
//
// Credentials are static: -auth basic sets a Basic header, -auth bearer a fixed Bearer token.
// That is what the gateway does on a token-cache hit, so for the OAuth and CSRF benchmarks (whose
// tokens the gateway fetches once and then serves from its caches) a static Bearer header plus a
// static X-Csrf-Token and CSRF cookie is the same work per request. -header and -query add a
// request parameter when the caller did not send it; -ca, -cert and -key make the upstream
// connection TLS with a client certificate.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"time"
)

// hasQueryKey reports whether a raw query has a pair named key (the name unescaped).
func hasQueryKey(raw, key string) bool {
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		name, _, _ := strings.Cut(pair, "=")
		if name == key {
			return true
		}
		if unescaped, err := url.QueryUnescape(name); err == nil && unescaped == key {
			return true
		}
	}
	return false
}

func tlsConfig(caFile, certFile, keyFile string) *tls.Config {
	if caFile == "" && certFile == "" {
		return nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		caPEM, err := os.ReadFile(caFile)
		if err != nil {
			log.Fatal(err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(caPEM) {
			log.Fatalf("no certificates in %s", caFile)
		}
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			log.Fatal(err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9200", "listen address")
	app := flag.String("app", "bench", "application name (first path segment)")
	service := flag.String("service", "basic", "service name (second path segment)")
	target := flag.String("target", "http://127.0.0.1:9100/data", "target URL")
	auth := flag.String("auth", "basic", "credentials to add: none, basic or bearer")
	user := flag.String("user", "alice", "Basic user")
	pass := flag.String("pass", "s3cret", "Basic password")
	bearer := flag.String("bearer", "tok-static", "Bearer token for -auth bearer")
	csrfToken := flag.String("csrf-token", "", "X-Csrf-Token to set (empty: no CSRF)")
	csrfCookie := flag.String("csrf-cookie", "", "name=value cookie put first in Cookie with CSRF")
	header := flag.String("header", "", "request-parameter header 'Name: value', added if absent")
	query := flag.String("query", "", "request-parameter query 'name=value', added if absent")
	caFile := flag.String("ca", "", "CA (PEM) that the https target's certificate chains to")
	certFile := flag.String("cert", "", "client certificate (PEM) for an https target")
	keyFile := flag.String("key", "", "client key (PEM) for an https target")
	flag.Parse()
	to, err := url.Parse(*target)
	if err != nil {
		log.Fatal(err)
	}
	prefix := "/" + *app + "/" + *service
	var authorization string
	switch *auth {
	case "basic":
		authorization = "Basic " + base64.StdEncoding.EncodeToString([]byte(*user+":"+*pass))
	case "bearer":
		authorization = "Bearer " + *bearer
	case "none":
	default:
		log.Fatalf("unknown -auth %q", *auth)
	}
	headerName, headerValue, _ := strings.Cut(*header, ":")
	headerName, headerValue = strings.TrimSpace(headerName), strings.TrimSpace(headerValue)
	queryName, _, _ := strings.Cut(*query, "=")
	proxy := &httputil.ReverseProxy{
		Director: func(r *http.Request) {
			r.URL.Scheme, r.URL.Host, r.Host = to.Scheme, to.Host, to.Host
			r.URL.Path = strings.TrimSuffix(to.Path, "/") + strings.TrimPrefix(r.URL.Path, prefix)
			r.URL.RawPath = ""
			if authorization != "" {
				r.Header.Set("Authorization", authorization)
			}
			if *csrfToken != "" {
				r.Header.Set("X-Csrf-Token", *csrfToken)
				cookie := *csrfCookie
				if old := r.Header.Get("Cookie"); old != "" {
					cookie += "; " + old
				}
				r.Header.Set("Cookie", cookie)
			}
			if headerName != "" && r.Header.Get(headerName) == "" {
				r.Header.Set(headerName, headerValue)
			}
			if queryName != "" && !hasQueryKey(r.URL.RawQuery, queryName) {
				if r.URL.RawQuery == "" {
					r.URL.RawQuery = *query
				} else {
					r.URL.RawQuery += "&" + *query
				}
			}
			// A nil value stops ReverseProxy from appending X-Forwarded-For itself.
			r.Header["X-Forwarded-For"] = nil
			for _, h := range []string{"X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Client-Cert"} {
				r.Header.Del(h)
			}
		},
		Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			// The gateway relays Accept-Encoding as sent; Go would otherwise add gzip itself.
			DisableCompression: true,
			// Like the gateway: HTTP/1.1 upstream, TLS >= 1.2, the given CA and client cert.
			TLSClientConfig: tlsConfig(*caFile, *certFile, *keyFile),
		},
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != prefix && !strings.HasPrefix(r.URL.Path, prefix+"/") {
			http.NotFound(w, r)
			return
		}
		proxy.ServeHTTP(w, r)
	})
	log.Fatal(http.ListenAndServe(*addr, handler))
}
