//! The `kill-process` actuator: signals a process through a pidfd, after checking that the pid
//! still names the process the alert described. Order matters: the pidfd is opened first (it
//! pins one process, whatever happens to the pid number afterwards), then the start time under
//! that pid is compared with the alert's, then the signal goes through the pidfd. A pid that
//! was recycled between the event and the request is therefore never signalled. This module
//! never kills pid 1 or the daemon itself, and holds no state (a kill is one-shot).

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::io::AsRawFd;

use super::{ActionError, ActionRequest, ActiveAction, Actuator, ExecContext, Outcome};

/// Start times are compared at clock-tick resolution: /proc gives whole ticks (10 ms at the
/// usual USER_HZ of 100), and an event source may derive `start_ns` from its own event clock
/// (fork time), a few microseconds off and possibly across a tick boundary. Two ticks either
/// way still cannot hide a recycled pid: reusing a pid means cycling through the whole pid
/// space, which takes far longer than 20 ms.
const START_TOLERANCE_TICKS: u64 = 2;

/// Clock ticks per second of /proc/<pid>/stat times (`sysconf(_SC_CLK_TCK)`; 100 when the
/// call fails, the value on every mainstream Linux architecture).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    #[expect(unsafe_code, reason = "sysconf through libc")]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Nanoseconds per clock tick.
fn tick_ns() -> u64 {
    1_000_000_000 / clock_ticks_per_sec()
}

/// Start time of `pid` in ns since boot, the unit of `Process.start_ns`: field 22 of
/// /proc/<pid>/stat (`starttime`, clock ticks since boot) times ns per tick. `None` when the
/// process is gone or the file cannot be parsed.
pub fn process_start_ns(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_starttime_ticks(&stat).map(|ticks| ticks.saturating_mul(tick_ns()))
}

/// `starttime` (field 22) from a /proc/<pid>/stat line. `comm` (field 2) may hold spaces and
/// parentheses, so fields are counted from the last ')'.
fn parse_starttime_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    // The text after ')' starts at field 3 (state), so field 22 is the 20th token.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether an alert's `start_ns` and the start time read now name the same process.
fn same_start(expected_ns: u64, actual_ns: u64) -> bool {
    expected_ns.abs_diff(actual_ns) < START_TOLERANCE_TICKS * tick_ns()
}

/// Highest signal number Linux accepts (`SIGRTMAX`).
const MAX_SIGNAL: u32 = 64;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct KillActuator {
    /// Never signalled: the daemon's own pid (tests substitute another "self").
    own_pid: u32,
}

impl Default for KillActuator {
    fn default() -> Self {
        KillActuator::new()
    }
}

impl KillActuator {
    pub fn new() -> KillActuator {
        KillActuator {
            own_pid: std::process::id(),
        }
    }

    /// Signals `pid` after the checks in the module docs. `start_ns` `None` skips the start
    /// time check (the WIT contract: a responder without a start time takes that risk).
    pub fn kill(&self, pid: u32, start_ns: Option<u64>, signal: u32) -> Result<(), ActionError> {
        if pid == 0 || pid == 1 {
            return Err(ActionError::InvalidTarget(format!(
                "pid {pid} is never signalled"
            )));
        }
        if pid == self.own_pid {
            return Err(ActionError::InvalidTarget(format!(
                "pid {pid} is the palisade daemon itself"
            )));
        }
        // Signal 0 is kill(2)'s probe: it checks that the process exists (and, here, that it
        // is still the alert's process) without delivering anything.
        if signal > MAX_SIGNAL {
            return Err(ActionError::InvalidTarget(format!(
                "signal {signal} is not a valid signal number (0..={MAX_SIGNAL})"
            )));
        }
        let pidfd = pidfd_open(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => ActionError::InvalidTarget(format!("no process {pid}")),
            Some(libc::EINVAL) => ActionError::InvalidTarget(format!(
                "pid {pid} is not a process (thread-group leader)"
            )),
            _ => ActionError::Failed(format!("pidfd_open({pid}): {e}")),
        })?;
        if let Some(expected) = start_ns {
            // Read after the pidfd is open: if this still shows the expected start time, the
            // pidfd holds that very process, and it can no longer be swapped for another.
            match process_start_ns(pid) {
                Some(actual) if same_start(expected, actual) => {}
                Some(actual) => {
                    return Err(ActionError::InvalidTarget(format!(
                        "pid {pid} was recycled: the process under it started at {actual} ns \
                         since boot, the alert's at {expected} ns; not signalled"
                    )))
                }
                None => {
                    return Err(ActionError::InvalidTarget(format!(
                        "process {pid} exited before it could be checked"
                    )))
                }
            }
        }
        pidfd_send_signal(&pidfd, signal).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => ActionError::InvalidTarget(format!("process {pid} has exited")),
            _ => ActionError::Failed(format!("pidfd_send_signal({pid}, {signal}): {e}")),
        })?;
        tracing::info!(pid, signal, start_ns, "process signalled");
        Ok(())
    }
}

impl Actuator for KillActuator {
    fn execute(&self, _ctx: &ExecContext<'_>, req: &ActionRequest) -> Result<Outcome, ActionError> {
        match req {
            ActionRequest::KillProcess {
                pid,
                start_ns,
                signal,
            } => self.kill(*pid, *start_ns, *signal).map(|()| Outcome::Done),
            other => Err(ActionError::Failed(format!(
                "kill actuator got a {} request",
                other.name()
            ))),
        }
    }

    fn release(&self, _action: &ActiveAction) -> Result<(), ActionError> {
        Err(ActionError::InvalidTarget(
            "a kill cannot be released".into(),
        ))
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    #[expect(unsafe_code, reason = "pidfd_open has no libc wrapper")]
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    #[expect(unsafe_code, reason = "taking ownership of a fresh descriptor")]
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, signal: u32) -> io::Result<()> {
    let signal =
        libc::c_int::try_from(signal).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid pidfd, a signal number, no siginfo (NULL) and no flags.
    #[expect(unsafe_code, reason = "pidfd_send_signal has no libc wrapper")]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starttime_is_field_22_even_with_odd_comm() {
        let stat = "4103 (a) b (c)) S 4102 4103 4102 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    410301 1000 10 18446744073709551615";
        assert_eq!(parse_starttime_ticks(stat), Some(410_301));
        assert_eq!(parse_starttime_ticks("1 (x) S 0"), None);
    }

    #[test]
    fn own_start_time_is_readable_and_matches_itself() {
        let me = process_start_ns(std::process::id()).unwrap();
        assert!(me > 0);
        assert!(same_start(me, me));
        assert!(same_start(me + tick_ns(), me));
        assert!(!same_start(me + 1_000_000_000, me));
    }

    #[test]
    fn refuses_init_self_and_bad_signals() {
        let k = KillActuator::new();
        for (pid, sig) in [(1, 9), (0, 9), (std::process::id(), 9)] {
            assert!(matches!(
                k.kill(pid, None, sig),
                Err(ActionError::InvalidTarget(_))
            ));
        }
        // A live process of ours, probed with signal 0 only (nothing is delivered).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(matches!(
            k.kill(pid, None, 65),
            Err(ActionError::InvalidTarget(_))
        ));
        let start = process_start_ns(pid).unwrap();
        let probe = k.kill(pid, Some(start), 0);
        let recycled = k.kill(pid, Some(start + 1_000_000_000), 0);
        let _ = child.kill();
        let _ = child.wait();
        probe.unwrap();
        match recycled {
            Err(ActionError::InvalidTarget(msg)) => assert!(msg.contains("recycled"), "{msg}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
