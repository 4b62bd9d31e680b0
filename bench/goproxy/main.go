// Command goproxy is the benchmarks' yardstick: httputil.ReverseProxy doing the same route work as
// the gateway (path routing, a Basic header, X-Forwarded-* removed) for one configured route.
package main

import (
	"encoding/base64"
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9200", "listen address")
	app := flag.String("app", "bench", "application name (first path segment)")
	service := flag.String("service", "basic", "service name (second path segment)")
	target := flag.String("target", "http://127.0.0.1:9100/data", "target URL")
	user := flag.String("user", "alice", "Basic user")
	pass := flag.String("pass", "s3cret", "Basic password")
	flag.Parse()
	to, err := url.Parse(*target)
	if err != nil {
		log.Fatal(err)
	}
	prefix := "/" + *app + "/" + *service
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(*user+":"+*pass))
	proxy := &httputil.ReverseProxy{
		Director: func(r *http.Request) {
			r.URL.Scheme, r.URL.Host, r.Host = to.Scheme, to.Host, to.Host
			r.URL.Path = strings.TrimSuffix(to.Path, "/") + strings.TrimPrefix(r.URL.Path, prefix)
			r.URL.RawPath = ""
			r.Header.Set("Authorization", auth)
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
