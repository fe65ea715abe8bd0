//! `shell-spawn`: alerts when a service that never needs a shell (web server, database,
//! language runtime) starts one (`shell-spawned-by-service`), and when an interactive shell is
//! started right after a socket was duplicated onto stdin/stdout/stderr (`reverse-shell`).
//!
//! The reverse-shell rule spans two events that may land in different batches or different
//! instances (an instance can be recycled between them), so the socket dup is remembered in the
//! host's `state` with a TTL rather than in guest memory.

use std::time::Duration;

use palisade_sdk::{
    glob_match, state, Alert, Alerts, Config, Detector, EventKind, EventRef, ExecData,
    FdTargetKind, NameSet, PluginInfo, Priority, Process, Subscription,
};

const DEFAULT_SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash", "fish", "tcsh", "csh",
];

/// Programs that serve requests and have no business starting a shell.
const DEFAULT_SERVICES: &[&str] = &[
    "nginx",
    "httpd",
    "apache2",
    "lighttpd",
    "caddy",
    "php-fpm*",
    "php-cgi*",
    "node",
    "java",
    "python",
    "python3*",
    "ruby",
    "uwsgi",
    "gunicorn",
    "postgres",
    "postmaster",
    "mysqld",
    "mariadbd",
    "redis-server",
    "mongod",
    "memcached",
    "haproxy",
    "envoy",
    "tomcat*",
];

const KNOWN_KEYS: &[&str] = &["shells", "services", "priority", "reverse-shell-window-ms"];

/// The detector; see the crate docs.
pub struct ShellSpawn {
    shells: NameSet,
    shell_names: Vec<String>,
    services: NameSet,
    priority: Priority,
    window: Duration,
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// State key remembering that `pid` put a socket on one of its standard descriptors.
fn dup_key(pid: u32) -> String {
    format!("sock-dup:{pid}")
}

/// True when the arguments ask for an interactive shell: `-i`, or `-i` inside a flag cluster
/// (`-li`, `-il`) before the first non-flag argument.
fn is_interactive(args: &[String]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| a.starts_with('-') && *a != "--" && *a != "-")
        .any(|a| !a.starts_with("--") && a[1..].contains('i'))
}

impl ShellSpawn {
    fn is_shell_name(&self, name: &str) -> bool {
        self.shell_names.iter().any(|s| {
            if s.contains('*') {
                glob_match(s, name)
            } else {
                s == name
            }
        })
    }

    /// The shell's name when the exec starts a shell: the file itself, or busybox running a
    /// shell applet (`/bin/busybox sh ...` or a `sh` symlink to busybox).
    fn exec_shell<'a>(&self, exec: &'a ExecData) -> Option<&'a str> {
        let file = basename(&exec.filename);
        if self.is_shell_name(file) {
            return Some(file);
        }
        if file == "busybox" {
            let arg0 = exec.args.first().map(|a| basename(a)).unwrap_or("");
            if self.is_shell_name(arg0) {
                return Some(arg0);
            }
            if let Some(applet) = exec.args.get(1).map(String::as_str) {
                if self.is_shell_name(applet) {
                    return Some(applet);
                }
            }
        }
        None
    }

    fn on_exec(&self, exec: &ExecData, process: &Process, alerts: &mut Alerts) {
        let Some(shell) = self.exec_shell(exec) else {
            return;
        };

        if let Some(parent) = process.parent() {
            // Only the nearest parent counts: in `php-fpm -> sh -> bash` the first shell alerts,
            // the second one's parent is a shell and does not repeat the alert.
            if self.services.matches_ancestor(parent) && !self.shells.matches_ancestor(parent) {
                let parent_exe = if parent.exe.is_empty() {
                    parent.comm.as_str()
                } else {
                    parent.exe.as_str()
                };
                alerts.push(
                    Alert::new(
                        "shell-spawned-by-service",
                        self.priority,
                        format!(
                            "Shell {} started by service {} (parent pid {}, pid {}, cmdline \"{}\", container {})",
                            exec.filename,
                            parent_exe,
                            parent.pid,
                            process.pid,
                            exec.args.join(" "),
                            process.container_id.as_deref().unwrap_or("host"),
                        ),
                    )
                    .tag("T1059.004")
                    .tag("mitre_execution")
                    .tag("process")
                    .field("shell", shell)
                    .field("filename", &exec.filename)
                    .field("args", exec.args.join(" "))
                    .field("parent.exe", &parent.exe)
                    .field("parent.name", &parent.comm)
                    .field("parent.pid", parent.pid)
                    .process_fields(process),
                );
            }
        }

        if is_interactive(&exec.args) {
            // The dup may have been done by this process before exec, or by its parent before
            // forking the shell (python/perl one-liners); either way the fds are inherited.
            let by_self = state::is_marked(&dup_key(process.pid));
            let by_parent = process
                .parent()
                .is_some_and(|p| state::is_marked(&dup_key(p.pid)));
            if by_self || by_parent {
                alerts.push(
                    Alert::new(
                        "reverse-shell",
                        Priority::Critical,
                        format!(
                            "Interactive shell {} with a socket on its standard streams (pid {}, cmdline \"{}\", parent {}, container {})",
                            exec.filename,
                            process.pid,
                            exec.args.join(" "),
                            process.parent().map(|p| p.comm.as_str()).unwrap_or("?"),
                            process.container_id.as_deref().unwrap_or("host"),
                        ),
                    )
                    .tag("T1059")
                    .tag("T1059.004")
                    .tag("mitre_execution")
                    .tag("network")
                    .field("shell", shell)
                    .field("filename", &exec.filename)
                    .field("args", exec.args.join(" "))
                    .field("socket_dup_by", if by_self { "self" } else { "parent" })
                    .process_fields(process),
                );
            }
        }
    }
}

impl Detector for ShellSpawn {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "shell-spawn",
            env!("CARGO_PKG_VERSION"),
            "Shells started by network services, and interactive shells wired to a socket (reverse shells)",
        )
        .subscribe(Subscription::to([EventKind::Exec, EventKind::FdDup]))
        .config("shells", DEFAULT_SHELLS)
        .config("services", DEFAULT_SERVICES)
        .config("priority", "error")
        .config("reverse-shell-window-ms", 5_000)
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        let shells = config.text_list_or("shells", DEFAULT_SHELLS)?;
        let window_ms = config.unsigned_or("reverse-shell-window-ms", 5_000)?;
        if window_ms == 0 {
            return Err("config key `reverse-shell-window-ms`: must be at least 1".to_string());
        }
        Ok(ShellSpawn {
            shells: NameSet::new(&shells),
            shell_names: shells,
            services: NameSet::new(config.text_list_or("services", DEFAULT_SERVICES)?),
            priority: config.priority_or("priority", Priority::Error)?,
            window: Duration::from_millis(window_ms),
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        if let Some(exec) = event.exec() {
            self.on_exec(exec, event.process, alerts);
        } else if let Some(dup) = event.fd_dup() {
            if dup.target_kind == FdTargetKind::Socket && dup.newfd <= 2 {
                if let Err(e) = state::mark(&dup_key(event.process.pid), self.window) {
                    palisade_sdk::warn!(
                        "cannot remember socket dup of pid {}: {e}",
                        event.process.pid
                    );
                }
            }
        }
    }
}

palisade_sdk::export_detector!(ShellSpawn);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{run_batch, testing, EventBatch, EventData, FdDupData};

    fn exec(filename: &str, args: &[&str]) -> EventData {
        EventData::Exec(ExecData {
            filename: filename.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            args_truncated: false,
        })
    }

    fn dup(oldfd: u32, newfd: u32, kind: FdTargetKind) -> EventData {
        EventData::FdDup(FdDupData {
            oldfd,
            newfd,
            target_kind: kind,
        })
    }

    fn detector() -> ShellSpawn {
        ShellSpawn::init(Config::new(ShellSpawn::describe().default_config)).unwrap()
    }

    fn rules(det: &mut ShellSpawn, events: &[(&Process, EventData)]) -> Vec<(String, u32)> {
        let mut batch = EventBatch::new();
        for (i, (p, d)) in events.iter().enumerate() {
            batch.push(p, i as u64, d.clone());
        }
        run_batch(det, &batch)
            .into_iter()
            .map(|a| (a.rule, a.event_index))
            .collect()
    }

    #[test]
    fn shell_under_service_alerts_once_per_chain() {
        testing::reset();
        let mut det = detector();
        let under_nginx =
            Process::new(100, "sh", "/bin/sh").with_ancestor(50, "nginx", "/usr/sbin/nginx");
        let under_sh = Process::new(101, "bash", "/bin/bash").with_ancestor(100, "sh", "/bin/sh");
        let under_fpm = Process::new(102, "dash", "/bin/dash").with_ancestor(
            51,
            "php-fpm8.2",
            "/usr/sbin/php-fpm8.2",
        );
        let under_sshd =
            Process::new(103, "bash", "/bin/bash").with_ancestor(52, "sshd", "/usr/sbin/sshd");
        let under_java =
            Process::new(104, "busybox", "/bin/busybox").with_ancestor(53, "java", "/usr/bin/java");
        let ls_under_nginx =
            Process::new(105, "ls", "/bin/ls").with_ancestor(50, "nginx", "/usr/sbin/nginx");
        let got = rules(
            &mut det,
            &[
                (&under_nginx, exec("/bin/sh", &["sh", "-c", "id"])),
                (&under_sh, exec("/bin/bash", &["bash"])),
                (&under_fpm, exec("/usr/bin/dash", &["dash"])),
                (&under_sshd, exec("/bin/bash", &["-bash"])),
                (
                    &under_java,
                    exec("/bin/busybox", &["busybox", "sh", "-c", "id"]),
                ),
                (&ls_under_nginx, exec("/bin/ls", &["ls"])),
            ],
        );
        let want: Vec<(String, u32)> = [0, 2, 4]
            .iter()
            .map(|&i| ("shell-spawned-by-service".to_string(), i))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn alert_carries_parent_and_process_fields() {
        testing::reset();
        let mut det = detector();
        let p = Process::new(100, "sh", "/bin/sh")
            .with_ancestor(50, "nginx", "/usr/sbin/nginx")
            .with_container("c0ffee");
        let mut batch = EventBatch::new();
        batch.push(&p, 1, exec("/bin/sh", &["sh", "-c", "id"]));
        let alerts = run_batch(&mut det, &batch);
        let a = &alerts[0];
        assert_eq!(a.priority, Priority::Error);
        assert_eq!(a.tags[0], "T1059.004");
        assert_eq!(a.get_field("parent.exe"), Some("/usr/sbin/nginx"));
        assert_eq!(a.get_field("shell"), Some("sh"));
        assert_eq!(a.get_field("container.id"), Some("c0ffee"));
        assert_eq!(
            a.message,
            "Shell /bin/sh started by service /usr/sbin/nginx (parent pid 50, pid 100, cmdline \"sh -c id\", container c0ffee)"
        );
    }

    #[test]
    fn reverse_shell_needs_a_recent_socket_dup_by_self_or_parent() {
        testing::reset();
        testing::set_now_ns(1_000_000_000);
        let mut det = detector();
        let user =
            Process::new(200, "bash", "/bin/bash").with_ancestor(1, "sshd", "/usr/sbin/sshd");
        // dup of a pipe: no mark; interactive shell without socket: no alert.
        assert!(rules(
            &mut det,
            &[
                (&user, dup(3, 0, FdTargetKind::Pipe)),
                (&user, exec("/bin/bash", &["bash", "-i"]))
            ]
        )
        .is_empty());
        // socket dup onto fd 5: not a standard stream.
        assert!(rules(
            &mut det,
            &[
                (&user, dup(3, 5, FdTargetKind::Socket)),
                (&user, exec("/bin/bash", &["bash", "-i"]))
            ]
        )
        .is_empty());
        // socket dup onto 0, then `bash -i` in the next batch (state survives batches).
        assert!(rules(&mut det, &[(&user, dup(3, 0, FdTargetKind::Socket))]).is_empty());
        assert_eq!(
            rules(&mut det, &[(&user, exec("/bin/bash", &["bash", "-i"]))]),
            vec![("reverse-shell".to_string(), 0)]
        );
        // A non-interactive shell is not a reverse-shell hit.
        assert!(rules(
            &mut det,
            &[(&user, exec("/bin/bash", &["bash", "-c", "ls -i"]))]
        )
        .is_empty());
        // The parent did the dup (python one-liner), the child shell is `sh -li`.
        let py = Process::new(300, "python3", "/usr/bin/python3").with_ancestor(
            1,
            "sshd",
            "/usr/sbin/sshd",
        );
        let child =
            Process::new(301, "sh", "/bin/sh").with_ancestor(300, "python3", "/usr/bin/python3");
        let got = rules(
            &mut det,
            &[
                (&py, dup(3, 1, FdTargetKind::Socket)),
                (&child, exec("/bin/sh", &["sh", "-li"])),
            ],
        );
        // python3 is a service too, so the spawn rule fires as well.
        assert_eq!(
            got,
            vec![
                ("shell-spawned-by-service".to_string(), 1),
                ("reverse-shell".to_string(), 1)
            ]
        );
        // After the window, the mark is gone.
        testing::advance(Duration::from_secs(6));
        assert!(rules(&mut det, &[(&user, exec("/bin/bash", &["bash", "-i"]))]).is_empty());
    }

    #[test]
    fn interactive_flag_parsing() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_interactive(&v(&["sh", "-i"])));
        assert!(is_interactive(&v(&["bash", "-li"])));
        assert!(is_interactive(&v(&["bash", "--norc", "-i"])));
        assert!(!is_interactive(&v(&["bash", "-c", "grep -i x"])));
        assert!(!is_interactive(&v(&["bash", "script.sh", "-i"])));
        assert!(!is_interactive(&v(&["bash", "--init-file", "x"])));
        assert!(!is_interactive(&v(&["-i"])));
    }

    #[test]
    fn config_is_validated() {
        let err = ShellSpawn::init(Config::default().with("reverse-shell-window-ms", 0))
            .err()
            .unwrap();
        assert!(err.contains("reverse-shell-window-ms"), "{err}");
        let err = ShellSpawn::init(Config::default().with("priority", "meh"))
            .err()
            .unwrap();
        assert!(err.contains("`priority`"), "{err}");
        let det = ShellSpawn::init(Config::default().with("services", ["myapp"])).unwrap();
        assert!(det.services.matches("myapp", ""));
    }
}
