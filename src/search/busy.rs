//! How much of the machine the hub's own work has taken between two looks: the process's
//! CPU time less that of the indexer's threads, as a share of the cores the process may use.
//! The indexer yields to a busy hub with it: even in the kernel's idle class its passes cost
//! the hub fan-out throughput and latency (they share the caches and the memory bandwidth,
//! and fill every gap the hub's threads leave), so while the hub takes more than a share of
//! the machine (`--index-yield-share`) the indexer starts no pass, and lags instead.
//!
//! CPU time, not the async runtime's busy time: fan-out runs on the egress shards' own
//! runtimes, and a request's model pass on the model's threads; the process clock counts
//! them all, containers' CPU quotas included (through the cores the process may use).

use std::time::{Duration, Instant};

/// The hub's CPU time at the last look.
pub struct HubLoad {
    cores: f64,
    /// The kernel's ids of the threads whose time is not the hub's (the indexer's).
    exclude: Box<dyn Fn() -> Vec<i32> + Send>,
    at: Instant,
    hub_cpu: Duration,
}

impl HubLoad {
    /// Starts looking; `exclude` lists the threads whose time does not count.
    pub fn new(exclude: impl Fn() -> Vec<i32> + Send + 'static) -> HubLoad {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut load = HubLoad {
            cores,
            exclude: Box::new(exclude),
            at: Instant::now(),
            hub_cpu: Duration::ZERO,
        };
        load.hub_cpu = load.hub_cpu_now();
        load
    }

    /// The share (0 to 1) of the cores the hub's own threads used since the last look.
    pub fn share_since_last(&mut self) -> f64 {
        let (now, cpu) = (Instant::now(), self.hub_cpu_now());
        let share = share(
            cpu.saturating_sub(self.hub_cpu),
            now.duration_since(self.at),
            self.cores,
        );
        (self.at, self.hub_cpu) = (now, cpu);
        share
    }

    fn hub_cpu_now(&self) -> Duration {
        let excluded: Duration = (self.exclude)().into_iter().filter_map(thread_cpu).sum();
        process_cpu().saturating_sub(excluded)
    }
}

/// `cpu` spent over `wall` on `cores`, as a share from 0 to 1.
fn share(cpu: Duration, wall: Duration, cores: f64) -> f64 {
    let capacity = wall.as_secs_f64() * cores;
    if capacity > 0.0 {
        (cpu.as_secs_f64() / capacity).min(1.0)
    } else {
        0.0
    }
}

/// CPU time of every thread of the process so far, ended threads included.
fn process_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill; the clock exists on every
    // platform the hub builds for.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time of the process's thread `tid` so far (user and system), from
/// `/proc/self/task/<tid>/stat`; `None` where that cannot be read.
fn thread_cpu(tid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    stat_cpu(&stat, ticks)
}

/// User plus system time from a `stat` line, whose clock ticks are `ticks` a second. The
/// thread's name (second field, in parentheses) may hold spaces and parentheses itself, so
/// the fields are counted from the last `)`: utime and stime are the 12th and 13th after it.
fn stat_cpu(stat: &str, ticks: i64) -> Option<Duration> {
    if ticks <= 0 {
        return None;
    }
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let (user, system): (u64, u64) = (fields.next()?.parse().ok()?, fields.next()?.parse().ok()?);
    Some(Duration::from_secs_f64(
        (user + system) as f64 / ticks as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::{share, stat_cpu, thread_cpu};
    use std::time::Duration;

    #[test]
    fn a_stat_line_gives_user_plus_system_time_whatever_the_threads_name() {
        // Fields of a real line (Linux 6), with a name holding ") (" to trip a naive split.
        let line = "4242 (carapace) (x) R 1 4242 4242 0 -1 4194368 1021 0 0 0 \
                    250 30 0 0 39 19 1 0 1234 0 0";
        assert_eq!(stat_cpu(line, 100), Some(Duration::from_millis(2800)));
        assert_eq!(stat_cpu("4242 (short) R 1", 100), None);
        assert_eq!(stat_cpu(line, 0), None);
    }

    #[test]
    fn the_share_is_cpu_over_the_cores_time() {
        let s = share(Duration::from_millis(500), Duration::from_secs(1), 2.0);
        assert!((s - 0.25).abs() < 1e-9);
        assert_eq!(
            share(Duration::from_secs(5), Duration::from_secs(1), 2.0),
            1.0
        );
        assert_eq!(share(Duration::from_secs(1), Duration::ZERO, 2.0), 0.0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_threads_cpu_time_is_read_from_the_kernel() {
        // A thread that spins until the kernel has counted 200 ms of CPU for it (however
        // loaded the machine; 10 s at most), then reports its own reading.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let tid = crate::search::embedding::thread_id().unwrap();
            let start = std::time::Instant::now();
            while thread_cpu(tid).is_none_or(|t| t < Duration::from_millis(200))
                && start.elapsed() < Duration::from_secs(10)
            {
                std::hint::spin_loop();
            }
            tx.send(thread_cpu(tid)).unwrap();
        });
        let spent = rx.recv().unwrap().unwrap();
        assert!(
            spent >= Duration::from_millis(200) && spent < Duration::from_secs(5),
            "{spent:?}"
        );
    }
}
