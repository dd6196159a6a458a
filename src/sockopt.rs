//! TCP_DEFER_ACCEPT on the TLS listener, the one socket option that neither
//! std (`TcpStreamExt::set_deferaccept` is unstable) nor socket2 sets.
//!
//! With it, Linux hands a connection to `accept` only once the client has
//! sent data (its ClientHello: in TLS the client speaks first), not on the
//! bare ACK that completes the TCP handshake. Each new connection then
//! wakes the gateway once instead of twice, and is read at once; a client
//! that connects and says nothing costs the gateway nothing until the
//! deferral ends, after which it is accepted with what is left of its
//! `header_read_timeout` (`server::serve`). nginx (`listen ... deferred`)
//! and HAProxy (`defer-accept`) offer the same.
#![allow(unsafe_code)]

use std::io;

/// Defers accepting for about `secs` seconds at most (Linux rounds it to
/// its SYN-ACK retransmissions: 1 means one retransmission, about 1 s).
/// True when it is set; false where the system has no such option.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn defer_accept(listener: &tokio::net::TcpListener, secs: u32) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: the fd is the listener's, open for as long as `listener` is
    // borrowed; `value` is a c_int that outlives the call, and `len` is its
    // size, which is what TCP_DEFER_ACCEPT reads.
    let r = unsafe { libc::setsockopt(listener.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, (&raw const value).cast(), len) };
    if r == 0 { Ok(secs > 0) } else { Err(io::Error::last_os_error()) }
}

/// Elsewhere: not available; connections are accepted as they complete.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn defer_accept(_listener: &tokio::net::TcpListener, _secs: u32) -> io::Result<bool> {
    Ok(false)
}
