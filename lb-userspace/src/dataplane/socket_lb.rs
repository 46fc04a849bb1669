//! Socket-level load balancing: the cgroup v2 sock_addr programs (lb-ebpf's
//! sock.rs) on `--cgroup-root`, so that processes of the node itself
//! (kubelet, hostNetwork pods, the agent) reach ClusterIPs, NodePorts and
//! external IPs, and pods pay nothing per packet on established flows.
//!
//! The links are pinned under the links directory as `sock_<program>_<cgroup
//! inode>`, so they outlive the agent; a new agent swaps its programs into
//! them (BPF_LINK_UPDATE) and keeps SOCK_REVNAT_V1 (pinned like the other
//! maps), so sockets translated before a restart still show their service
//! address. Changing the cgroup root, or `--socket-lb=off`, removes the old
//! links, which detaches them.
use std::{
    os::fd::{AsFd, AsRawFd},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{CgroupAttachMode, FdLink, PinnedLink},
    CgroupSockAddr,
};
use lb_common::sock::PROGRAMS;

use super::Dataplane;

/// `--socket-lb`: which sockets are translated at connect/sendmsg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SocketLbMode {
    /// Every socket under the cgroup root, pods' too.
    #[default]
    All,
    /// Only sockets of the host's network namespace (what sidecar meshes need).
    HostOnly,
    Off,
}

impl SocketLbMode {
    pub fn name(self) -> &'static str {
        match self {
            SocketLbMode::All => "all",
            SocketLbMode::HostOnly => "host-only",
            SocketLbMode::Off => "off",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketLbError {
    #[error("--cgroup-root {path}: {reason}")]
    CgroupRoot { path: PathBuf, reason: String },
    #[error("no cgroup2 filesystem in /proc/mounts: give --cgroup-root")]
    NoCgroup2,
    #[error("reading /proc/mounts: {0}")]
    Mounts(std::io::Error),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("link {path}: {reason}")]
    Link { path: PathBuf, reason: String },
    #[error("this network namespace's cookie (SO_NETNS_COOKIE): {0}")]
    NetnsCookie(std::io::Error),
}

/// The first cgroup2 mount point in `mounts` (the text of /proc/mounts).
/// Hybrid hosts mount it at /sys/fs/cgroup/unified, unified ones at /sys/fs/cgroup.
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

/// The default `--cgroup-root`: the host's cgroup2 mount.
pub fn default_cgroup_root() -> Result<PathBuf, SocketLbError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(SocketLbError::Mounts)?;
    cgroup2_mount(&mounts).ok_or(SocketLbError::NoCgroup2)
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Checks that `path` is a directory of a cgroup v2 filesystem.
pub fn check_cgroup_root(path: &Path) -> Result<(), SocketLbError> {
    let err = |reason: String| SocketLbError::CgroupRoot {
        path: path.into(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    let stat = nix::sys::statfs::statfs(path).map_err(|e| err(e.to_string()))?;
    if stat.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
        return Err(err(
            "not a cgroup v2 directory (socket hooks attach to cgroup2; see /proc/mounts)".into(),
        ));
    }
    Ok(())
}

/// This network namespace's cookie, as bpf_get_netns_cookie sees it.
pub fn netns_cookie() -> Result<u64, SocketLbError> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(SocketLbError::NetnsCookie)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for the call and sized for a u64.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(SocketLbError::NetnsCookie(std::io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// BPF_OBJ_GET: a new fd of the object pinned at `path`.
fn obj_get(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: attr points at a NUL-terminated path that outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &attr)? };
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_LINK_UPDATE: makes `link` run `prog` (atomically for its users).
fn link_update(link: &impl AsFd, prog: &impl AsFd) -> std::io::Result<()> {
    const BPF_LINK_UPDATE: libc::c_long = 29;
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = LinkUpdateAttr {
        link_fd: link.as_fd().as_raw_fd() as u32,
        new_prog_fd: prog.as_fd().as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for this command.
    unsafe { bpf(BPF_LINK_UPDATE, &attr) }.map(drop)
}

/// The bpf(2) system call with `attr` as its bpf_attr (of attr's size).
///
/// # Safety
/// `attr` must be a valid bpf_attr prefix for `cmd`, and any pointers in it
/// valid for the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: as the caller promises.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// The attached socket programs: the cgroup and the links held.
pub struct SocketLb {
    pub cgroup: PathBuf,
    _links: Vec<FdLink>,
}

/// What attaching did, for the log.
#[derive(Debug, Default)]
pub struct SocketLbReport {
    pub attached: Vec<&'static str>,
    pub taken_over: Vec<&'static str>,
    pub removed: Vec<String>,
}

fn pin_name(program: &str, cgroup_ino: u64) -> String {
    format!("sock_{program}_{cgroup_ino}")
}

impl Dataplane {
    /// Loads the socket programs and attaches them to `cgroup` (pinning the
    /// links when there is a pin directory), taking over links an earlier
    /// agent pinned for the same cgroup and removing those for another.
    pub fn attach_socket_lb(
        &mut self,
        cgroup: &Path,
    ) -> Result<(SocketLb, SocketLbReport), SocketLbError> {
        check_cgroup_root(cgroup)?;
        let ino = std::fs::metadata(cgroup)
            .map_err(|e| SocketLbError::CgroupRoot {
                path: cgroup.into(),
                reason: e.to_string(),
            })?
            .ino();
        let mut report = SocketLbReport::default();
        let dir = self.attachments.pin_dir().map(Path::to_path_buf);
        if let Some(dir) = &dir {
            let keep: Vec<String> = PROGRAMS.iter().map(|p| pin_name(p, ino)).collect();
            report.removed = remove_socket_pins(dir, &keep);
        }
        let cgroup_fd = std::fs::File::open(cgroup).map_err(|e| SocketLbError::CgroupRoot {
            path: cgroup.into(),
            reason: e.to_string(),
        })?;
        let mut links = Vec::new();
        for name in PROGRAMS {
            let program_error = |source| SocketLbError::Program { name, source };
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(program_error(aya::programs::ProgramError::NotLoaded))?
                .try_into()
                .map_err(program_error)?;
            super::loader::load_retrying(|| prog.load()).map_err(program_error)?;
            let pin = dir.as_ref().map(|d| d.join(pin_name(name, ino)));
            if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
                let taken = obj_get(path)
                    .map_err(|e| e.to_string())
                    .and_then(|link_fd| {
                        let fd = prog.fd().map_err(|e| e.to_string())?;
                        link_update(&link_fd, fd).map_err(|e| e.to_string())?;
                        PinnedLink::from_pin(path)
                            .map(FdLink::from)
                            .map_err(|e| e.to_string())
                    });
                match taken {
                    Ok(link) => {
                        links.push(link);
                        report.taken_over.push(name);
                        continue;
                    }
                    // A pin we cannot use: replace it.
                    Err(_) => {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            let id = prog
                .attach(&cgroup_fd, CgroupAttachMode::Single)
                .map_err(program_error)?;
            let link = prog.take_link(id).map_err(program_error)?;
            let fd_link = FdLink::try_from(link).map_err(|e| SocketLbError::Link {
                path: cgroup.into(),
                reason: e.to_string(),
            })?;
            let fd_link = match pin {
                Some(path) => {
                    let pinned = fd_link.pin(&path).map_err(|e| SocketLbError::Link {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                    FdLink::from(pinned)
                }
                None => fd_link,
            };
            links.push(fd_link);
            report.attached.push(name);
        }
        Ok((
            SocketLb {
                cgroup: cgroup.into(),
                _links: links,
            },
            report,
        ))
    }

    /// Ends the sockets socket LB sent to backends that `before` had and the
    /// maps no longer have (see sock_destroy). Returns how many, and why
    /// others could not be ended.
    pub fn end_sockets_of_gone_backends(&self) -> std::io::Result<(usize, Vec<String>)> {
        // Only the backends the last sync touched can have gone (a backend's
        // address keeps its id while it is programmed), so both sides are
        // those: a sync costs its own backends, not every backend.
        let before = self.touched_backends();
        let after = before
            .keys()
            .filter_map(|id| self.programmed().backends.get(id).map(|b| (*id, *b)))
            .collect();
        let gone = super::sock_destroy::gone(before, &after);
        if gone.is_empty() {
            return Ok((0, Vec::new()));
        }
        let v4 = self.maps.sock_revnat.keys().flatten().map(|k| {
            (
                k.cookie,
                std::net::IpAddr::from(k.backend_addr),
                k.backend_port,
            )
        });
        let v6 = self.maps.sock_revnat6.keys().flatten().map(|k| {
            (
                k.cookie,
                std::net::IpAddr::from(k.backend_addr),
                k.backend_port,
            )
        });
        let translated = v4.chain(v6).collect();
        super::sock_destroy::end_sockets(&gone, &translated)
    }

    /// `--socket-lb=off`: removes the socket links an earlier agent pinned.
    pub fn detach_socket_lb(&mut self) -> Vec<String> {
        match self.attachments.pin_dir() {
            Some(dir) => remove_socket_pins(dir, &[]),
            None => Vec::new(),
        }
    }
}

/// Removes the `sock_*` pins in `dir` not named in `keep`; returns their names.
fn remove_socket_pins(dir: &Path, keep: &[String]) -> Vec<String> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("sock_")
            && !keep.contains(&name)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_hybrid_and_unified_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs ro,nosuid 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
    }

    #[test]
    fn a_cgroup_root_that_is_missing_or_not_cgroup2_is_named() {
        let e = check_cgroup_root(Path::new("/nonexistent/weir")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--cgroup-root /nonexistent/weir: "),
            "{e}"
        );
        let e = check_cgroup_root(Path::new("/proc")).unwrap_err();
        assert!(e.to_string().contains("not a cgroup v2 directory"), "{e}");
    }
}
