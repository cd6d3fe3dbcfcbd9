package integration

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicopt "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	openaiopt "github.com/openai/openai-go/v3/option"
	goopenai "github.com/sashabaranov/go-openai"
	"google.golang.org/genai"

	"github.com/llmretry/llmretry/mockllm"
)

// sdk drives one real SDK client, with its own retries off, through hc.
type sdk struct {
	name string
	api  mockllm.API
	// complete makes one non-streamed call and returns the reply text.
	complete func(ctx context.Context, hc *http.Client, base string) (string, error)
	// stream makes one streamed call, calling onDelta as each delta arrives,
	// and returns the whole text.
	stream func(ctx context.Context, hc *http.Client, base string, onDelta func(string)) (string, error)
	// apiError pulls the provider's code and message from the SDK's typed
	// error.
	apiError func(err error) (status int, code, message string, ok bool)
}

var sdks = []sdk{
	{
		name: "openai-go", api: mockllm.OpenAI,
		complete: func(ctx context.Context, hc *http.Client, base string) (string, error) {
			c := openai.NewClient(openaiopt.WithBaseURL(base+"/v1/"), openaiopt.WithAPIKey("sk-test"),
				openaiopt.WithHTTPClient(hc), openaiopt.WithMaxRetries(0))
			r, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
				Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
			if err != nil {
				return "", err
			}
			return r.Choices[0].Message.Content, nil
		},
		stream: func(ctx context.Context, hc *http.Client, base string, onDelta func(string)) (string, error) {
			c := openai.NewClient(openaiopt.WithBaseURL(base+"/v1/"), openaiopt.WithAPIKey("sk-test"),
				openaiopt.WithHTTPClient(hc), openaiopt.WithMaxRetries(0))
			s := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
				Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
			defer s.Close()
			var b strings.Builder
			for s.Next() {
				for _, ch := range s.Current().Choices {
					if ch.Delta.Content != "" {
						onDelta(ch.Delta.Content)
						b.WriteString(ch.Delta.Content)
					}
				}
			}
			return b.String(), s.Err()
		},
		apiError: func(err error) (int, string, string, bool) {
			var e *openai.Error
			if !errors.As(err, &e) {
				return 0, "", "", false
			}
			return e.StatusCode, e.Code, e.Message, true
		},
	},
	{
		name: "anthropic-sdk-go", api: mockllm.Anthropic,
		complete: func(ctx context.Context, hc *http.Client, base string) (string, error) {
			c := anthropic.NewClient(anthropicopt.WithBaseURL(base), anthropicopt.WithAPIKey("sk-ant-test"),
				anthropicopt.WithHTTPClient(hc), anthropicopt.WithMaxRetries(0))
			m, err := c.Messages.New(ctx, anthropicParams())
			if err != nil {
				return "", err
			}
			var b strings.Builder
			for _, blk := range m.Content {
				b.WriteString(blk.Text)
			}
			return b.String(), nil
		},
		stream: func(ctx context.Context, hc *http.Client, base string, onDelta func(string)) (string, error) {
			c := anthropic.NewClient(anthropicopt.WithBaseURL(base), anthropicopt.WithAPIKey("sk-ant-test"),
				anthropicopt.WithHTTPClient(hc), anthropicopt.WithMaxRetries(0))
			s := c.Messages.NewStreaming(ctx, anthropicParams())
			defer s.Close()
			var b strings.Builder
			for s.Next() {
				ev := s.Current()
				if ev.Type == "content_block_delta" && ev.Delta.Text != "" {
					onDelta(ev.Delta.Text)
					b.WriteString(ev.Delta.Text)
				}
			}
			return b.String(), s.Err()
		},
		apiError: func(err error) (int, string, string, bool) {
			var e *anthropic.Error
			if !errors.As(err, &e) {
				return 0, "", "", false
			}
			code := string(e.Type())
			if strings.Contains(e.RawJSON(), "enforced_spend_limit_reached") {
				code = "enforced_spend_limit_reached"
			}
			return e.StatusCode, code, e.Message, true
		},
	},
	{
		name: "go-openai", api: mockllm.OpenAI,
		complete: func(ctx context.Context, hc *http.Client, base string) (string, error) {
			r, err := goOpenAI(hc, base).CreateChatCompletion(ctx, goOpenAIRequest(false))
			if err != nil {
				return "", err
			}
			return r.Choices[0].Message.Content, nil
		},
		stream: func(ctx context.Context, hc *http.Client, base string, onDelta func(string)) (string, error) {
			s, err := goOpenAI(hc, base).CreateChatCompletionStream(ctx, goOpenAIRequest(true))
			if err != nil {
				return "", err
			}
			defer s.Close()
			var b strings.Builder
			for {
				r, err := s.Recv()
				if errors.Is(err, io.EOF) {
					return b.String(), nil
				}
				if err != nil {
					return b.String(), err
				}
				for _, ch := range r.Choices {
					if ch.Delta.Content != "" {
						onDelta(ch.Delta.Content)
						b.WriteString(ch.Delta.Content)
					}
				}
			}
		},
		apiError: func(err error) (int, string, string, bool) {
			var e *goopenai.APIError
			if !errors.As(err, &e) {
				return 0, "", "", false
			}
			code, _ := e.Code.(string)
			return e.HTTPStatusCode, code, e.Message, true
		},
	},
	{
		name: "genai", api: mockllm.Gemini,
		complete: func(ctx context.Context, hc *http.Client, base string) (string, error) {
			c, err := genAI(ctx, hc, base)
			if err != nil {
				return "", err
			}
			r, err := c.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("hi"), nil)
			if err != nil {
				return "", err
			}
			return r.Text(), nil
		},
		stream: func(ctx context.Context, hc *http.Client, base string, onDelta func(string)) (string, error) {
			c, err := genAI(ctx, hc, base)
			if err != nil {
				return "", err
			}
			var b strings.Builder
			for r, err := range c.Models.GenerateContentStream(ctx, "gemini-2.5-flash", genai.Text("hi"), nil) {
				if err != nil {
					return b.String(), err
				}
				if t := r.Text(); t != "" {
					onDelta(t)
					b.WriteString(t)
				}
			}
			return b.String(), nil
		},
		apiError: func(err error) (int, string, string, bool) {
			var e genai.APIError
			if !errors.As(err, &e) {
				return 0, "", "", false
			}
			return e.Code, e.Status, e.Message, true
		},
	},
}

func anthropicParams() anthropic.MessageNewParams {
	return anthropic.MessageNewParams{Model: "claude-sonnet-4-5", MaxTokens: 64,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))}}
}

func goOpenAI(hc *http.Client, base string) *goopenai.Client {
	cfg := goopenai.DefaultConfig("sk-test")
	cfg.BaseURL = base + "/v1"
	cfg.HTTPClient = hc
	return goopenai.NewClientWithConfig(cfg)
}

func goOpenAIRequest(stream bool) goopenai.ChatCompletionRequest {
	return goopenai.ChatCompletionRequest{Model: "gpt-4o", Stream: stream,
		Messages: []goopenai.ChatCompletionMessage{{Role: goopenai.ChatMessageRoleUser, Content: "hi"}}}
}

// genAI is a Gemini API client; go-genai retries nothing unless asked.
func genAI(ctx context.Context, hc *http.Client, base string) (*genai.Client, error) {
	return genai.NewClient(ctx, &genai.ClientConfig{APIKey: "AIza-test", Backend: genai.BackendGeminiAPI,
		HTTPClient: hc, HTTPOptions: genai.HTTPOptions{BaseURL: base + "/"}})
}
