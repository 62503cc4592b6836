//! What the figures were measured on (cores, CPU model, memory, disks, the data directory's
//! file system) and a process's CPU time and memory, all read from `/proc` and `/sys` (Linux).
//! Anything unreadable is left out rather than failing the run.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub name: String,
    /// Model, or the driver when the device has no model (virtio).
    pub model: Option<String>,
    pub size_bytes: u64,
    /// As the kernel reports it (virtual disks often claim to be rotational).
    pub rotational: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: Option<String>,
    pub memory_bytes: Option<u64>,
    pub kernel: Option<String>,
    pub disks: Vec<Disk>,
    /// The device and file system holding the server's data directory (local server only).
    pub data_dir_filesystem: Option<String>,
}

impl Machine {
    /// Describes this machine; `data_dir` is where the local server keeps its data.
    pub fn describe(data_dir: Option<&Path>) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(&cpuinfo),
            memory_bytes: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| status_kib(&m, "MemTotal:"))
                .map(|kib| kib * 1024),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_owned()),
            disks: disks(),
            data_dir_filesystem: data_dir.and_then(filesystem_of),
        }
    }

    pub fn summary(&self) -> String {
        let disks: Vec<String> = self
            .disks
            .iter()
            .map(|d| {
                format!(
                    "{} ({}, {:.0} GiB{})",
                    d.name,
                    d.model.as_deref().unwrap_or("unknown model"),
                    d.size_bytes as f64 / 1073741824.0,
                    match d.rotational {
                        Some(true) => ", rotational",
                        Some(false) => ", non-rotational",
                        None => "",
                    }
                )
            })
            .collect();
        format!(
            "{} cores, {}, {:.0} GiB RAM, disks: {}{}",
            self.cores,
            self.cpu_model.as_deref().unwrap_or("unknown CPU"),
            self.memory_bytes.unwrap_or(0) as f64 / 1073741824.0,
            if disks.is_empty() {
                "unknown".to_owned()
            } else {
                disks.join(", ")
            },
            self.data_dir_filesystem
                .as_ref()
                .map_or(String::new(), |f| format!("; data dir on {f}"))
        )
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Block devices from `/sys/block`, without loop, RAM and zram devices and empty ones.
fn disks() -> Vec<Disk> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut disks: Vec<Disk> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)) {
                return None;
            }
            let dir = entry.path();
            let sectors: u64 = read_trimmed(&dir.join("size"))?.parse().ok()?;
            if sectors == 0 {
                return None;
            }
            let model = read_trimmed(&dir.join("device/model")).or_else(|| {
                std::fs::read_link(dir.join("device/driver"))
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            });
            Some(Disk {
                name,
                model,
                // `size` counts 512-byte sectors whatever the device's block size.
                size_bytes: sectors * 512,
                rotational: read_trimmed(&dir.join("queue/rotational")).map(|r| r == "1"),
            })
        })
        .collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

/// "DEVICE (FSTYPE)" of the mount that holds `path` (the longest matching mount point).
fn filesystem_of(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount_point = fields.next()?.replace("\\040", " ");
            let fstype = fields.next()?;
            path.starts_with(&mount_point)
                .then(|| (mount_point.len(), format!("{device} ({fstype})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, description)| description)
}

/// A process's CPU time and memory at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSample {
    /// User + system CPU time.
    pub cpu_us: u64,
    pub rss_bytes: u64,
    pub rss_peak_bytes: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status` (`"self"` for this process).
pub fn sample_process(pid: &str) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks_per_s = if ticks_per_s > 0 {
        ticks_per_s as u64
    } else {
        100
    };
    Some(ProcessSample {
        cpu_us: cpu_ticks(&stat)? * 1_000_000 / ticks_per_s,
        rss_bytes: status_kib(&status, "VmRSS:")? * 1024,
        rss_peak_bytes: status_kib(&status, "VmHWM:").unwrap_or(0) * 1024,
    })
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   1234 kB` line of `/proc/<pid>/status` or `/proc/meminfo`, in KiB.
fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (tollgate (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 9 0 123 456 789";
        assert_eq!(cpu_ticks(stat), Some(280));
        let status = "Name:\ttollgate\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"),
            Some("AMD EPYC 7B13".into())
        );
    }

    #[test]
    fn this_process_and_machine_can_be_described() {
        let sample = sample_process("self").unwrap();
        assert!(sample.rss_bytes > 0);
        let machine = Machine::describe(Some(Path::new(".")));
        assert!(machine.cores >= 1);
        assert!(machine.summary().contains("cores"));
    }
}
