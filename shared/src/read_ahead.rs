//! Reading a busy socket ahead, under a WebSocket that keeps only a small read buffer
//! (feature `io`, native targets; both the coordinator and the native worker use it).
//!
//! The WebSocket library zero-fills its read buffer up to `read_buffer_size` before every
//! read and reads at most that much. A large buffer (its default is 128 KiB) makes every
//! read of a small frame cost a 128 KiB `memset`, and keeps 128 KiB per connection; a small
//! one makes a large payload take a system call per few KiB. [`ReadAhead`] removes the
//! choice: the WebSocket keeps a small buffer ([`WEBSOCKET_READ_BUFFER`]), and while data
//! streams in, the socket is read in pieces of [`READ_AHEAD`] into a buffer lent by a
//! [`ReadPool`] and handed out from there. The buffer goes back to the pool as soon as the
//! socket has nothing more, so an idle connection holds none.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use distchan_protocol::read_ahead::{ReadAhead, ReadPool};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let (mut peer, io) = tokio::io::duplex(1 << 16);
//! let mut socket = ReadAhead::new(io, Arc::new(ReadPool::new(4)));
//! peer.write_all(b"two small frames").await?;
//! let mut first = [0u8; 3];
//! socket.read_exact(&mut first).await?; // one read of the socket serves both
//! let mut rest = [0u8; 13];
//! socket.read_exact(&mut rest).await?;
//! assert_eq!((&first[..], &rest[..]), (&b"two"[..], &b" small frames"[..]));
//! # Ok::<(), std::io::Error>(())
//! # }).unwrap();
//! ```

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of a read-ahead buffer: the most one read of the socket takes.
pub const READ_AHEAD: usize = 64 * 1024;

/// The WebSocket read buffer to pair with [`ReadAhead`]: small, as the library zero-fills
/// it before every read.
pub const WEBSOCKET_READ_BUFFER: usize = 2 * 1024;

/// Read-ahead buffers lent to busy sockets and kept for reuse when they come back.
#[derive(Debug)]
pub struct ReadPool {
    free: Mutex<Vec<Box<[u8]>>>,
    /// Most buffers kept for reuse.
    keep: usize,
}

impl ReadPool {
    /// A pool that keeps up to `keep` buffers for reuse.
    pub const fn new(keep: usize) -> Self {
        ReadPool {
            free: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// The pool of this process for sockets that have none of their own (a worker's
    /// connections), keeping up to 16 buffers.
    pub fn process() -> Arc<ReadPool> {
        static PROCESS: OnceLock<Arc<ReadPool>> = OnceLock::new();
        PROCESS.get_or_init(|| Arc::new(ReadPool::new(16))).clone()
    }

    fn take(&self) -> Box<[u8]> {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| vec![0; READ_AHEAD].into_boxed_slice())
    }

    fn give_back(&self, buf: Box<[u8]>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }

    /// Buffers waiting to be lent.
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A socket read ahead while busy; see the [module docs](self). Writes pass through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    io: S,
    pool: Arc<ReadPool>,
    /// The lent buffer, with unread bytes at `ahead.1..ahead.2`.
    ahead: Option<(Box<[u8]>, usize, usize)>,
}

impl<S> ReadAhead<S> {
    /// Wraps `io`, lending read-ahead buffers from `pool`.
    pub fn new(io: S, pool: Arc<ReadPool>) -> Self {
        ReadAhead {
            io,
            pool,
            ahead: None,
        }
    }

    fn release(&mut self) {
        if let Some((buf, _, _)) = self.ahead.take() {
            self.pool.give_back(buf);
        }
    }
}

impl<S> Drop for ReadAhead<S> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some((buf, from, to)) = &mut this.ahead {
                if from < to {
                    let n = out.remaining().min(*to - *from);
                    out.put_slice(&buf[*from..*from + n]);
                    *from += n;
                    return Poll::Ready(Ok(()));
                }
            }
            if out.remaining() >= READ_AHEAD {
                // The caller reads in large pieces itself: no copy.
                this.release();
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            let (mut buf, _, _) = match this.ahead.take() {
                Some(lent) => lent,
                None => (this.pool.take(), 0, 0),
            };
            let mut filled = ReadBuf::new(&mut buf);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut filled);
            let n = filled.filled().len();
            match polled {
                Poll::Ready(Ok(())) if n > 0 => this.ahead = Some((buf, 0, n)),
                // End of stream, an error, or nothing yet: the buffer goes back.
                other => {
                    this.pool.give_back(buf);
                    return other;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_and_the_buffer_goes_back() {
        let pool = Arc::new(ReadPool::new(4));
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&data).await.unwrap();
        let mut socket = ReadAhead::new(io, pool.clone());
        let mut got = Vec::new();
        let mut chunk = [0u8; 1000];
        while got.len() < data.len() {
            let n = socket.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(pool.idle(), 0, "the buffer is lent while data remains");
        drop(peer);
        assert_eq!(socket.read(&mut chunk).await.unwrap(), 0, "end of stream");
        assert_eq!(pool.idle(), 1, "the buffer is back once the socket is dry");
    }

    #[tokio::test]
    async fn a_large_read_goes_to_the_socket_itself_and_writes_pass_through() {
        let pool = Arc::new(ReadPool::new(4));
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 247) as u8).collect();
        peer.write_all(&data).await.unwrap();
        let mut socket = ReadAhead::new(io, pool.clone());
        let mut got = vec![0u8; data.len()];
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(pool.idle(), 0, "no buffer was lent, so none came back");
        socket.write_all(b"answer").await.unwrap();
        socket.flush().await.unwrap();
        let mut back = [0u8; 6];
        peer.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"answer");
    }
}
