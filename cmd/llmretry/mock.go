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
		"       reset | stall=DUR | sse-error | drop=N | slow=DUR; stall and slow take a range too, DUR..DUR")
	seed := fs.Uint64("seed", 1, "seed for the draws of a fault mix")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: llmretry mock [flags]\n\nA mock provider speaking OpenAI (/v1/chat/completions), Anthropic (/v1/messages)\nand Gemini (/v1beta/models/M:generateContent), JSON and SSE, with scripted faults.\n\n")
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
	srv := &http.Server{Handler: mockllm.New(script, *seed), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stdout, "mock provider listening on http://%s (faults: %q)\n", ln.Addr(), *faults)
	return proxy.Serve(ctx, srv, func() error { return srv.Serve(ln) }, 5*time.Second, nil)
}
