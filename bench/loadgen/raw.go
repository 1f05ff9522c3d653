package main

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"strconv"
	"strings"
	"time"
)

// rawConn is one keep-alive HTTP/1.1 connection of a worker (either loop), written by hand.
// net/http's client took about 35 us of CPU a request here (two goroutines and channel
// hand-offs per connection, a header map, URL parsing): 69 % of a core at 20,000 answers
// a second, a third of this 2-core machine, so the client rather than the server under
// test set the pace of the cold-start runs; and the open loop, pinned to one core, could
// not send the 3x overload's 42,000 requests a second at all. This one writes each
// request into one reused buffer and reads an answer framed by Content-Length, which is
// how both servers frame these answers; anything else (chunked, no length) is an error,
// not a guess.
type rawConn struct {
	addr, host     string
	prefix, suffix string // the path around its id (the -path format split at %d)
	timeout        time.Duration
	conn           net.Conn
	reader         *bufio.Reader
	request        []byte
}

var errFraming = errors.New("answer without a Content-Length")

func newRawConn(base, pathFormat string, timeout time.Duration) *rawConn {
	host := strings.TrimPrefix(base, "http://")
	parts := strings.SplitN(pathFormat, "%d", 2)
	if len(parts) != 2 {
		fail("-path must hold one %%d")
	}
	return &rawConn{addr: host, host: host, prefix: parts[0], suffix: parts[1], timeout: timeout}
}

// get sends GET for `id` with `token` and reads the whole answer; returns its status.
func (c *rawConn) get(id int, token string) (int, error) {
	if c.conn == nil {
		conn, err := net.DialTimeout("tcp", c.addr, c.timeout)
		if err != nil {
			return 0, err
		}
		c.conn, c.reader = conn, bufio.NewReaderSize(conn, 16384)
	}
	code, keep, err := c.exchange(id, token)
	if err != nil || !keep {
		c.conn.Close()
		c.conn = nil
	}
	return code, err
}

func (c *rawConn) exchange(id int, token string) (int, bool, error) {
	b := append(c.request[:0], "GET "...)
	b = append(b, c.prefix...)
	b = strconv.AppendInt(b, int64(id), 10)
	b = append(b, c.suffix...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, c.host...)
	b = append(b, "\r\nAuthorization: Bearer "...)
	b = append(b, token...)
	b = append(b, "\r\n\r\n"...)
	c.request = b
	if err := c.conn.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, false, err
	}
	if _, err := c.conn.Write(b); err != nil {
		return 0, false, err
	}
	line, err := c.reader.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, errors.New("not an HTTP/1 status line")
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, err
	}
	length, keep := -1, true
	for {
		line, err = c.reader.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		if len(line) <= 2 { // the blank line that ends the head
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		name := line[:colon]
		value := bytes.TrimSpace(line[colon+1:])
		switch {
		case bytes.EqualFold(name, []byte("content-length")):
			if length, err = strconv.Atoi(string(value)); err != nil {
				return 0, false, err
			}
		case bytes.EqualFold(name, []byte("connection")):
			keep = !bytes.EqualFold(value, []byte("close"))
		}
	}
	if length < 0 {
		return 0, false, errFraming
	}
	if _, err := c.reader.Discard(length); err != nil {
		return 0, false, err
	}
	return code, keep, nil
}
