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
//! pushes back the idle deadline.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
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
pub async fn relay(client: &TcpStream, backend: &TcpStream, idle_timeout: Duration) -> Relayed {
    let activity = Activity::new();
    let to_backend = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let end = {
        let upstream = copy(client, backend, &to_backend, &activity);
        let downstream = copy(backend, client, &to_client, &activity);
        tokio::pin!(upstream, downstream);
        let (mut upstream_done, mut downstream_done) = (false, false);
        loop {
            tokio::select! {
                result = &mut upstream, if !upstream_done => match result {
                    Ok(()) => upstream_done = true,
                    Err(HalfError::Read(e)) => break fail(Side::Client, e, backend),
                    Err(HalfError::Write(e)) => break fail(Side::Backend, e, client),
                },
                result = &mut downstream, if !downstream_done => match result {
                    Ok(()) => downstream_done = true,
                    Err(HalfError::Read(e)) => break fail(Side::Backend, e, client),
                    Err(HalfError::Write(e)) => break fail(Side::Client, e, backend),
                },
                () = activity.idle_for(idle_timeout) => break End::IdleTimeout,
            }
            if upstream_done && downstream_done {
                break End::Closed;
            }
        }
    };
    Relayed {
        to_backend: to_backend.into_inner(),
        to_client: to_client.into_inner(),
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

/// One direction: `src` to `dst` until end of stream, then shut `dst` for writing.
async fn copy(src: &TcpStream, dst: &TcpStream, count: &AtomicU64, activity: &Activity) -> Result<(), HalfError> {
    loop {
        src.readable().await.map_err(HalfError::Read)?;
        let mut buffer = Buffer::take();
        loop {
            match src.try_read(&mut buffer) {
                Ok(0) => {
                    // Already gone is fine: the peer closed first.
                    let _ = SockRef::from(dst).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    write_all(dst, &buffer[..n]).await.map_err(HalfError::Write)?;
                    count.fetch_add(n as u64, Ordering::Relaxed);
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HalfError::Read(e)),
            }
        }
    }
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The last time bytes moved either way, as milliseconds since the relay began:
/// one atomic, so both directions can update it without a lock.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`. One timer per connection,
    /// re-armed only when it fires, not on every read.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
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
