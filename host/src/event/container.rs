//! Container id from a process's cgroup path: the one place that knows how container runtimes
//! name their cgroups (Docker, containerd / cri-containerd, CRI-O, Podman / libpod; systemd and
//! cgroupfs drivers; cgroup v1 and v2 lines of `/proc/<pid>/cgroup`). Pure string parsing plus
//! two small file reads (the mount table through `crate::mountinfo`); the process cache
//! (`ebpf::procs`) decides when to call it and caches the answer per cgroup id so it is never
//! on the per-event path.
//!
//! Only full 64-hex-digit ids are accepted: shorter hex names are common on hosts (this
//! machine's own v1 memory cgroup is `/process_api/<32 hex>`) and must not look like containers.

use std::path::{Path, PathBuf};

use crate::mountinfo::{self, Mount};

/// Length of a container id as runtimes write it in cgroup names.
pub const ID_LEN: usize = 64;

/// Prefixes of systemd scope / cgroupfs names that wrap a container id, e.g.
/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
/// cgroupfs `crio-<id>` and `libpod-<id>`. Conmon (`crio-conmon-`, `libpod-conmon-`) is the
/// runtime's monitor, not the container, and is never matched because its rest is not hex.
const PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];

fn is_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The container id named by one cgroup path component, if any.
fn id_of_component(component: &str) -> Option<&str> {
    // cgroupfs drivers: `/docker/<id>`, `/kubepods/besteffort/pod<uid>/<id>`,
    // containerd's `/<namespace>/<id>`.
    if is_id(component) {
        return Some(component);
    }
    let name = component.strip_suffix(".scope").unwrap_or(component);
    PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .filter(|rest| is_id(rest))
}

/// The container id in a cgroup path (`/system.slice/docker-<id>.scope`, ...). Components are
/// searched from the innermost outwards, so a container's own sub-cgroups
/// (`.../libpod-<id>.scope/container`, `.../docker-<id>.scope/init.scope`) still name it and a
/// nested container wins over the one it runs in.
pub fn container_id_from_path(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(id_of_component)
}

/// The cgroup v2 path in the text of `/proc/<pid>/cgroup` (the `0::<path>` line).
pub fn v2_path(cgroup_file: &str) -> Option<&str> {
    cgroup_file.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The container id in the text of `/proc/<pid>/cgroup`: the v2 line first (the hierarchy the
/// kernel's cgroup id refers to), then the v1 lines in file order (hybrid hosts and older
/// runtimes put the container in every v1 hierarchy).
pub fn container_id_from_cgroup_file(cgroup_file: &str) -> Option<&str> {
    let v2 = v2_path(cgroup_file).and_then(container_id_from_path);
    v2.or_else(|| {
        cgroup_file
            .lines()
            .filter(|l| !l.starts_with("0::"))
            // `hierarchy-id:controllers:path`; the path may itself contain ':'.
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .find_map(container_id_from_path)
    })
}

/// Where the cgroup v2 hierarchy is mounted, from a mount table: `/sys/fs/cgroup` on a
/// pure-v2 host, `/sys/fs/cgroup/unified` on a hybrid one (this machine).
pub fn cgroup2_root_in(mounts: &[Mount]) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.mount_point.clone())
}

/// The cgroup v2 mount point of this system, if v2 is mounted (and the mount table readable:
/// why not is logged).
pub fn cgroup2_root() -> Option<PathBuf> {
    match mountinfo::read_self() {
        Ok(mounts) => cgroup2_root_in(&mounts),
        Err(error) => {
            tracing::warn!(%error, "cgroup v2 mount not found: the mount table is unreadable");
            None
        }
    }
}

/// The cgroup v2 id of a v2 path (the inode number of its directory, which is what the
/// kernel's `bpf_get_current_cgroup_id` returns on 64-bit hosts); `None` if it cannot be read.
pub fn cgroup_id(root: &Path, v2_path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dir = root.join(v2_path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4a9c2b1e0d8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn paths_table() {
        let cases: Vec<(String, Option<&str>)> = vec![
            // Docker, systemd driver (v1 and v2), and rootless.
            (format!("/system.slice/docker-{ID}.scope"), Some(ID)),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope"),
                Some(ID),
            ),
            // Docker, cgroupfs driver.
            (format!("/docker/{ID}"), Some(ID)),
            // Docker-in-Docker / systemd inside the container: its sub-cgroup.
            (
                format!("/system.slice/docker-{ID}.scope/init.scope"),
                Some(ID),
            ),
            // Nested container: the innermost wins.
            (format!("/docker/{ID}/docker/{ID2}"), Some(ID2)),
            // Kubernetes + containerd, systemd driver.
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/\
                     kubepods-besteffort-pod0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/\
                     cri-containerd-{ID}.scope"
                ),
                Some(ID),
            ),
            // Kubernetes, cgroupfs driver (containerd or docker).
            (
                format!("/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/{ID}"),
                Some(ID),
            ),
            (format!("/kubepods/burstable/podabc/{ID}"), Some(ID)),
            // CRI-O, systemd and cgroupfs drivers; conmon is not the container.
            (
                format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
                Some(ID),
            ),
            (format!("/kubepods/pod1/crio-{ID}"), Some(ID)),
            (
                format!("/kubepods.slice/kubepods-pod1.slice/crio-conmon-{ID}.scope"),
                None,
            ),
            // Podman / libpod: systemd scope, its `container` sub-cgroup, cgroupfs.
            (format!("/machine.slice/libpod-{ID}.scope"), Some(ID)),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Some(ID),
            ),
            (format!("/libpod_parent/libpod-{ID}"), Some(ID)),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            // containerd without Kubernetes: `/<namespace>/<id>`.
            (format!("/default/{ID}"), Some(ID)),
            // Hosts.
            ("/".to_owned(), None),
            ("".to_owned(), None),
            ("/user.slice/user-0.slice/session-3.scope".to_owned(), None),
            ("/system.slice/docker.service".to_owned(), None),
            // This machine's own sandbox: 32 hex digits is not a container id.
            (
                "/process_api/638284ab3603a550a21bd02584af1d67".to_owned(),
                None,
            ),
            // Not quite ids: upper case, one digit short, non-hex.
            (format!("/docker/{}", ID.to_uppercase()), None),
            (format!("/docker/{}", &ID[1..]), None),
            (format!("/system.slice/docker-{}g.scope", &ID[1..]), None),
            (format!("/system.slice/docker-{ID}x.scope"), None),
        ];
        for (path, want) in &cases {
            assert_eq!(container_id_from_path(path), *want, "path {path:?}");
        }
    }

    #[test]
    fn cgroup_files_table() {
        let cases: Vec<(String, Option<&str>)> = vec![
            // Pure v2 (systemd driver).
            (format!("0::/system.slice/docker-{ID}.scope\n"), Some(ID)),
            // v1 only (old Docker): every hierarchy names it.
            (
                format!(
                    "12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"
                ),
                Some(ID),
            ),
            // Hybrid, container only visible in v1, v2 line at the root.
            (
                format!("4:memory:/kubepods/besteffort/pod1/{ID}\n0::/\n"),
                Some(ID),
            ),
            // Hybrid: the v2 line wins over v1 lines naming another container.
            (
                format!(
                    "4:memory:/docker/{ID2}\n0::/palisade-test.slice/cri-containerd-{ID}.scope\n"
                ),
                Some(ID),
            ),
            // This machine's host processes.
            (
                "9:name=systemd:/\n4:memory:/process_api/638284ab3603a550a21bd02584af1d67\n0::/\n"
                    .to_owned(),
                None,
            ),
            ("".to_owned(), None),
        ];
        for (file, want) in &cases {
            assert_eq!(container_id_from_cgroup_file(file), *want, "file {file:?}");
        }
        assert_eq!(v2_path("4:memory:/x\n0::/a/b\n"), Some("/a/b"));
        assert_eq!(v2_path("4:memory:/x\n"), None);
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let root_in = |text: &str| cgroup2_root_in(&mountinfo::parse(text).unwrap());
        let hybrid = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,relatime shared:5 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            root_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(root_in(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(root_in("25 24 0:22 / /tmp rw - tmpfs tmpfs rw\n"), None);
        // A mount point with a space comes back unescaped.
        assert_eq!(
            root_in("31 1 0:27 / /run/my\\040cg rw - cgroup2 cgroup2 rw\n"),
            Some(PathBuf::from("/run/my cg"))
        );
    }

    #[test]
    fn own_cgroup_id_is_the_v2_directory_inode() {
        let (Some(root), Ok(file)) = (cgroup2_root(), std::fs::read_to_string("/proc/self/cgroup"))
        else {
            return; // No cgroup v2 here: nothing to compare.
        };
        let path = v2_path(&file).expect("a v2 line when v2 is mounted");
        assert!(cgroup_id(&root, path).is_some_and(|id| id > 0));
    }
}
