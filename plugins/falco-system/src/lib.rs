//! `falco-system`: kernel-facing rules: Falco's ptrace rules plus the system-call building
//! blocks Palisade sees directly (host module loads, BPF program loads, setuid to root by a
//! non-root program, mounts of host file systems).
//!
//! | rule id | Falco rule | priority |
//! |---|---|---|
//! | `ptrace-attached-to-process` | PTRACE attached to process | warning |
//! | `ptrace-anti-debug-attempt` | PTRACE anti-debug attempt | notice |
//! | `kernel-module-load` | (beyond Falco: the host side of module injection) | notice |
//! | `bpf-program-load` | (beyond Falco) | notice |
//! | `setuid-root-by-unexpected-program` | (beyond Falco) | notice |
//! | `sensitive-mount` | (beyond Falco: mounting host roots or /proc/sys) | warning |

use pack_common::{describe_process, with_context};
use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventData, EventKind, EventRef, NameSet, PluginInfo, Priority,
    Process, Subscription,
};

const PTRACE_TRACEME: u32 = 0;
/// PTRACE_POKETEXT, POKEDATA, SETREGS, ATTACH, SEIZE (Falco's `ptrace_attach_or_injection`).
const PTRACE_INJECT: &[(u32, &str)] = &[
    (4, "PTRACE_POKETEXT"),
    (5, "PTRACE_POKEDATA"),
    (13, "PTRACE_SETREGS"),
    (16, "PTRACE_ATTACH"),
    (0x4206, "PTRACE_SEIZE"),
];
/// BPF_PROG_LOAD.
const BPF_PROG_LOAD: u32 = 5;

const MODULE_LOADERS: &[&str] = &[
    "systemd-udevd",
    "modprobe",
    "kmod",
    "systemd-modules-load",
    "systemd-modules",
];
const BPF_ALLOWED: &[&str] = &[
    "systemd",
    "systemd-logind",
    "systemd-udevd",
    "systemd-journald",
    "systemd-resolved",
    "palisade",
    "cilium-agent",
    "falco",
    "bpftool",
    "dockerd",
    "runc",
    "containerd",
];
const SETUID_ALLOWED: &[&str] = &[
    "sudo",
    "su",
    "sudo-rs",
    "doas",
    "pkexec",
    "polkitd",
    "newgrp",
    "passwd",
    "chsh",
    "chfn",
    "gpasswd",
    "mount",
    "umount",
    "fusermount",
    "fusermount3",
    "ping",
    "Xorg",
    "sshd",
    "sshd-session",
    "cron",
    "crond",
    "login",
    "systemd",
    "unix_chkpwd",
    "at",
    "crontab",
];
const SENSITIVE_MOUNT_SOURCES: &[&str] = &[
    "/",
    "/dev/sda1",
    "/dev/vda1",
    "/dev/nvme0n1p1",
    "/proc/sys",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
];

const KNOWN_KEYS: &[&str] = &[
    "ptrace-allowed",
    "module-loaders",
    "bpf-allowed",
    "setuid-allowed",
    "sensitive-mount-sources",
];

/// The detector; see the crate docs.
pub struct FalcoSystem {
    ptrace_allowed: NameSet,
    module_loaders: NameSet,
    bpf_allowed: NameSet,
    setuid_allowed: NameSet,
    mount_sources: Vec<String>,
}

fn alert(rule: &str, priority: Priority, message: String, p: &Process, tags: &[&str]) -> Alert {
    with_context(Alert::new(rule, priority, message), p).tags(tags.iter().copied())
}

impl Detector for FalcoSystem {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "falco-system",
            env!("CARGO_PKG_VERSION"),
            "ptrace injection and anti-debugging, module and BPF loads, unexpected setuid(0), mounts of host roots",
        )
        .subscribe(Subscription::to([EventKind::Ptrace, EventKind::ModuleLoad, EventKind::Bpf, EventKind::Mount]))
        .subscribe(Subscription::to([EventKind::Setuid]).uid_range(1, u32::MAX))
        .config("ptrace-allowed", Vec::<String>::new())
        .config("module-loaders", MODULE_LOADERS)
        .config("bpf-allowed", BPF_ALLOWED)
        .config("setuid-allowed", SETUID_ALLOWED)
        .config("sensitive-mount-sources", SENSITIVE_MOUNT_SOURCES)
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        Ok(FalcoSystem {
            ptrace_allowed: NameSet::new(config.text_list_or("ptrace-allowed", &[])?),
            module_loaders: NameSet::new(config.text_list_or("module-loaders", MODULE_LOADERS)?),
            bpf_allowed: NameSet::new(config.text_list_or("bpf-allowed", BPF_ALLOWED)?),
            setuid_allowed: NameSet::new(config.text_list_or("setuid-allowed", SETUID_ALLOWED)?),
            mount_sources: config
                .text_list_or("sensitive-mount-sources", SENSITIVE_MOUNT_SOURCES)?,
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let p = event.process;
        if p.comm.is_empty() {
            return; // Falco's proc_name_exists
        }
        match event.data {
            EventData::Ptrace(t) if t.request == PTRACE_TRACEME => {
                alerts.push(alert(
                    "ptrace-anti-debug-attempt",
                    Priority::Notice,
                    format!(
                        "Potential PTRACE_TRACEME anti-debug attempt by {}",
                        describe_process(p)
                    ),
                    p,
                    &["T1622", "mitre_defense_evasion", "process"],
                ));
            }
            EventData::Ptrace(t) => {
                let Some((_, name)) = PTRACE_INJECT.iter().find(|(r, _)| *r == t.request) else {
                    return;
                };
                if self.ptrace_allowed.matches_process(p) {
                    return;
                }
                alerts.push(
                    alert(
                        "ptrace-attached-to-process",
                        Priority::Warning,
                        format!(
                            "Detected ptrace {name} attempt on pid {} by {}",
                            t.target_pid,
                            describe_process(p)
                        ),
                        p,
                        &["T1055.008", "mitre_privilege_escalation", "process"],
                    )
                    .field("ptrace.request", name)
                    .field("ptrace.target_pid", t.target_pid),
                );
            }
            EventData::ModuleLoad(module) if !self.module_loaders.matches_process(p) => {
                alerts.push(
                    alert(
                        "kernel-module-load",
                        Priority::Notice,
                        format!("Kernel module {module} loaded by {}", describe_process(p)),
                        p,
                        &["T1547.006", "mitre_persistence", "process"],
                    )
                    .field("module", module),
                );
            }
            EventData::Bpf(cmd)
                if *cmd == BPF_PROG_LOAD && !self.bpf_allowed.matches_process(p) =>
            {
                alerts.push(alert(
                    "bpf-program-load",
                    Priority::Notice,
                    format!("BPF program loaded by {}", describe_process(p)),
                    p,
                    &["T1014", "mitre_defense_evasion", "process"],
                ));
            }
            EventData::Setuid(0) if p.uid != 0 && !self.setuid_allowed.matches_process(p) => {
                alerts.push(alert(
                    "setuid-root-by-unexpected-program",
                    Priority::Notice,
                    format!(
                        "Non-root process switched to uid 0: {}",
                        describe_process(p)
                    ),
                    p,
                    &["T1548.001", "mitre_privilege_escalation", "process"],
                ));
            }
            EventData::Mount(m)
                if self.mount_sources.contains(&m.source) || m.target.starts_with("/proc/sys") =>
            {
                alerts.push(
                    alert(
                        "sensitive-mount",
                        Priority::Warning,
                        format!(
                            "Sensitive mount {} ({}) on {} by {}",
                            m.source,
                            m.fstype,
                            m.target,
                            describe_process(p)
                        ),
                        p,
                        &["T1611", "mitre_privilege_escalation", "process"],
                    )
                    .field("mount.source", &m.source)
                    .field("mount.target", &m.target),
                );
            }
            _ => {}
        }
    }
}

palisade_sdk::export_detector!(FalcoSystem);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{run_batch, EventBatch, MountData, PtraceData};

    #[test]
    fn system_rules() {
        let mut d = FalcoSystem::init(Config::new(FalcoSystem::describe().default_config)).unwrap();
        let gdb = Process::new(1, "gdb", "/usr/bin/gdb").with_uid(1000);
        let udev = Process::new(2, "systemd-udevd", "/usr/lib/systemd/systemd-udevd");
        let sudo = Process::new(3, "sudo", "/usr/bin/sudo").with_uid(1000);
        let x = Process::new(4, "x", "/tmp/x").with_uid(1000);
        let mut b = EventBatch::new();
        b.push(
            &gdb,
            1,
            EventData::Ptrace(PtraceData {
                request: 16,
                target_pid: 99,
            }),
        );
        b.push(
            &gdb,
            2,
            EventData::Ptrace(PtraceData {
                request: 0,
                target_pid: 0,
            }),
        );
        b.push(
            &gdb,
            3,
            EventData::Ptrace(PtraceData {
                request: 3,
                target_pid: 99,
            }),
        );
        b.push(&udev, 4, EventData::ModuleLoad("snd".into()));
        b.push(&x, 5, EventData::ModuleLoad("rootkit".into()));
        b.push(&x, 6, EventData::Bpf(5));
        b.push(&sudo, 7, EventData::Setuid(0));
        b.push(&x, 8, EventData::Setuid(0));
        b.push(
            &x,
            9,
            EventData::Mount(MountData {
                source: "/dev/sda1".into(),
                target: "/mnt/host".into(),
                fstype: "ext4".into(),
            }),
        );
        let got: Vec<(String, u32)> = run_batch(&mut d, &b)
            .into_iter()
            .map(|a| (a.rule, a.event_index))
            .collect();
        let got: Vec<(&str, u32)> = got.iter().map(|(r, i)| (r.as_str(), *i)).collect();
        assert_eq!(
            got,
            [
                ("ptrace-attached-to-process", 0),
                ("ptrace-anti-debug-attempt", 1),
                ("kernel-module-load", 4),
                ("bpf-program-load", 5),
                ("setuid-root-by-unexpected-program", 7),
                ("sensitive-mount", 8),
            ]
        );
    }
}
