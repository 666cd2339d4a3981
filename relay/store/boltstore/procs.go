package boltstore

// ExtraProcs is how many Ps (GOMAXPROCS) a process that runs a Store should
// add to the runtime's default, and [Procs] applies it.
//
// fdatasync blocks its thread for a fraction of a millisecond (0.2–0.6 ms
// on the project's machine), and Go keeps the P of a goroutine in a
// syscall until sysmon retakes it: only once it has seen the same syscall
// on two of its passes (20 µs apart at best, up to 10 ms when it has been
// finding nothing to do), and not at all, for up to 10 ms, while that P's
// run queue is empty and another P is idle or spinning. Whatever the exact
// interplay (it was not traced), the measurement is what this rests on:
// with GOMAXPROCS equal to 2 cores the relay benchmark's process used 1.4
// of them and its group commits held 4–5 envelopes. Measured with
// relay/server BenchmarkRelayLoad, https, this store, 64 and 256 senders,
// three alternating pairs: 5,900–8,200 accepts/s with 2 Ps against
// 7,600–12,000 with 3, 9–16 envelopes per commit; the open-loop
// send→deliver p99 at 1,000 env/s (https) was lower in two of three
// pairs. h3 gained less, not at every concurrency, and its open-loop p99
// did not improve. The extra P lets the other cores' worth of goroutines
// run while one thread waits for the disk; when nothing syncs, the kernel
// shares the cores among one more thread than there are. Measured again
// on 2026-12-05 with the log store (three alternating rounds, both
// transports, 64 and 256 senders): 3 Ps against 2 took https from
// 24,875–32,199 to 29,603–39,285 accepts/s and h3 from 10,954–19,365 to
// 17,073–21,309; 4 Ps gained nothing over 3.
const ExtraProcs = 1

// Procs returns the GOMAXPROCS a process with a Store should run with,
// given the runtime's default.
func Procs(defaultProcs int) int { return max(1, defaultProcs) + ExtraProcs }
