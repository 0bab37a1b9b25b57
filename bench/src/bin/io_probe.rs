//! A measuring instrument, not a proxy: the smallest HTTP/1.1 keep-alive
//! forwarder, with two ways of doing its I/O, to find what the kernel's
//! share of a proxied small GET costs with each.
//!
//! Portico's small keep-alive GET is level with nginx and HAProxy per core,
//! and about four fifths of every proxy's CPU per request is the kernel's
//! (bench/RESULTS.md). Whether that share can shrink depends on the kernel
//! interface, not on a proxy's code, so this tool strips the proxy away:
//!
//! - `--engine epoll`: a tokio current-thread runtime, one task per client
//!   connection, a read and a write per message: what any readiness-based
//!   proxy (Portico, nginx, HAProxy) asks of the kernel.
//! - `--engine uring`: one io_uring; every receive and send of every
//!   connection goes through it, and the loop submits all the work it
//!   queued and waits for completions in one `io_uring_enter`.
//! - `--engine uring-defer`: the same ring set up single-issuer with
//!   deferred task running (completions run only when the loop waits, in
//!   batches).
//!
//! Each client connection gets an upstream connection of its own, opened at
//! accept and kept. A request is taken to be whole when its bytes end with
//! a blank line (bodiless requests, as `wrk` sends); a response when its
//! head and `Content-Length` bytes are in. Nothing else is checked: this
//! must never face anything but `bench/io_probe.sh`'s load on 127.0.0.1.

use std::net::{SocketAddr, TcpListener, TcpStream};

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Engine {
    Epoll,
    Uring,
    UringDefer,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    upstream: SocketAddr,
    #[arg(long, value_enum)]
    engine: Engine,
}

/// Where a message ends, once `buf` holds all of it: a request at its blank
/// line, a response after its head and `Content-Length` bytes.
fn message_end(buf: &[u8], response: bool) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if !response {
        return Some(head);
    }
    let text = std::str::from_utf8(&buf[..head]).ok()?;
    let length = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head + length).then_some(head + length)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)?;
    match args.engine {
        Engine::Epoll => epoll::run(listener, args.upstream),
        #[cfg(target_os = "linux")]
        Engine::Uring => uring::run(&listener, args.upstream, false),
        #[cfg(target_os = "linux")]
        Engine::UringDefer => uring::run(&listener, args.upstream, true),
        #[cfg(not(target_os = "linux"))]
        Engine::Uring | Engine::UringDefer => anyhow::bail!("io_uring is Linux's"),
    }
}

/// Connects to the upstream, both sockets without Nagle's delay.
fn pair(client: &TcpStream, upstream: SocketAddr) -> std::io::Result<TcpStream> {
    client.set_nodelay(true)?;
    let up = TcpStream::connect(upstream)?;
    up.set_nodelay(true)?;
    Ok(up)
}

mod epoll {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub fn run(listener: TcpListener, upstream: SocketAddr) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        rt.block_on(async move {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            loop {
                let (client, _) = listener.accept().await?;
                let client = client.into_std()?;
                let up = pair(&client, upstream)?;
                up.set_nonblocking(true)?;
                let client = tokio::net::TcpStream::from_std(client)?;
                let up = tokio::net::TcpStream::from_std(up)?;
                tokio::spawn(async move {
                    let _ = forward(client, up).await;
                });
            }
        })
    }

    async fn forward(
        mut client: tokio::net::TcpStream,
        mut up: tokio::net::TcpStream,
    ) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(8192);
        loop {
            for response in [false, true] {
                let from = if response { &mut up } else { &mut client };
                buf.clear();
                let end = loop {
                    if from.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                    if let Some(end) = message_end(&buf, response) {
                        break end;
                    }
                };
                let to = if response { &mut client } else { &mut up };
                to.write_all(&buf[..end]).await?;
            }
        }
    }
}

/// io_uring's submission queue takes raw pointers to buffers the kernel
/// fills later, which only `unsafe` can express; the crate is the
/// maintained binding (tokio-rs/io-uring).
#[allow(unsafe_code)]
#[cfg(target_os = "linux")]
mod uring {
    use super::*;
    use io_uring::{IoUring, opcode, squeue, types};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const ACCEPT: u64 = u64::MAX;
    const BUF: usize = 8192;

    /// One client connection and its upstream, and which of the four steps
    /// of an exchange is in flight.
    struct Pair {
        client: OwnedFd,
        up: OwnedFd,
        buf: Vec<u8>,
        filled: usize,
        sent: usize,
        end: usize,
        step: Step,
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Step {
        ReadRequest,
        SendRequest,
        ReadResponse,
        SendResponse,
    }

    impl Pair {
        /// The operation for the current step.
        fn op(&mut self, id: usize) -> squeue::Entry {
            let (fd, out) = match self.step {
                Step::ReadRequest => (&self.client, false),
                Step::SendRequest => (&self.up, true),
                Step::ReadResponse => (&self.up, false),
                Step::SendResponse => (&self.client, true),
            };
            let fd = fd.as_raw_fd();
            let entry = if out {
                let rest = &self.buf[self.sent..self.end];
                opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32).build()
            } else {
                let room = &mut self.buf[self.filled..];
                opcode::Recv::new(types::Fd(fd), room.as_mut_ptr(), room.len() as u32).build()
            };
            entry.user_data(id as u64)
        }

        /// Takes an operation's result; false when the pair is done.
        fn complete(&mut self, result: i32) -> bool {
            if result <= 0 {
                return false;
            }
            let n = result as usize;
            match self.step {
                Step::ReadRequest | Step::ReadResponse => {
                    self.filled += n;
                    let response = self.step == Step::ReadResponse;
                    if let Some(end) = message_end(&self.buf[..self.filled], response) {
                        self.end = end;
                        self.sent = 0;
                        self.step = if response {
                            Step::SendResponse
                        } else {
                            Step::SendRequest
                        };
                    } else if self.filled == BUF {
                        return false;
                    }
                }
                Step::SendRequest | Step::SendResponse => {
                    self.sent += n;
                    if self.sent == self.end {
                        self.filled = 0;
                        self.step = match self.step {
                            Step::SendRequest => Step::ReadResponse,
                            _ => Step::ReadRequest,
                        };
                    }
                }
            }
            true
        }
    }

    pub fn run(listener: &TcpListener, upstream: SocketAddr, defer: bool) -> anyhow::Result<()> {
        let mut builder = IoUring::<squeue::Entry>::builder();
        if defer {
            builder.setup_single_issuer().setup_defer_taskrun();
        }
        let mut ring = builder.build(4096)?;
        let mut pairs: Vec<Option<Pair>> = Vec::new();
        let accept = opcode::Accept::new(
            types::Fd(listener.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .build()
        .user_data(ACCEPT);
        // SAFETY: the listener outlives the ring's use of it.
        unsafe { ring.submission().push(&accept)? };
        let mut queued = Vec::new();
        loop {
            ring.submit_and_wait(1)?;
            for cqe in ring.completion() {
                queued.push((cqe.user_data(), cqe.result()));
            }
            for (id, result) in queued.drain(..) {
                let entry = if id == ACCEPT {
                    if let Some(entry) = accepted(result, upstream, &mut pairs) {
                        // SAFETY: the pair's buffer lives as long as the pair,
                        // and a pair is dropped only after its operation ends.
                        unsafe { ring.submission().push(&entry)? };
                    }
                    accept.clone()
                } else {
                    let slot = &mut pairs[id as usize];
                    let pair = slot.as_mut().expect("a completion for a live pair");
                    if !pair.complete(result) {
                        // Dropped: both descriptors closed.
                        *slot = None;
                        continue;
                    }
                    pair.op(id as usize)
                };
                // SAFETY: as above.
                unsafe { ring.submission().push(&entry)? };
            }
        }
    }

    /// A new client connection: its upstream and its first read.
    fn accepted(
        fd: i32,
        upstream: SocketAddr,
        pairs: &mut Vec<Option<Pair>>,
    ) -> Option<squeue::Entry> {
        if fd < 0 {
            return None;
        }
        // SAFETY: the ring's accept gave us this descriptor.
        let client = unsafe { TcpStream::from_raw_fd(fd) };
        let up = pair(&client, upstream).ok()?;
        let id = pairs.iter().position(Option::is_none).unwrap_or_else(|| {
            pairs.push(None);
            pairs.len() - 1
        });
        let mut p = Pair {
            client: client.into(),
            up: up.into(),
            buf: vec![0; BUF],
            filled: 0,
            sent: 0,
            end: 0,
            step: Step::ReadRequest,
        };
        let entry = p.op(id);
        pairs[id] = Some(p);
        Some(entry)
    }
}
