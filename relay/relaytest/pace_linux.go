//go:build linux

package relaytest

import (
	"errors"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

type timer struct {
	f *os.File // the timerfd, nonblocking, so reads park in the poller
}

func newTimer() (timer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return timer{}, err
	}
	return timer{f: os.NewFile(uintptr(fd), "timerfd")}, nil
}

// sleep arms the timer for d from now and reads its expiry count, which
// the poller delivers once the timer fires.
func (t timer) sleep(d time.Duration) {
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	fd := -1
	if rc, err := t.f.SyscallConn(); err == nil {
		rc.Control(func(p uintptr) { fd = int(p) })
	}
	if fd < 0 || unix.TimerfdSettime(fd, 0, &spec, nil) != nil {
		time.Sleep(d)
		return
	}
	var n [8]byte
	if _, err := io.ReadFull(t.f, n[:]); err != nil && !errors.Is(err, os.ErrClosed) {
		time.Sleep(d)
	}
}

func (t timer) close() { t.f.Close() }
