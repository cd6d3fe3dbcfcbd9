// Command tlsmock serves the mock provider over TLS, HTTP/2 and HTTP/1.1 by
// ALPN, with a self-signed certificate for 127.0.0.1 written to -cert, so
// that bench/streams/run.sh can put a proxy in front of an upstream that
// speaks as LLM APIs do (HTTPS). Every reply is a stream of 19 events -gap
// apart (a second by default).
//
//	tlsmock -listen 127.0.0.1:18293 -cert /tmp/mock.pem [-gap 1s]
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/llmretry/llmretry/mockllm"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18293", "address to listen on")
	certOut := flag.String("cert", "", "where to write the certificate (PEM), for clients to trust")
	gap := flag.Duration("gap", time.Second, "the time between a stream's events")
	flag.Parse()
	if *certOut == "" {
		fmt.Fprintln(os.Stderr, "usage: tlsmock -listen ADDR -cert FILE")
		os.Exit(2)
	}
	cert, pemBytes, err := selfSigned()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := os.WriteFile(*certOut, pemBytes, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	script, err := mockllm.ParseFaults("slow=" + gap.String() + "@100%")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	srv := &http.Server{Handler: mockllm.New(script, 1), ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: 1000}}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "TLS mock on https://%s\n", ln.Addr())
	if err := srv.ServeTLS(ln, "", ""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// selfSigned makes a certificate for 127.0.0.1, and its PEM.
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "llmretry bench mock"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}
