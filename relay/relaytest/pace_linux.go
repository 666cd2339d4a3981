//go:build linux

package relaytest

import (
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// timer is a timerfd, nonblocking so that reads park in the poller; a
// zero timer (the system refused one) sleeps with time.Sleep.
type timer struct {
	f  *os.File
	rc syscall.RawConn
}

func newTimer() timer {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return timer{}
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return timer{}
	}
	return timer{f: f, rc: rc}
}

// sleep arms the timer for d from now and reads its expiry count, which
// the poller delivers once the timer fires.
func (t timer) sleep(d time.Duration) {
	armed := false
	if t.rc != nil {
		spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
		t.rc.Control(func(fd uintptr) {
			armed = unix.TimerfdSettime(int(fd), 0, &spec, nil) == nil
		})
	}
	if armed {
		var n [8]byte
		if _, err := io.ReadFull(t.f, n[:]); err == nil {
			return
		}
	}
	fallbacks.Add(1)
	time.Sleep(d)
}

func (t timer) close() {
	if t.f != nil {
		t.f.Close()
	}
}
