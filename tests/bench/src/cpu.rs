//! CPU time spent by the PostgreSQL server and by this process over a measured span.
//!
//! On this 2-core VM wall-clock throughput moves by up to 2x between runs, while the CPU
//! time the server spends per step barely moves: it is the number to compare two builds
//! by. The server's share is summed over every process named `postgres` on this machine
//! (`/proc/<pid>/stat`), so it is only meaningful when the server is local and nothing
//! else uses it during the span; where `/proc` cannot be read it is reported as NaN.

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// CPU ticks of one `/proc/<pid>/stat` line: utime + stime (fields 14 and 15), plus with
/// `reaped` the times of its exited, waited-for children (cutime + cstime, 16 and 17).
/// The command name in parentheses may hold spaces, so fields are counted after its `)`.
fn ticks_of(stat: &str, reaped: bool) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    let mut ticks = utime + stime;
    if reaped {
        ticks += rest.get(13)?.parse::<u64>().ok()? + rest.get(14)?.parse::<u64>().ok()?;
    }
    Some((comm, ticks))
}

fn server_ticks() -> Option<u64> {
    let mut total = 0u64;
    let mut seen = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process can exit between the listing and the read: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Backends are children of the postmaster: one that exits during the span (a
        // closed connection) lives on in the postmaster's reaped times, so nothing is
        // counted twice and nothing is lost.
        if let Some((comm, ticks)) = ticks_of(&stat, true) {
            if comm == "postgres" {
                total += ticks;
                seen = true;
            }
        }
    }
    seen.then_some(total)
}

fn own_ticks() -> Option<u64> {
    ticks_of(&std::fs::read_to_string("/proc/self/stat").ok()?, false).map(|(_, t)| t)
}

/// A span started by [`Meter::start`]; [`Meter::stop`] gives CPU seconds used since.
pub struct Meter {
    server: Option<u64>,
    own: Option<u64>,
}

/// CPU seconds over a span: the server's (every `postgres` process) and this process's.
pub struct Used {
    pub server_s: f64,
    pub own_s: f64,
}

impl Meter {
    pub fn start() -> Meter {
        Meter {
            server: server_ticks(),
            own: own_ticks(),
        }
    }

    pub fn stop(&self) -> Used {
        let secs = |before: Option<u64>, after: Option<u64>| match (before, after) {
            (Some(b), Some(a)) => a.saturating_sub(b) as f64 / TICKS_PER_S,
            _ => f64::NAN,
        };
        Used {
            server_s: secs(self.server, server_ticks()),
            own_s: secs(self.own, own_ticks()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ticks_of;

    #[test]
    fn reads_utime_and_stime_after_a_command_name_with_spaces() {
        let line = "4242 (postgres: bench (x)) S 1 2 3 4 5 6 7 8 9 10 120 30 7 5 20 0 1 0";
        let comm = "postgres: bench (x)".to_owned();
        assert_eq!(ticks_of(line, false), Some((comm.clone(), 150)));
        assert_eq!(ticks_of(line, true), Some((comm, 162)));
    }
}
