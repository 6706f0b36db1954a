// Command flowyard-ferretdb runs an embedded FerretDB v1 (SQLite backend) for
// Flowyard's local development stack.
//
// A plain `go install` of FerretDB's own cmd panics because the generated
// build/version/version.txt file is absent from the module; the embeddable
// package github.com/FerretDB/FerretDB/ferretdb does not need it.
//
// Configuration (flags win over environment variables):
//
//	-listen-addr / FLOWYARD_FERRETDB_LISTEN_ADDR  TCP address (default 127.0.0.1:27017)
//	-sqlite-dir  / FLOWYARD_FERRETDB_SQLITE_DIR   directory for the SQLite databases (default ./ferretdb-data)
//	-log-level   / FLOWYARD_FERRETDB_LOG_LEVEL    debug, info, warn or error (default info)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"

	"github.com/FerretDB/FerretDB/build/version"
	"github.com/FerretDB/FerretDB/ferretdb"
)

const ferretdbModule = "github.com/FerretDB/FerretDB"

// ferretdbVersion is the version of the FerretDB module compiled in, from the build info.
func ferretdbVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == ferretdbModule {
				return dep.Version
			}
		}
	}
	return "unknown"
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "flowyard-ferretdb:", err)
		os.Exit(1)
	}
}

func run() error {
	listenAddr := flag.String("listen-addr", envOr("FLOWYARD_FERRETDB_LISTEN_ADDR", "127.0.0.1:27017"), "TCP listen address")
	sqliteDir := flag.String("sqlite-dir", envOr("FLOWYARD_FERRETDB_SQLITE_DIR", "ferretdb-data"), "SQLite data directory")
	logLevel := flag.String("log-level", envOr("FLOWYARD_FERRETDB_LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	flag.Parse()

	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", flag.Args())
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("bad log level %q: %w", *logLevel, err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	dir, err := filepath.Abs(*sqliteDir)
	if err != nil {
		return err
	}
	if err = os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	// The SQLite handler wants a "file:" URI naming a directory, with a trailing slash.
	sqliteURL := (&url.URL{Scheme: "file", Opaque: filepath.ToSlash(dir) + "/"}).String()

	// The embeddable package leaves the version "unknown" (it only reads it from generated
	// files in FerretDB's own builds); report the real one in buildInfo/serverStatus.
	version.Get().Version = ferretdbVersion()

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listenAddr},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// Printed regardless of the log level, so the log always shows what was started.
	fmt.Fprintf(os.Stderr, "flowyard-ferretdb: FerretDB %s listening on %s, SQLite %s\n",
		version.Get().Version, *listenAddr, sqliteURL)

	if err = f.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}

	fmt.Fprintln(os.Stderr, "flowyard-ferretdb: stopped")
	return nil
}
