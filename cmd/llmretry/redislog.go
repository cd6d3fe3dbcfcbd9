package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// redisLogs takes go-redis's own log lines (one for each failed dial,
// several a second while Redis is down) into the command's slog logger at
// Debug level, below what the command prints: redisstate already says once,
// at Warn, that Redis is down, and once that it is back. go-redis keeps its
// logger in a package-level variable; the command owns its process, so
// setting it here touches no one else's program. The redisstate library
// never sets it.
type redisLogs struct{ l *slog.Logger }

func (r redisLogs) Printf(ctx context.Context, format string, v ...any) {
	r.l.DebugContext(ctx, "go-redis: "+fmt.Sprintf(format, v...))
}

// routeRedisLogs sends go-redis's logging to l at Debug level.
func routeRedisLogs(l *slog.Logger) { redis.SetLogger(redisLogs{l}) }
