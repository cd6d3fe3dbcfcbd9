package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/llmretry/llmretry/mockllm"
)

// --continue-overlap makes the served mock restart a continuation that
// many bytes before the seam.
func TestMockContinueOverlap(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	exit := make(chan int, 1)
	go func() {
		exit <- run(ctx, []string{"mock", "--listen", "127.0.0.1:0", "--continue-overlap", "3"}, pw, io.Discard)
		pw.Close()
	}()
	out := bufio.NewReader(pr)
	line, err := out.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }() // whatever it says on the way out
	_, addr, _ := strings.Cut(line, "http://")
	addr, _, _ = strings.Cut(addr, " ")
	if !strings.Contains(line, "continuations restart 3 bytes before the seam") || addr == "" {
		t.Fatalf("the mock says %q", line)
	}

	body := `{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"Hello! This","prefix":true}]}`
	resp, err := http.Post("http://"+addr+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var reply struct {
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil || len(reply.Choices) != 1 {
		t.Fatalf("status %d: %v", resp.StatusCode, err)
	}
	// "Hello! This" is 11 bytes: the continuation starts at byte 8.
	if got, want := reply.Choices[0].Message.Content, mockllm.ReplyText[8:]; got != want {
		t.Fatalf("continuation %q, want %q", got, want)
	}
	cancel()
	if code := <-exit; code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestMockContinueOverlapUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if got := run(context.Background(), []string{"mock", "--continue-overlap", "-3"}, &stdout, &stderr); got != 2 ||
		!strings.HasPrefix(stderr.String(), "llmretry mock: --continue-overlap: want a whole number\n") {
		t.Fatalf("exit %d, stderr %q", got, stderr.String())
	}
	stdout.Reset()
	run(context.Background(), []string{"mock", "--help"}, &stdout, &stderr)
	for _, want := range []string{"-continue-overlap bytes", "cut=N", "Mock-Reply: utf8"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, stdout.String())
		}
	}
}
