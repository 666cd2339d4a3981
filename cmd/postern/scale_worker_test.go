package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The sessions TestScale holds live in this process, or, when one process
// may not open enough files for them (RLIMIT_NOFILE; every session is a
// socket here), in worker processes: this test binary run with
// scaleWorkerEnv set to a loadSpec in JSON. A worker talks over its
// stdin and stdout, one line each:
//
//	worker → "progress N"       N of its sessions open (every tenth)
//	worker → "done N ERR"       N opened; ERR the first failure, quoted ("" if none)
//	parent → "check"
//	worker → "ended ERR"        before "checked", if a session ended: why the first
//	                            did, quoted
//	worker → "checked D F P R H" D sessions ended, F of a sample failed a ping,
//	                            P keep-alive pings failed, VmRSS R and VmHWM H in bytes
//	parent closes stdin         the worker closes its sessions and exits
const scaleWorkerEnv = "POSTERN_SCALE_WORKER"

// loadHolder opens and holds the idle sessions of one run.
type loadHolder interface {
	open(ctx context.Context) (int, error)
	// check reports sessions that ended, sample pings that failed and
	// keep-alive pings that failed, and stops the keep-alive pings.
	check(ctx context.Context) (dead, failed, pingFails int, err error)
	mem() procMem
	close()
}

// localHolder holds the sessions in this process.
type localHolder struct {
	pool       sessionPool
	spec       loadSpec
	logf       func(string, ...any)
	pingFails  atomic.Int64
	stopKeeper context.CancelFunc
	keeperDone chan struct{}
}

func newLocalHolder(ctx context.Context, s loadSpec, logf func(string, ...any)) *localHolder {
	h := &localHolder{spec: s, logf: logf, keeperDone: make(chan struct{})}
	kctx, stop := context.WithCancel(ctx)
	h.stopKeeper = stop
	go func() {
		h.pool.keepAlive(kctx, s.Ping, &h.pingFails)
		close(h.keeperDone)
	}()
	return h
}

func (h *localHolder) open(ctx context.Context) (int, error) {
	return h.pool.openRange(ctx, h.spec, func(o int) { h.logf("%s: %d sessions open", h.spec.Transport, o) })
}

func (h *localHolder) check(ctx context.Context) (int, int, int, error) {
	dead, failed, why := h.pool.check(ctx, 256)
	if why != nil {
		h.logf("first held session that ended: %v", why)
	}
	h.stopKeeper()
	<-h.keeperDone
	return dead, failed, int(h.pingFails.Load()), nil
}

func (h *localHolder) mem() procMem {
	m, _ := readProcMem(os.Getpid())
	return m
}

func (h *localHolder) close() {
	h.stopKeeper()
	<-h.keeperDone
	h.pool.closeAll()
}

// workerHolder holds the sessions in worker processes, an equal share each.
type workerHolder struct {
	ws   []*loadWorker
	logf func(string, ...any)
	m    procMem // summed at check
}

type loadWorker struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	lines  chan string
	stderr bytes.Buffer
}

func newWorkerHolder(s loadSpec, workers int, logf func(string, ...any)) (*workerHolder, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	h := &workerHolder{logf: logf}
	n := s.To - s.From
	for w := range workers {
		share := s
		share.From, share.To = s.From+n*w/workers, s.From+n*(w+1)/workers
		spec, _ := json.Marshal(share)
		lw := &loadWorker{cmd: exec.Command(exe, "-test.run=^$"), lines: make(chan string, 64)}
		lw.cmd.Env = append(os.Environ(), scaleWorkerEnv+"="+string(spec))
		lw.cmd.Stderr = &lw.stderr
		out, err := lw.cmd.StdoutPipe()
		if err == nil {
			lw.in, err = lw.cmd.StdinPipe()
		}
		if err == nil {
			err = lw.cmd.Start()
		}
		if err != nil {
			h.close()
			return nil, fmt.Errorf("start load worker %d: %w", w, err)
		}
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lw.lines <- sc.Text()
			}
			close(lw.lines)
		}()
		h.ws = append(h.ws, lw)
	}
	return h, nil
}

// next returns the worker's next line that starts with want, logging
// progress lines on the way.
func (h *workerHolder) next(ctx context.Context, w int, want string) ([]string, error) {
	lw := h.ws[w]
	for {
		select {
		case l, ok := <-lw.lines:
			if !ok {
				lw.cmd.Wait()
				return nil, fmt.Errorf("load worker %d exited: %s", w, strings.TrimSpace(lw.stderr.String()))
			}
			f := strings.SplitN(l, " ", 2)
			if f[0] == "progress" {
				h.logf("worker %d: %s sessions open", w, f[1])
				continue
			}
			if f[0] == "ended" && len(f) == 2 {
				msg, err := strconv.Unquote(f[1])
				if err != nil {
					msg = f[1]
				}
				h.logf("worker %d: %s", w, msg)
				continue
			}
			if f[0] == want && len(f) == 2 {
				return strings.Fields(f[1]), nil
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("load worker %d: %w", w, ctx.Err())
		}
	}
}

func (h *workerHolder) open(ctx context.Context) (int, error) {
	total := 0
	var first error
	for w := range h.ws {
		f, err := h.next(ctx, w, "done")
		if err != nil {
			return total, err
		}
		n, _ := strconv.Atoi(f[0])
		total += n
		_, msg, _ := strings.Cut(strings.Join(f, " "), " ")
		if msg, _ = strconv.Unquote(msg); msg != "" && first == nil {
			first = errors.New(msg)
		}
	}
	return total, first
}

func (h *workerHolder) check(ctx context.Context) (dead, failed, pingFails int, err error) {
	for _, lw := range h.ws {
		io.WriteString(lw.in, "check\n")
	}
	h.m = procMem{}
	for w := range h.ws {
		f, err := h.next(ctx, w, "checked")
		if err != nil || len(f) != 5 {
			return dead, failed, pingFails, fmt.Errorf("load worker %d check: %v %q", w, err, f)
		}
		v := make([]int64, 5)
		for i := range f {
			v[i], _ = strconv.ParseInt(f[i], 10, 64)
		}
		dead, failed, pingFails = dead+int(v[0]), failed+int(v[1]), pingFails+int(v[2])
		h.m.rss, h.m.hwm = h.m.rss+v[3], h.m.hwm+v[4]
	}
	return dead, failed, pingFails, nil
}

func (h *workerHolder) mem() procMem { return h.m }

// close ends the workers: stdin closed, each closes its sessions; killed
// if it has not exited within a minute.
func (h *workerHolder) close() {
	var wg sync.WaitGroup
	for _, lw := range h.ws {
		lw.in.Close()
		wg.Go(func() {
			t := time.AfterFunc(time.Minute, func() { lw.cmd.Process.Kill() })
			for range lw.lines {
			}
			lw.cmd.Wait()
			t.Stop()
		})
	}
	wg.Wait()
}

// scaleWorkerMain is a load worker's whole life (see scaleWorkerEnv).
func scaleWorkerMain(spec string) int {
	var s loadSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintf(os.Stderr, "load worker: spec: %v\n", err)
		return 2
	}
	var mu sync.Mutex
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", a...)
	}
	ctx := context.Background()
	// The holder logs only why the first held session ended, at a check.
	h := newLocalHolder(ctx, s, func(f string, a ...any) { say("ended %s", strconv.Quote(fmt.Sprintf(f, a...))) })
	opened, err := h.pool.openRange(ctx, s, func(o int) { say("progress %d", o) })
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	say("done %d %s", opened, strconv.Quote(msg))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "check" {
			dead, failed, pings, _ := h.check(ctx)
			m, _ := readProcMem(os.Getpid())
			say("checked %d %d %d %d %d", dead, failed, pings, m.rss, m.hwm)
		}
	}
	h.close()
	return 0
}
