//! The emulator's system calls that need `unsafe`: creating a TAP device and turning a veth's
//! checksum offload off (ioctls with a `struct ifreq`), and starting a program inside a node (work done in the child between fork
//! and exec). Everything else goes through `nix`.
#![allow(unsafe_code)]

use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::Mode;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A nix error as an `io::Error`.
pub(crate) fn nix_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The last OS error, with `what` failed in front of it.
fn os_error(what: String) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A zeroed `struct ifreq` naming interface `name` (at most 15 bytes, checked by callers).
fn ifreq_named(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain data; all zeros is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in ifr.ifr_name.iter_mut().zip(name.as_bytes().iter().take(15)) {
        *dst = b as libc::c_char;
    }
    ifr
}

/// Creates TAP device `name` in the calling thread's network namespace and returns its
/// descriptor (non-blocking, close-on-exec). The device is persistent: it lives as long as its
/// namespace (which `down` removes, also after a killed run).
pub fn tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name '{name}' is empty or longer than 15 bytes"),
        ));
    }
    let fd = open(
        "/dev/net/tun",
        OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io::Error::new(nix_err(e).kind(), format!("opening /dev/net/tun: {e}")))?;
    let mut ifr = ifreq_named(name);
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `ifr` is, for the duration
    // of the call; `fd` is an open /dev/net/tun descriptor.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if r < 0 {
        return Err(os_error(format!("creating TAP {name}")));
    }
    // Persistent: closing the descriptor then leaves the device to its namespace, whose
    // removal unregisters all of them in one batch. A TAP that is not persistent unregisters
    // itself on close, one at a time with an RCU grace period each: 1,000 hosts took 10 s.
    // SAFETY: TUNSETPERSIST takes its argument by value; `fd` is the TAP just created.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if r < 0 {
        return Err(os_error(format!("making TAP {name} persistent")));
    }
    Ok(fd)
}

/// Turns transmit checksum offload off on interface `name` of the calling thread's network
/// namespace (`ethtool -K name tx off`): frames it sends then carry their checksums, which an
/// AF_XDP socket at the other end of a veth needs (it gets the bytes as they are).
pub fn tx_checksum_off(name: &str) -> io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_err)?;
    let mut v = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut ifr = ifreq_named(name);
    ifr.ifr_ifru.ifru_data = (&raw mut v).cast();
    // SAFETY: SIOCETHTOOL reads `ifr` and the `ethtool_value` it points to, both alive and
    // of the layout the kernel expects for ETHTOOL_STXCSUM, for the duration of the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if r < 0 {
        return Err(os_error(format!(
            "turning transmit checksum offload off on {name}"
        )));
    }
    Ok(())
}

/// What a program started inside a node sees: the node's network namespace, its own mount
/// namespace with the node's `/etc/hosts` and a `/sys` of the node's interfaces (as `ip netns
/// exec` arranges).
pub struct Inside {
    pub netns: PathBuf,
    /// Bound over `/etc/hosts` when present.
    pub hosts: Option<PathBuf>,
}

/// Makes `cmd` start inside `at` (the work happens in the child, between fork and exec).
pub fn inside(cmd: &mut Command, at: &Inside) -> io::Result<()> {
    let ns: OwnedFd = open(
        at.netns.as_path(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io::Error::new(nix_err(e).kind(), format!("{}: {e}", at.netns.display())))?;
    // Prepared before the fork: the child must not allocate.
    let hosts: Option<std::ffi::CString> = at
        .hosts
        .as_ref()
        .filter(|h| h.exists())
        .map(|h| std::ffi::CString::new(h.as_os_str().as_encoded_bytes()))
        .transpose()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: the closure runs in the forked child before exec: it only makes system calls
    // (setns, unshare, mount) on values prepared before the fork, allocates nothing, and
    // returns an error instead of panicking.
    unsafe {
        cmd.pre_exec(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(nix_err)?;
            unshare(CloneFlags::CLONE_NEWNS).map_err(nix_err)?;
            // Our mounts must not leak back into the host's mount namespace.
            mount(
                None::<&std::ffi::CStr>,
                c"/",
                None::<&std::ffi::CStr>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&std::ffi::CStr>,
            )
            .map_err(nix_err)?;
            // /sys as this namespace sees it (its interfaces), as `ip netns exec` does.
            if umount2(c"/sys", MntFlags::MNT_DETACH).is_ok() {
                let _ = mount(
                    Some(c"sysfs"),
                    c"/sys",
                    Some(c"sysfs"),
                    MsFlags::empty(),
                    None::<&std::ffi::CStr>,
                );
            }
            if let Some(h) = &hosts {
                mount(
                    Some(h.as_c_str()),
                    c"/etc/hosts",
                    None::<&std::ffi::CStr>,
                    MsFlags::MS_BIND,
                    None::<&std::ffi::CStr>,
                )
                .map_err(nix_err)?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// Whether `path` is a mount point (by /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let want = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*want)))
        .unwrap_or(false)
}

/// Enters the network namespace `fd` on the calling thread.
pub fn enter(fd: &OwnedFd) -> io::Result<()> {
    setns(fd, CloneFlags::CLONE_NEWNET).map_err(nix_err)
}

/// Moves the calling thread into a new network namespace.
pub fn new_netns() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(nix_err)
}

/// Bind-mounts `from` over `to`.
pub fn bind(from: &Path, to: &Path) -> io::Result<()> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
        io::Error::new(
            nix_err(e).kind(),
            format!("bind-mounting {} on {}: {e}", from.display(), to.display()),
        )
    })
}

/// Makes `dir` a shared mount point (bound over itself first when it is not one), so
/// namespaces bound under it are seen from every mount namespace, as `ip netns` does.
pub fn shared_mount_point(dir: &Path) -> io::Result<()> {
    if !is_mount_point(dir) {
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| io::Error::new(nix_err(e).kind(), format!("{}: {e}", dir.display())))?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| io::Error::new(nix_err(e).kind(), format!("{}: {e}", dir.display())))
}

/// Unmounts `path` (lazily, so a busy mount still goes).
pub fn unmount(path: &Path) -> io::Result<()> {
    umount2(path, MntFlags::MNT_DETACH).map_err(nix_err)
}

/// Gives the memory the allocator holds free back to the system (`malloc_trim`): working a
/// large plan out leaves gigabytes of freed tables that would otherwise stay resident.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
