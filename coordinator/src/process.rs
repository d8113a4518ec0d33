//! Metrics of the process the coordinator runs in, under the names every Prometheus client
//! library gives them (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …),
//! read at each scrape. On Linux they come from `/proc` (see proc(5)); elsewhere there are
//! none.
//!
//! They are read by hand rather than through a crate: a few numbers from three places,
//! where the crates that do it carry far more than this needs.
//!
//! - `/proc/self/stat`: CPU time in user and system mode (fields 14 and 15, in clock
//!   ticks), threads (20), start time (22, in clock ticks since boot), virtual memory size
//!   (23, in bytes) and resident set size (24, in pages). The fields are counted after the
//!   last `)`, since the command name before it may hold spaces and parentheses.
//! - `/proc/stat`: `btime`, when the machine booted, in seconds since the Unix epoch.
//! - `/proc/self/fd`: one entry per open file descriptor (reading it opens one more, which
//!   is counted too, as other client libraries do).
//!
//! The soft limit on open files comes from `getrlimit(RLIMIT_NOFILE)`, clock ticks per
//! second and the page size from `sysconf`.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

/// Writes the process metrics on each scrape.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        match Sample::read() {
            Some(sample) => sample.encode(&mut encoder),
            None => Ok(()),
        }
    }
}

/// The process's numbers at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    /// CPU time spent in user and system mode, in seconds.
    cpu_seconds: f64,
    /// Resident memory, in bytes.
    resident_bytes: u64,
    /// Virtual memory, in bytes.
    virtual_bytes: u64,
    /// Operating-system threads.
    threads: u64,
    /// When the process started, in seconds since the Unix epoch.
    start_time_seconds: f64,
    /// Open file descriptors.
    open_fds: u64,
    /// Most file descriptors it may open (the soft limit).
    max_fds: u64,
}

impl Sample {
    /// Reads the numbers of this process, or `None` where they cannot be read.
    #[cfg(target_os = "linux")]
    fn read() -> Option<Sample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes to the one struct it is given.
        let max_fds = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
            0 => limit.rlim_cur,
            _ => return None,
        };
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let machine = Machine {
            ticks_per_second: u64::try_from(ticks).ok().filter(|&t| t > 0)?,
            page_size: u64::try_from(page).ok().filter(|&p| p > 0)?,
            boot_time: boot_time(&boot)?,
        };
        let mut sample = machine.parse_stat(&stat)?;
        sample.open_fds = open_fds;
        sample.max_fds = max_fds;
        Some(sample)
    }

    /// Reads the numbers of this process, or `None` where they cannot be read.
    #[cfg(not(target_os = "linux"))]
    fn read() -> Option<Sample> {
        None
    }

    /// Writes every metric of the sample.
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let cpu = ConstCounter::new(self.cpu_seconds);
        let help = "Total user and system CPU time spent";
        encoder
            .encode_descriptor("process_cpu", help, Some(&Unit::Seconds), cpu.metric_type())
            .and_then(|m| cpu.encode(m))?;
        let start = self.start_time_seconds;
        let help = "Start time of the process since the Unix epoch";
        gauge(
            encoder,
            "process_start_time",
            help,
            Some(Unit::Seconds),
            start,
        )?;
        for (name, help, unit, value) in [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                self.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                self.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                self.open_fds,
            ),
            (
                "process_max_fds",
                "Most open file descriptors allowed",
                None,
                self.max_fds,
            ),
            (
                "process_threads",
                "Operating-system threads",
                None,
                self.threads,
            ),
        ] {
            gauge(encoder, name, help, unit, value)?;
        }
        Ok(())
    }
}

/// Writes one gauge.
fn gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: N,
) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    encoder
        .encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())
        .and_then(|m| gauge.encode(m))
}

/// What turns `/proc/self/stat`'s numbers into seconds and bytes.
#[derive(Debug, Clone, Copy)]
struct Machine {
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    ticks_per_second: u64,
    /// Bytes per page (`sysconf(_SC_PAGESIZE)`).
    page_size: u64,
    /// When the machine booted, in seconds since the Unix epoch.
    boot_time: u64,
}

impl Machine {
    /// The sample `/proc/self/stat` describes (its file descriptors left at 0), or `None`
    /// if it is not what proc(5) says.
    fn parse_stat(&self, stat: &str) -> Option<Sample> {
        let (_, after_name) = stat.rsplit_once(')')?;
        // Field 3 (the state) comes first after the name: field n is fields[n - 3].
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let ticks = self.ticks_per_second as f64;
        Some(Sample {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_time_seconds: self.boot_time as f64 + field(22)? as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)?.saturating_mul(self.page_size),
            open_fds: 0,
            max_fds: 0,
        })
    }
}

/// The `btime` line of `/proc/stat`: when the machine booted, in seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_become_seconds_and_bytes() {
        let machine = Machine {
            ticks_per_second: 100,
            page_size: 4096,
            boot_time: 1_700_000_000,
        };
        // A command name with spaces and a parenthesis, as proc(5) warns.
        let stat = "4242 (dist chan) x) S 1 4242 4242 0 -1 4194560 9000 0 0 0 \
                    250 75 0 0 20 0 7 0 123456 987654321 2500 18446744073709551615";
        let sample = machine.parse_stat(stat).expect("a valid stat line");
        assert_eq!(sample.cpu_seconds, 3.25); // (250 + 75) ticks
        assert_eq!(sample.threads, 7);
        assert_eq!(sample.start_time_seconds, 1_700_001_234.56); // boot + 123456 ticks
        assert_eq!(sample.virtual_bytes, 987_654_321);
        assert_eq!(sample.resident_bytes, 2500 * 4096);
        assert_eq!(machine.parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read_from_proc() {
        let sample = Sample::read().expect("Linux has /proc");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(sample.resident_bytes > 1 << 20, "{sample:?}");
        assert!(sample.virtual_bytes >= sample.resident_bytes, "{sample:?}");
        assert!(sample.threads >= 1 && sample.open_fds >= 3, "{sample:?}");
        assert!(sample.max_fds >= sample.open_fds, "{sample:?}");
        assert!(
            sample.start_time_seconds <= now + 1.0 && sample.start_time_seconds > now - 3600.0,
            "this test started within the hour: {sample:?}"
        );
    }
}
