//! Two of the gateway's three `unsafe` calls, both on a listener's socket
//! (the third empties a box for reuse: `inplace::Recycled`):
//!
//! - `TCP_DEFER_ACCEPT`, the one socket option the gateway sets that
//!   neither `socket2` nor `rustix` offers (std's is unstable): a
//!   `setsockopt` of one `c_int`;
//! - the listener's registration with tokio's event loop as an `AsyncFd`
//!   ([`async_listener`]), which tokio marks `unsafe` because it cannot
//!   check that the descriptor stays open while registered. tokio's own
//!   `TcpListener` registers each accepted connection at once; accepting
//!   through `mio` under an `AsyncFd` leaves a connection out of the event
//!   loop until it must wait (`conn_io::LazyTcp`).
//!
//! With `TCP_DEFER_ACCEPT` Linux completes a client's handshake but queues
//! the connection for `accept` only once its first bytes arrive (or the
//! period runs out: the connection is then accepted as it is). A new
//! connection then costs the gateway one wake-up instead of two (accept,
//! then the request's bytes), and its first read finds the request instead
//! of `EAGAIN`. HTTP, TLS and h2c clients all speak first, so none of them
//! waits on it.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

/// Asks Linux to hold `listener`'s new connections until their first bytes
/// arrive, for at least `wait` (whole seconds, rounded up, at least one).
#[allow(unsafe_code)]
pub fn set_defer_accept(listener: &impl AsFd, wait: Duration) -> io::Result<()> {
    let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1);
    let secs = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("an int's size fits");
    // SAFETY: the descriptor is borrowed from a live socket for the whole
    // call, and the option value points at a `c_int` on this stack frame
    // whose size is the length passed; the kernel only reads it.
    let done = unsafe {
        libc::setsockopt(
            listener.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const secs).cast(),
            len,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `listener`, registered with the current tokio runtime's event loop
/// for readability. Must be called within a tokio runtime.
#[allow(unsafe_code)]
pub fn async_listener(
    listener: mio::net::TcpListener,
) -> io::Result<tokio::io::unix::AsyncFd<mio::net::TcpListener>> {
    // SAFETY: the `AsyncFd` owns the listener, which owns its descriptor:
    // nothing else can close or replace it while it is registered, and the
    // `AsyncFd` removes it from the event loop before dropping the
    // listener (which closes it).
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
    };
    registered.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// The next connection `listener` (non-blocking) hands over, within a
    /// deadline.
    fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match listener.accept() {
                Ok(pair) => return pair,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection to accept");
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// What a new connection's task relies on: a deferred listener hands
    /// over the connection that spoke, with its bytes already there to read,
    /// before the one that connected first and said nothing; the silent one
    /// once it speaks.
    #[test]
    fn a_connection_is_accepted_once_its_first_bytes_arrive() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        super::set_defer_accept(&listener, Duration::from_secs(30)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut silent = TcpStream::connect(addr).unwrap();
        let mut speaking = TcpStream::connect(addr).unwrap();
        speaking.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let (mut first, peer) = accept(&listener);
        assert_eq!(
            peer,
            speaking.local_addr().unwrap(),
            "the speaking one first"
        );
        first.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let n = first
            .read(&mut buf)
            .expect("the first read finds the bytes");
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        silent.write_all(b"G").unwrap();
        let (_second, peer) = accept(&listener);
        assert_eq!(peer, silent.local_addr().unwrap());
    }
}
