package boltstore

// ExtraProcs is how many Ps (GOMAXPROCS) a process that runs a Store should
// add to the runtime's default, and [Procs] applies it.
//
// fdatasync blocks its thread for a fraction of a millisecond (0.2–0.6 ms
// on the project's machine), and Go keeps the P of a goroutine in a
// syscall until sysmon retakes it. sysmon backs off to a 10 ms poll when
// it finds nothing to retake, so under a steady stream of short syncs it
// rarely retakes one: with GOMAXPROCS equal to the cores, the committer's
// sync held one of two Ps about 40 % of the time. Measured with the relay
// benchmark (relay/server BenchmarkRelayLoad, https, this store, 64 and
// 256 senders, three alternating pairs): a process used 1.4 of 2 cores,
// group commits held 4–5 envelopes, and accepts/s were 5,900–8,200;
// with one P more, 7,600–12,000 accepts/s and 9–13 envelopes per commit,
// and the open-loop send→deliver p99 at 1,000 env/s fell in two of three
// pairs. The extra P lets the other cores' worth of goroutines run while
// one thread waits for the disk; when nothing syncs, the kernel shares the
// cores among one more thread than there are.
const ExtraProcs = 1

// Procs returns the GOMAXPROCS a process with a Store should run with,
// given the runtime's default.
func Procs(defaultProcs int) int { return max(1, defaultProcs) + ExtraProcs }
