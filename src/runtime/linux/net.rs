//! The little networking the runtime itself does: bringing `lo` up in a new network namespace.
//! (Project networks, veths and bandwidth limits belong to `src/net/`.)

use super::error::SetupError;

/// Sets IFF_UP on `lo` in the current network namespace.
pub fn loopback_up() -> Result<(), SetupError> {
    // SAFETY: a plain datagram socket, closed below; used only for the interface ioctls.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(SetupError::sys(
            "socket for lo",
            None,
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq we own, on our socket.
    let r = unsafe {
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        r
    };
    let err = nix::errno::Errno::last();
    // SAFETY: fd is ours and used no more.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(SetupError::sys("bring lo up", Some("lo"), err));
    }
    Ok(())
}
