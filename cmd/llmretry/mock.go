package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/llmretry/llmretry/cmd/internal/proxy"
	"github.com/llmretry/llmretry/mockllm"
)

func runMock(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("llmretry mock", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8788", "address to listen on")
	faults := fs.String("faults", "", "fault script, e.g. \"503:retry-after=1,reset,ok\" or a mix \"503@10%,sse-error@5%\"\n"+
		"steps: ok | STATUS[:retry-after=V][:retry-after-ms=V][:x-should-retry=V] | quota | retryinfo=DUR |\n"+
		"       reset | stall=DUR | sse-error | drop=N | cut=N | slow=DUR; stall and slow take a range too, DUR..DUR;\n"+
		"       drop=N cuts a stream after N events, cut=N after N bytes (inside an event or a character, too)")
	seed := fs.Uint64("seed", 1, "seed for the draws of a fault mix")
	overlap := fs.Uint("continue-overlap", 0, "a continuation restarts this many `bytes` before the seam, as models often\n"+
		"restart a sentence (0: exactly at the seam)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: llmretry mock [flags]\n\n"+
			"A mock provider speaking OpenAI (/v1/chat/completions), Anthropic (/v1/messages)\n"+
			"and Gemini (/v1beta/models/M:generateContent), JSON and SSE, with scripted faults.\n\n"+
			"It finishes its own reply: a request that hands it the reply's start as the\n"+
			"assistant's turn (Anthropic prefill; OpenAI \"prefix\": true, vLLM's\n"+
			"continue_final_message, or an assistant turn then a user turn asking to continue)\n"+
			"gets the rest, as a stream or reply of its own; a start that is not the reply's\n"+
			"gets 400. A request with the header \"%s: %s\" gets a reply with 2-, 3- and\n"+
			"4-byte UTF-8 characters.\n\n", mockllm.ReplyHeader, mockllm.ReplyUTF8)
		fs.PrintDefaults()
	}
	if err := parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	if err := checkAddr(fs, stderr, "listen", *listen); err != nil {
		return err
	}
	script, err := mockllm.ParseFaults(*faults)
	if err != nil {
		return usageErr(fs, stderr, "--faults: %v", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	mock := mockllm.New(script, *seed)
	mock.Overlap = int(min(*overlap, 1<<30)) // clamped to the delivered text anyway
	srv := &http.Server{Handler: mock, ReadHeaderTimeout: 10 * time.Second}
	restart := ""
	if mock.Overlap > 0 {
		restart = fmt.Sprintf("; continuations restart %d bytes before the seam", mock.Overlap)
	}
	fmt.Fprintf(stdout, "mock provider listening on http://%s (faults: %q%s)\n", ln.Addr(), *faults, restart)
	return proxy.Serve(ctx, srv, func() error { return srv.Serve(ln) }, 5*time.Second, nil)
}
