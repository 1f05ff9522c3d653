// loadgen: an open-loop HTTP load generator for the overload benchmark (bench/overload.py).
//
// Why it exists: wrk is closed-loop (a connection sends its next request only after the
// answer to the last), so a server that slows down is offered less load and its queueing
// never shows in the latencies; wrk2, the constant-rate fork, is not packaged by Debian.
// Here request i is due at start + i/rate whatever happened before, a pool of -conns
// workers sends them, and a request's latency counts from when it was due (so the time
// it waited for a free worker counts too). A request still unsent -timeout after it was
// due is given up (a user who left), as is one whose answer takes longer than -timeout.
//
// Workload: GET <url><path with the id> with id uniform in 1..-ids (the same sequence every
// run), and the bearer token of the order's owner, user ((id-1) % users + 1): that line of
// -tokens.
//
// Output: one JSON object on stdout (see `result`); the summary figures leave out the
// requests due in the first -warmup seconds (the server's limits settling).
//
// With -closed it is a closed-loop client instead (bench/orders_cold.py, the cold-start
// run): each of -conns workers sends its next request as soon as the last is answered,
// for -duration seconds, and times every answer from when its request was sent. Output:
// one JSON object (see `closedResult`), answers counted by the second they arrived in.
//
// Either way each worker owns one keep-alive connection, raw TCP with a hand-written
// HTTP/1.1 exchange (raw.go says why); a connection the server closes is reopened.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

type result struct {
	Rate        float64         `json:"rate"`
	Seconds     float64         `json:"seconds"`
	Warmup      float64         `json:"warmup"`     // first seconds, left out of the figures
	Due         int64           `json:"due"`        // requests that fell due
	Sent        int64           `json:"sent"`       // of which sent
	GivenUp     int64           `json:"given_up"`   // never sent: no worker within -timeout
	Errors      int64           `json:"errors"`     // transport errors, answers past -timeout
	Status      map[int]int64   `json:"status"`     // answers by status code
	OkPerSecond float64         `json:"ok_per_s"`   // 2xx answers a second
	GoodPerSec  float64         `json:"good_per_s"` // 2xx within -slo a second: the goodput
	OkP50       float64         `json:"ok_p50_ms"`  // latency of 2xx answers, from due time
	OkP99       float64         `json:"ok_p99_ms"`
	OkMax       float64         `json:"ok_max_ms"`
	AllP99      float64         `json:"all_p99_ms"` // every answer, whatever its status
	PerSecond   []secondFigures `json:"per_second"` // second by second, warm-up included
}

type secondFigures struct {
	Status map[int]int64 `json:"status"`
	OkP99  float64       `json:"ok_p99_ms"`
}

type job struct {
	due time.Time
	id  int
}

type answer struct {
	second  int     // of the run, when it was due
	code    int     // 0: a transport error
	latency float64 // ms from due time
}

func main() {
	base := flag.String("url", "http://127.0.0.1:8080", "server base URL")
	rate := flag.Float64("rate", 1000, "requests a second, offered whatever the answers")
	seconds := flag.Float64("duration", 10, "seconds of load")
	warmup := flag.Float64("warmup", 0, "first seconds left out of the summary figures")
	conns := flag.Int("conns", 256, "workers (each one request at a time, keep-alive)")
	timeout := flag.Duration("timeout", 2*time.Second, "give up on a request this late")
	ids := flag.Int("ids", 1000000, "order ids 1..ids")
	users := flag.Int("users", 10000, "order k's owner is user ((k-1) % users + 1)")
	tokenFile := flag.String("tokens", "", "file: the token of user u on line u")
	path := flag.String("path", "/orders/%d", "request path, %d is the order id")
	slo := flag.Float64("slo", 50, "ms: a 2xx this late from its due time is not goodput")
	closed := flag.Bool("closed", false, "closed loop: -conns workers, each sends its next "+
		"request when the last is answered; latency from the send (-rate, -warmup unused)")
	flag.Parse()

	tokens := readTokens(*tokenFile)
	if len(tokens) < *users {
		fail("need %d tokens in %s, found %d", *users, *tokenFile, len(tokens))
	}
	if *closed {
		out := runClosed(*base, *path, *timeout, *conns, *seconds, *ids, *users, tokens, *slo)
		encoded, _ := json.Marshal(out)
		fmt.Println(string(encoded))
		return
	}

	total := int64(*rate * *seconds)
	jobs := make(chan job, total) // never blocks the schedule: lateness shows as latency
	var sent, givenUp int64
	var mu sync.Mutex
	var answers []answer

	start := time.Now().Add(100 * time.Millisecond)
	var workers sync.WaitGroup
	for w := 0; w < *conns; w++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			var mine []answer
			conn := newRawConn(*base, *path, *timeout)
			for j := range jobs {
				if time.Since(j.due) > *timeout {
					atomic.AddInt64(&givenUp, 1)
					continue
				}
				atomic.AddInt64(&sent, 1)
				code, err := conn.get(j.id, tokens[(j.id-1)%*users])
				if err != nil {
					code = 0
				}
				mine = append(mine, answer{
					second:  int(j.due.Sub(start) / time.Second),
					code:    code,
					latency: float64(time.Since(j.due)) / float64(time.Millisecond),
				})
			}
			mu.Lock()
			answers = append(answers, mine...)
			mu.Unlock()
		}()
	}

	random := rand.New(rand.NewSource(42))
	interval := time.Duration(float64(time.Second) / *rate)
	for i := int64(0); i < total; i++ {
		at := start.Add(time.Duration(i) * interval)
		if wait := time.Until(at); wait > 0 {
			time.Sleep(wait)
		}
		jobs <- job{due: at, id: 1 + random.Intn(*ids)}
	}
	close(jobs)
	workers.Wait()

	out := summarize(answers, int(*seconds), int(*warmup), *slo)
	out.Rate, out.Seconds, out.Warmup = *rate, *seconds, *warmup
	out.Due, out.Sent, out.GivenUp = total, sent, givenUp
	encoded, _ := json.Marshal(out)
	fmt.Println(string(encoded))
}

// summarize: the figures of the seconds after the warm-up, and every second's own.
func summarize(answers []answer, seconds, warmup int, slo float64) result {
	out := result{Status: map[int]int64{}}
	perSecond := make([]secondFigures, seconds)
	okBySecond := make([][]float64, seconds)
	for i := range perSecond {
		perSecond[i].Status = map[int]int64{}
	}
	var ok, all []float64
	var good int
	for _, a := range answers {
		inside := a.second >= 0 && a.second < seconds
		if inside && a.code != 0 {
			perSecond[a.second].Status[a.code]++
			if a.code < 300 && a.code >= 200 {
				okBySecond[a.second] = append(okBySecond[a.second], a.latency)
			}
		}
		if a.second < warmup {
			continue
		}
		if a.code == 0 {
			out.Errors++
			continue
		}
		out.Status[a.code]++
		all = append(all, a.latency)
		if a.code >= 200 && a.code < 300 {
			ok = append(ok, a.latency)
			if a.latency <= slo {
				good++
			}
		}
	}
	for i := range perSecond {
		perSecond[i].OkP99 = percentile(okBySecond[i], 0.99)
	}
	measured := float64(seconds - warmup)
	out.OkPerSecond = float64(len(ok)) / measured
	out.GoodPerSec = float64(good) / measured
	out.OkP50, out.OkP99 = percentile(ok, 0.50), percentile(ok, 0.99)
	out.OkMax, out.AllP99 = percentile(ok, 1.0), percentile(all, 0.99)
	out.PerSecond = perSecond
	return out
}

// closedResult: what a closed-loop run saw. Answers are binned by the second (from the
// start) in which they arrived; those arriving after -duration count only in AfterEnd.
type closedResult struct {
	Conns     int            `json:"conns"`
	Seconds   float64        `json:"seconds"`
	SLO       float64        `json:"slo_ms"`
	Sent      int64          `json:"sent"`
	AfterEnd  int64          `json:"after_end"` // answers (or errors) after the last second
	Status    map[int]int64  `json:"status"`    // answers within the run, by status code
	Errors    int64          `json:"errors"`    // transport errors and client timeouts
	OkP50     float64        `json:"ok_p50_ms"` // latency of the 200s, from their send
	OkP99     float64        `json:"ok_p99_ms"`
	AllP99    float64        `json:"all_p99_ms"`
	PerSecond []closedSecond `json:"per_second"`
}

type closedSecond struct {
	Good   int64 `json:"good"` // 200s that arrived within -slo of their send
	Ok     int64 `json:"ok"`   // every 200
	S504   int64 `json:"504"`
	Other  int64 `json:"other"`  // any other status
	Errors int64 `json:"errors"` // no answer: transport error or client timeout
}

func runClosed(base, pathFormat string, timeout time.Duration, conns int, seconds float64,
	ids, users int, tokens []string, slo float64) closedResult {
	n := int(seconds)
	limit := time.Duration(seconds * float64(time.Second))
	type tally struct {
		bins           []closedSecond
		status         map[int]int64
		ok, all        []float64
		sent, afterEnd int64
	}
	tallies := make([]tally, conns)
	start := time.Now()
	var workers sync.WaitGroup
	for w := 0; w < conns; w++ {
		workers.Add(1)
		go func(t *tally, seed int64) {
			defer workers.Done()
			t.bins, t.status = make([]closedSecond, n), map[int]int64{}
			random := rand.New(rand.NewSource(seed))
			conn := newRawConn(base, pathFormat, timeout)
			for {
				sent := time.Now()
				if sent.Sub(start) >= limit {
					return
				}
				id := 1 + random.Intn(ids)
				code, err := conn.get(id, tokens[(id-1)%users])
				arrived := time.Now()
				t.sent++
				second := int(arrived.Sub(start) / time.Second)
				if second >= n {
					t.afterEnd++
					continue
				}
				bin := &t.bins[second]
				if err != nil {
					bin.Errors++
					continue
				}
				latency := float64(arrived.Sub(sent)) / float64(time.Millisecond)
				t.status[code]++
				t.all = append(t.all, latency)
				switch {
				case code == 200:
					bin.Ok++
					t.ok = append(t.ok, latency)
					if latency <= slo {
						bin.Good++
					}
				case code == 504:
					bin.S504++
				default:
					bin.Other++
				}
			}
		}(&tallies[w], int64(42+w))
	}
	workers.Wait()

	out := closedResult{Conns: conns, Seconds: seconds, SLO: slo, Status: map[int]int64{}}
	out.PerSecond = make([]closedSecond, n)
	var ok, all []float64
	for _, t := range tallies {
		out.Sent += t.sent
		out.AfterEnd += t.afterEnd
		for code, count := range t.status {
			out.Status[code] += count
		}
		for i, b := range t.bins {
			p := &out.PerSecond[i]
			p.Good, p.Ok, p.S504 = p.Good+b.Good, p.Ok+b.Ok, p.S504+b.S504
			p.Other, p.Errors = p.Other+b.Other, p.Errors+b.Errors
			out.Errors += b.Errors
		}
		ok, all = append(ok, t.ok...), append(all, t.all...)
	}
	out.OkP50, out.OkP99 = percentile(ok, 0.50), percentile(ok, 0.99)
	out.AllP99 = percentile(all, 0.99)
	return out
}

func percentile(values []float64, q float64) float64 {
	if len(values) == 0 {
		return 0
	}
	sort.Float64s(values)
	index := int(q * float64(len(values)-1))
	return values[index]
}

func readTokens(path string) []string {
	file, err := os.Open(path)
	if err != nil {
		fail("tokens: %v", err)
	}
	defer file.Close()
	var tokens []string
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 4096), 1<<20)
	for scanner.Scan() {
		tokens = append(tokens, scanner.Text())
	}
	return tokens
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(2)
}
