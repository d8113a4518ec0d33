//! How far apart this machine's first two cores are: the round trip of one cache line
//! between two threads pinned to them.
//!
//! On a virtual machine the host decides where its virtual cores run, and it may move them
//! while a run goes on: two cores that share a cache return a line in about 100 ns, two on
//! different chips of the host take four times that or more. Every row where work crosses
//! threads (the coordinator's connections, its scheduler and its result receiver, and the
//! worker processes beside them) slows down with it, ours more than the plain echo, which
//! shares nothing between its connections. The report prints this figure at the start and
//! at the end of a run, so that two runs are compared only when they ran on alike cores.

use std::{
    hint,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Barrier,
    },
    time::Instant,
};

/// Round trips per probe: well under a second even on distant cores.
const ROUND_TRIPS: u64 = 100_000;

/// The line the two threads pass back and forth, alone in its cache line.
#[repr(align(128))]
struct Line(AtomicU64);

/// The mean round trip of a cache line between the first two cores this process may run
/// on, in nanoseconds; `None` with fewer than two cores or when a thread cannot be pinned.
pub fn round_trip_ns() -> Option<f64> {
    let [a, b] = first_two_cpus()?;
    let line = Line(AtomicU64::new(0));
    // Both threads pin themselves, then learn at the barrier whether both could.
    let (barrier, unpinned) = (Barrier::new(2), AtomicBool::new(false));
    let pinned = |cpu| {
        if pin(cpu).is_none() {
            unpinned.store(true, Ordering::Relaxed);
        }
        barrier.wait();
        !unpinned.load(Ordering::Relaxed)
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            if pinned(b) {
                for i in 0..ROUND_TRIPS {
                    wait_for(&line, 2 * i + 1);
                    line.0.store(2 * i + 2, Ordering::Release);
                }
            }
        });
        // A thread of its own, so that the caller's affinity stays as it was.
        let ask = scope.spawn(|| {
            pinned(a).then(|| {
                let start = Instant::now();
                for i in 0..ROUND_TRIPS {
                    line.0.store(2 * i + 1, Ordering::Release);
                    wait_for(&line, 2 * i + 2);
                }
                start.elapsed().as_nanos() as f64 / ROUND_TRIPS as f64
            })
        });
        ask.join().ok()?
    })
}

/// Spins until `line` holds `value`.
fn wait_for(line: &Line, value: u64) {
    while line.0.load(Ordering::Acquire) != value {
        hint::spin_loop();
    }
}

/// The first two CPUs in this process's affinity mask.
fn first_two_cpus() -> Option<[usize; 2]> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and sched_getaffinity writes at most
    // its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        set
    };
    let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|&cpu| {
        // SAFETY: `cpu` is below CPU_SETSIZE.
        unsafe { libc::CPU_ISSET(cpu, &set) }
    });
    Some([cpus.next()?, cpus.next()?])
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Option<()> {
    // SAFETY: as in `first_two_cpus`; `cpu` is below CPU_SETSIZE.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    ok.then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_a_round_trip_when_two_cores_are_there() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match round_trip_ns() {
            Some(ns) => assert!(ns > 0.0 && ns.is_finite(), "{ns}"),
            None => assert!(cores < 2, "{cores} cores, yet no figure"),
        }
    }
}
