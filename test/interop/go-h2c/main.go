// One gRPC call over Go's own HTTP/2 (the standard library's net/http, unencrypted HTTP/2 with
// prior knowledge): an HTTP/2 and HPACK written apart from node:http2 and nghttp2, to hold the
// stream port's HTTP/2 (services/server/h2) to a client it was not written against. The request
// body (gRPC envelopes) comes from stdin and is sent as it is read, then half-closed; the answer's
// protocol, status, grpc-status and body (as hex) go to stdout, a line each.
//
// Usage: goh2c URL TOKEN ("-" for none)
package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	url, token := os.Args[1], os.Args[2]
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &protocols}, Timeout: 20 * time.Second}
	req, err := http.NewRequest(http.MethodPost, url, os.Stdin)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	req.Header.Set("content-type", "application/grpc")
	req.Header.Set("te", "trailers")
	if token != "-" {
		req.Header.Set("authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	// grpc-status is a trailer, or a header in a trailers-only answer (an error without a body).
	status := resp.Trailer.Get("grpc-status")
	if status == "" {
		status = resp.Header.Get("grpc-status")
	}
	fmt.Println("proto", resp.Proto)
	fmt.Println("http", resp.StatusCode)
	fmt.Println("grpc-status", status)
	fmt.Println("body", hex.EncodeToString(body))
}
