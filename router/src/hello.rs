//! Reading a ClientHello off a fresh connection, without terminating TLS.
//!
//! The bytes are read (not peeked) into a buffer that the connection later writes
//! to the backend unchanged, so a hello that arrives in many TCP segments or TLS
//! records is handled the same as one that arrives whole. No buffer is allocated
//! until the client has sent something, so clients that connect and wait cost no
//! memory but their socket. The whole read runs under one deadline and one cap.

pub mod parse;

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub use parse::{HelloInfo, Invalid, ParseError};

/// Most ClientHellos fit in this: 1,463 bytes for rustls with a post-quantum key
/// share, about 500 for classic ones. Larger ones grow the buffer up to the cap.
const INITIAL_BUFFER: usize = 2048;

/// Limits on reading a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloLimits {
    /// Deadline for the whole hello, from accept.
    pub timeout: Duration,
    /// Most bytes read before giving up.
    pub max_bytes: usize,
}

/// A complete ClientHello and the exact bytes it came in.
#[derive(Debug)]
pub struct Hello {
    pub info: HelloInfo,
    /// Everything read from the client so far: the hello, possibly followed by
    /// bytes the client sent right after it. Forwarded unchanged.
    pub bytes: Vec<u8>,
}

/// Why no hello could be read.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("ClientHello larger than {0} bytes")]
    TooLarge(usize),
    #[error("client closed the connection after {0} bytes, before a complete ClientHello")]
    Closed(usize),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
}

/// Read from `stream` until a complete ClientHello is parsed.
pub async fn read(stream: &mut TcpStream, limits: HelloLimits) -> Result<Hello, HelloError> {
    tokio::time::timeout(limits.timeout, read_until_parsed(stream, limits.max_bytes))
        .await
        .unwrap_or(Err(HelloError::Timeout(limits.timeout)))
}

async fn read_until_parsed(stream: &mut TcpStream, max_bytes: usize) -> Result<Hello, HelloError> {
    stream.readable().await?;
    let mut bytes = Vec::with_capacity(INITIAL_BUFFER.min(max_bytes));
    loop {
        if bytes.len() == bytes.capacity() {
            let room = max_bytes - bytes.len();
            if room == 0 {
                return Err(HelloError::TooLarge(max_bytes));
            }
            bytes.reserve_exact(room.min(bytes.capacity()));
        }
        // Never read past the cap: `take` bounds this read to the room left.
        let room = (max_bytes - bytes.len()) as u64;
        let n = (&mut *stream).take(room).read_buf(&mut bytes).await?;
        if n == 0 {
            return Err(HelloError::Closed(bytes.len()));
        }
        match parse::parse(&bytes) {
            Ok(info) => return Ok(Hello { info, bytes }),
            Err(ParseError::Incomplete) if bytes.len() >= max_bytes => {
                return Err(HelloError::TooLarge(max_bytes));
            }
            Err(ParseError::Incomplete) => {}
            Err(ParseError::Invalid(invalid)) => return Err(invalid.into()),
        }
    }
}
