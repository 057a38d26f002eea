//! The server's memory, read from `/proc`: its resident set size, and finding which process
//! listens on a loopback address when `--server-pid` is not given.

use std::net::SocketAddr;

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The process listening on `addr` (or on the wildcard address at its port).
pub fn listener_pid(addr: SocketAddr) -> Option<u32> {
    let inode = listening_inode(addr)?;
    let want = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

fn listening_inode(addr: SocketAddr) -> Option<u64> {
    let (file, hex_ip) = match addr {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!("{:08X}", u32::from_le_bytes(a.ip().octets())),
        ),
        SocketAddr::V6(_) => ("/proc/net/tcp6", String::new()),
    };
    let any = if addr.is_ipv4() {
        "00000000".to_string()
    } else {
        "0".repeat(32)
    };
    let port = format!("{:04X}", addr.port());
    let table = std::fs::read_to_string(file).ok()?;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
        else {
            continue;
        };
        let Some((ip, p)) = local.split_once(':') else {
            continue;
        };
        let ip_ok = ip == any || (!hex_ip.is_empty() && ip == hex_ip);
        if *state == "0A" && p == port && ip_ok {
            return inode.parse().ok();
        }
    }
    None
}

/// CPU time (user + system) `pid` has used, in seconds (`/proc/<pid>/stat`, 100 ticks/s).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_listener_and_memory() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(listener_pid(addr), Some(std::process::id()));
        assert!(rss_kib(std::process::id()).unwrap_or(0) > 0);
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
