//! Relaying bytes both ways between a client and its backend.
//!
//! Each direction waits for its source to be readable *before* it takes a buffer,
//! and gives the buffer back as soon as the source has nothing more to read. An
//! idle connection (the usual state of an MQTT client between messages) therefore
//! holds no buffer at all, unlike `tokio::io::copy_bidirectional`, which keeps two
//! 8 KiB buffers for the connection's whole life. Buffers come from a small
//! per-thread pool, so a busy connection does not allocate on every read.
//!
//! End of stream on one side becomes a write shutdown on the other (half-close),
//! and the relay ends when both directions have seen theirs. An error on either
//! side ends both at once; a reset is passed on as a reset. Activity either way
//! pushes back the idle deadline. Both directions are polled by the connection's
//! own task, so tokio's cooperative budget keeps a busy connection from starving
//! others on the same worker.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Size of one relay buffer: two full TLS records, so a bulk transfer moves
/// whole records per system call.
const BUFFER_SIZE: usize = 32 * 1024;
/// Buffers kept per worker thread for reuse; more are freed on return.
const POOL_PER_THREAD: usize = 64;

/// Which peer a relay error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both sides finished sending (each direction saw end of stream).
    Closed,
    /// No bytes either way for the route's idle timeout.
    IdleTimeout,
    /// Reading from or writing to one side failed (typically a reset).
    Error(Side, io::Error),
}

/// Bytes moved and how it ended.
#[derive(Debug)]
pub struct Relayed {
    pub to_backend: u64,
    pub to_client: u64,
    pub end: End,
}

/// Relay between `client` and `backend` until both directions finish, one side
/// fails, or nothing moves for `idle_timeout`.
///
/// Written as one poll function over two small state machines rather than two
/// `async` loops: an idle connection then waits on the sockets' own readiness
/// slots (`poll_read_ready`) instead of keeping readiness futures alive, which
/// keeps the whole connection task at a few hundred bytes while it idles.
///
/// `progress(to_backend, to_client)` is called with the bytes moved each time
/// some move, so byte counters stay current on connections that last for days.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    idle_timeout: Duration,
    mut progress: impl FnMut(u64, u64),
) -> Relayed {
    let mut upstream = Half::default();
    let mut downstream = Half::default();
    let mut last_activity = Instant::now();
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let end = std::future::poll_fn(|cx| {
        let before = (upstream.count, downstream.count);
        let up = upstream.poll(cx, client, backend);
        let down = downstream.poll(cx, backend, client);
        if (upstream.count, downstream.count) != before {
            last_activity = Instant::now();
            progress(upstream.count - before.0, downstream.count - before.1);
        }
        match (up, down) {
            (Poll::Ready(Err(HalfError::Read(e))), _) => return Poll::Ready(fail(Side::Client, e, backend)),
            (Poll::Ready(Err(HalfError::Write(e))), _) => return Poll::Ready(fail(Side::Backend, e, client)),
            (_, Poll::Ready(Err(HalfError::Read(e)))) => return Poll::Ready(fail(Side::Backend, e, client)),
            (_, Poll::Ready(Err(HalfError::Write(e)))) => return Poll::Ready(fail(Side::Client, e, backend)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(End::Closed),
            _ => {}
        }
        // One timer per connection, moved only when it fires: activity just
        // records a time, which costs nothing per read.
        while idle.as_mut().poll(cx).is_ready() {
            let deadline = last_activity + idle_timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(End::IdleTimeout);
            }
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await;
    Relayed {
        to_backend: upstream.count,
        to_client: downstream.count,
        end,
    }
}

/// A side failed: make the other side see a reset too when this was one, so
/// neither end mistakes a broken stream for a clean close.
fn fail(side: Side, error: io::Error, other: &TcpStream) -> End {
    if error.kind() == io::ErrorKind::ConnectionReset {
        let _ = SockRef::from(other).set_linger(Some(Duration::ZERO));
    }
    End::Error(side, error)
}

enum HalfError {
    Read(io::Error),
    Write(io::Error),
}

/// One direction's progress.
#[derive(Default)]
enum State {
    /// Waiting for the source to be readable; no buffer held.
    #[default]
    Reading,
    /// Bytes `start..end` of `buffer` are still to be written.
    Writing { buffer: Buffer, start: usize, end: usize },
    /// End of stream seen and passed on.
    Done,
}

/// One direction: `src` to `dst` until end of stream, then shut `dst` for writing.
#[derive(Default)]
struct Half {
    state: State,
    count: u64,
}

impl Half {
    fn poll(&mut self, cx: &mut Context<'_>, src: &TcpStream, dst: &TcpStream) -> Poll<Result<(), HalfError>> {
        loop {
            match &mut self.state {
                State::Reading => {
                    ready!(src.poll_read_ready(cx)).map_err(HalfError::Read)?;
                    let mut buffer = Buffer::take();
                    match src.try_read(&mut buffer) {
                        Ok(0) => {
                            // Already gone is fine: the peer closed first.
                            let _ = SockRef::from(dst).shutdown(Shutdown::Write);
                            self.state = State::Done;
                        }
                        Ok(n) => {
                            self.state = State::Writing {
                                buffer,
                                start: 0,
                                end: n,
                            }
                        }
                        // Spurious readiness: `try_read` cleared it; the buffer goes
                        // back to the pool and the next poll waits again.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Poll::Ready(Err(HalfError::Read(e))),
                    }
                }
                State::Writing { buffer, start, end } => {
                    ready!(dst.poll_write_ready(cx)).map_err(HalfError::Write)?;
                    match dst.try_write(&buffer[*start..*end]) {
                        Ok(0) => return Poll::Ready(Err(HalfError::Write(io::ErrorKind::WriteZero.into()))),
                        Ok(n) => {
                            *start += n;
                            self.count += n as u64;
                            if start == end {
                                self.state = State::Reading;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Poll::Ready(Err(HalfError::Write(e))),
                    }
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// A relay buffer on loan from this thread's pool; returned on drop.
struct Buffer(Option<Box<[u8]>>);

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

impl Buffer {
    fn take() -> Self {
        let reused = POOL.try_with(|pool| pool.borrow_mut().pop()).ok().flatten();
        Self(Some(reused.unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice())))
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.0.take() {
            // The task may have moved threads since `take`: the buffer joins this
            // thread's pool, which is as good.
            // During thread teardown the pool may be gone; then the buffer is freed.
            let _ = POOL.try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOL_PER_THREAD {
                    pool.push(buffer);
                }
            });
        }
    }
}
