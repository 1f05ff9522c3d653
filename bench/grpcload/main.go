// grpcload: a closed-loop gRPC load client for Orders.GetOrder (bench/grpc_orders.py).
//
// -conns channels (each one HTTP/2 connection: grpc.WithBlock dials them before the clock
// starts), -concurrency callers spread over them round-robin, each with one call in
// flight at a time, for -duration seconds: the gRPC twin of `wrk -c`. Every call asks
// GetOrder for an id uniform in 1..-ids with the bearer token of -token-file in the
// `authorization` metadata and a -timeout deadline; an answer whose id differs from the
// one asked counts as an error ("WRONG_ID").
//
// The stubs (package surgev1) are generated from proto/surge/v1/surge.proto at build
// time into a GOPATH of the build dir; nothing generated is committed.
//
// Output: one JSON object on stdout (see `result`).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "surgebench/surgev1"
)

type result struct {
	Conns       int              `json:"conns"`
	Concurrency int              `json:"concurrency"`
	Seconds     float64          `json:"seconds"`
	Requests    int64            `json:"requests"`    // calls answered (any status)
	OK          int64            `json:"ok"`          // OK with the id asked
	Errors      map[string]int64 `json:"errors"`      // the rest, by gRPC status code
	RPS         float64          `json:"rps"`         // answers a second
	OkRPS       float64          `json:"ok_rps"`      // OK answers a second
	P50         float64          `json:"p50_ms"`      // every answer's latency
	P99         float64          `json:"p99_ms"`      //
	Max         float64          `json:"max_ms"`      //
	CPUSeconds  float64          `json:"cpu_seconds"` // this process's user + system time
}

type caller struct {
	latencies []float32 // ms
	errors    map[string]int64
	ok        int64
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server host:port")
	conns := flag.Int("conns", 16, "channels (connections)")
	concurrency := flag.Int("concurrency", 256, "calls in flight, spread over the channels")
	seconds := flag.Float64("duration", 10, "seconds of load")
	ids := flag.Int64("ids", 100000, "ids uniform in 1..ids")
	tokenFile := flag.String("token-file", "", "file holding the bearer token")
	timeout := flag.Duration("timeout", 5*time.Second, "each call's deadline")
	flag.Parse()
	if *conns < 1 || *concurrency < 1 || *ids < 1 || *seconds <= 0 {
		fail("-conns, -concurrency, -ids and -duration must be positive")
	}
	token, err := os.ReadFile(*tokenFile)
	if err != nil {
		fail("reading -token-file: %v", err)
	}
	auth := "Bearer " + strings.TrimSpace(string(token))

	clients := make([]pb.OrdersClient, *conns)
	for i := range clients {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		// WithBlock: a connection of its own per channel, dialled now, not on first use
		conn, err := grpc.DialContext(ctx, *addr, grpc.WithInsecure(), grpc.WithBlock())
		cancel()
		if err != nil {
			fail("dialling %s: %v", *addr, err)
		}
		defer conn.Close()
		clients[i] = pb.NewOrdersClient(conn)
	}

	callers := make([]*caller, *concurrency)
	var stop int32
	var wg sync.WaitGroup
	cpu0 := cpuSeconds()
	start := time.Now()
	for i := range callers {
		c := &caller{errors: map[string]int64{}}
		callers[i] = c
		wg.Add(1)
		go func(i int, client pb.OrdersClient) {
			defer wg.Done()
			random := rand.New(rand.NewSource(int64(7919*i) + time.Now().UnixNano()))
			base := metadata.AppendToOutgoingContext(context.Background(), "authorization", auth)
			for atomic.LoadInt32(&stop) == 0 {
				id := random.Int63n(*ids) + 1
				ctx, cancel := context.WithTimeout(base, *timeout)
				began := time.Now()
				order, err := client.GetOrder(ctx, &pb.GetOrderRequest{Id: id})
				elapsed := time.Since(began)
				cancel()
				c.latencies = append(c.latencies, float32(elapsed.Seconds()*1e3))
				switch {
				case err != nil:
					c.errors[status.Code(err).String()]++
				case order.GetId() != id:
					c.errors["WRONG_ID"]++
				default:
					c.ok++
				}
			}
		}(i, clients[i%len(clients)])
	}
	time.Sleep(time.Duration(*seconds * float64(time.Second)))
	atomic.StoreInt32(&stop, 1)
	wg.Wait()
	took := time.Since(start).Seconds()

	out := result{Conns: *conns, Concurrency: *concurrency, Seconds: took, Errors: map[string]int64{}}
	var all []float32
	for _, c := range callers {
		all = append(all, c.latencies...)
		out.OK += c.ok
		for code, n := range c.errors {
			out.Errors[code] += n
		}
	}
	out.Requests = int64(len(all))
	out.RPS = float64(out.Requests) / took
	out.OkRPS = float64(out.OK) / took
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	out.P50, out.P99 = quantile(all, 0.50), quantile(all, 0.99)
	if len(all) > 0 {
		out.Max = float64(all[len(all)-1])
	}
	out.CPUSeconds = cpuSeconds() - cpu0
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("writing the result: %v", err)
	}
}

func quantile(sorted []float32, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(q*float64(len(sorted)-1))])
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "grpcload: "+format+"\n", args...)
	os.Exit(1)
}
