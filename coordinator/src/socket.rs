//! The socket under each worker's WebSocket: cheap while idle, efficient while busy.
//!
//! - **Reading ahead**: the WebSocket's own read buffer is small (`read_buffer_size`), so an
//!   idle worker costs little memory. While data streams in, the socket is read in large
//!   pieces through a [`ReadAhead`] (the protocol crate's, which the native worker uses
//!   too), so a large payload takes a few system calls instead of one per small read. A
//!   large binary message is read past the WebSocket, straight into a buffer of its own
//!   ([`Socket::take_large_message`]).
//! - **An ordered write queue**: whole WebSocket frames can be queued ([`Socket::queue`];
//!   the `websocket` module's `WebSocket` is the one that queues them).
//!   Small ones are gathered into one contiguous buffer, large ones are sent from the memory
//!   they were encoded in (a job's payload is not copied again), and everything queued is
//!   written many pieces at a time with one vectored write, then the stream is flushed (a
//!   TLS stream may otherwise hold back the end of what it took until the next write,
//!   while the socket is full). Bytes the WebSocket itself
//!   writes (pongs, the close) go behind whatever is queued, so frames never interleave.
//!   When the socket takes only part of a write, the rest waits here and is written from
//!   where it stopped. The connection bounds what it queues (credit); writes from elsewhere
//!   wait for the socket past [`BEHIND_MAX`] bytes.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use distchan_protocol::read_ahead::{End, ReadAhead, ReadPool};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes queued before writes from elsewhere than [`Socket::queue`] wait for the socket.
pub(crate) const BEHIND_MAX: usize = 16 * 1024 * 1024;

/// Most pieces written by one vectored write.
const SLICES: usize = 64;

/// A piece of the write queue.
#[derive(Debug)]
enum Piece {
    /// Small writes gathered, in order.
    Gathered(Vec<u8>),
    /// Bytes shared with their owner, such as a large job's frame.
    Shared(Bytes),
}

/// Writes up to this size are gathered (copied) rather than queued as they are.
const GATHER: usize = 1024;

/// Room a gathering buffer is made with.
const GATHER_ROOM: usize = 16 * 1024;

impl Piece {
    fn as_slice(&self) -> &[u8] {
        match self {
            Piece::Gathered(v) => v,
            Piece::Shared(b) => b,
        }
    }
}

/// A socket that reads ahead while busy and writes behind; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Socket<S> {
    io: ReadAhead<S>,
    /// Bytes to write, in order; the first piece from `sent` on.
    queue: VecDeque<Piece>,
    sent: usize,
    /// Bytes in `queue`, not counting `sent`.
    queued: usize,
    /// True once bytes were written and the stream not flushed since: a TLS stream may
    /// hold back part of what it took until then.
    unflushed: bool,
}

impl<S> Socket<S> {
    /// Wraps `io`, lending read-ahead buffers from `pool`.
    pub fn new(io: S, pool: Arc<ReadPool>) -> Self {
        Socket {
            io: ReadAhead::new(io, pool),
            queue: VecDeque::new(),
            sent: 0,
            queued: 0,
            unflushed: false,
        }
    }

    /// Reads binary messages of up to `max` bytes and at least
    /// [`LARGE_MESSAGE`](distchan_protocol::read_ahead::LARGE_MESSAGE) past the WebSocket
    /// (a worker's stream of frames starts here); see [`ReadAhead::read_large_messages`].
    pub fn read_large_messages(mut self, max: usize) -> Self {
        self.io = self.io.read_large_messages(End::Server, max);
        self
    }

    /// The large message read past the WebSocket, which comes before the WebSocket's next.
    pub fn take_large_message(&mut self) -> Option<Bytes> {
        self.io.take_large_message()
    }

    /// Queues `bytes` to be written after everything written or queued so far.
    pub fn queue(&mut self, bytes: Bytes) {
        if bytes.len() <= GATHER {
            self.gather(&bytes);
        } else {
            self.queued += bytes.len();
            self.queue.push_back(Piece::Shared(bytes));
        }
    }

    /// Queues a copy of `small`.
    pub fn gather(&mut self, small: &[u8]) {
        if small.is_empty() {
            return;
        }
        self.queued += small.len();
        // The first piece may be partly written already: gather after it, not into it.
        let tail_open = self.queue.len() > 1 || self.sent == 0;
        if let (true, Some(Piece::Gathered(v))) = (tail_open, self.queue.back_mut()) {
            if v.len() + small.len() <= v.capacity() {
                v.extend_from_slice(small);
                return;
            }
        }
        let mut v = Vec::with_capacity(GATHER_ROOM.max(small.len()));
        v.extend_from_slice(small);
        self.queue.push_back(Piece::Gathered(v));
    }

    /// True while queued bytes wait to be written, or written ones to be flushed.
    pub fn has_queued(&self) -> bool {
        self.queued > 0 || self.unflushed
    }

    /// Drops `n` written bytes from the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let front = self.queue[0].as_slice().len() - self.sent;
            if n < front {
                self.sent += n;
                return;
            }
            n -= front;
            self.sent = 0;
            self.queue.pop_front();
        }
        if self.queue.is_empty() && self.queue.capacity() > 4 * SLICES {
            self.queue = VecDeque::new(); // a large backlog's memory goes back
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Socket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> Socket<S> {
    /// Writes what is queued, many pieces at a time, then flushes the stream; ready once
    /// everything is out (a TLS stream keeps nothing back).
    pub fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.queued > 0 {
            let n = if self.io.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); SLICES];
                let mut count = 0;
                for (i, piece) in self.queue.iter().take(SLICES).enumerate() {
                    let from = if i == 0 { self.sent } else { 0 };
                    slices[i] = IoSlice::new(&piece.as_slice()[from..]);
                    count += 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?
            } else {
                let front = &self.queue[0].as_slice()[self.sent..];
                ready!(Pin::new(&mut self.io).poll_write(cx, front))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unflushed = true;
            self.advance(n);
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Socket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.queued > 0 && this.poll_write_queued(cx)?.is_pending() {
            // Keep the order: these bytes go behind the queued ones.
            if this.queued >= BEHIND_MAX {
                return Poll::Pending;
            }
            this.gather(data);
            return Poll::Ready(Ok(data.len()));
        }
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) if n > 0 && n < data.len() => {
                this.unflushed = true;
                this.gather(&data[n..]);
                Poll::Ready(Ok(data.len()))
            }
            Poll::Ready(Ok(n)) => {
                this.unflushed |= n > 0;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.unflushed = true; // whatever the stream holds goes now
        this.poll_write_queued(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_queued(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn queued_frames_and_writes_reach_the_peer_in_order() {
        let pool = Arc::new(ReadPool::new(4));
        // A pipe holding 1000 bytes: most of what is queued must wait for the reader.
        let (io, mut peer) = tokio::io::duplex(1000);
        let mut socket = Socket::new(io, pool);
        let pieces: Vec<Bytes> = (0..200u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 1 + (i as usize * 37) % 300]))
            .collect();
        for piece in &pieces[..100] {
            socket.queue(piece.clone());
        }
        socket.queue(Bytes::from(vec![9u8; 5000])); // shared, not gathered
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        // A write from elsewhere lands behind the queued pieces.
        socket.write_all(b"between").await.unwrap();
        for piece in &pieces[100..] {
            socket.queue(piece.clone());
        }
        socket.flush().await.unwrap();
        assert!(!socket.has_queued());
        socket.shutdown().await.unwrap();
        drop(socket);
        let mut want = pieces[..100].concat();
        want.extend_from_slice(&[9u8; 5000]);
        want.extend_from_slice(b"between");
        want.extend(pieces[100..].concat());
        assert_eq!(reader.await.unwrap(), want);
    }

    /// A stream that keeps what it is given until flushed (as a TLS stream may keep part of
    /// it): written queued frames reach the peer without another write after them.
    #[tokio::test]
    async fn queued_frames_are_flushed_through_a_stream_that_holds_them_back() {
        let pool = Arc::new(ReadPool::new(4));
        let (io, mut peer) = tokio::io::duplex(64 * 1024);
        let mut socket = Socket::new(tokio::io::BufWriter::new(io), pool);
        socket.queue(Bytes::from_static(b"a small frame"));
        socket.queue(Bytes::from(vec![7u8; 3000]));
        std::future::poll_fn(|cx| socket.poll_write_queued(cx))
            .await
            .unwrap();
        assert!(!socket.has_queued());
        let mut got = vec![0u8; 13 + 3000];
        tokio::time::timeout(Duration::from_secs(20), peer.read_exact(&mut got))
            .await
            .expect("everything written reached the peer")
            .unwrap();
        assert_eq!(&got[..13], b"a small frame");
        assert!(got[13..].iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn a_write_the_socket_takes_in_part_completes_in_order() {
        let pool = Arc::new(ReadPool::new(4));
        // A pipe holding 1000 bytes: a 5000-byte write is taken in part.
        let (io, mut peer) = tokio::io::duplex(1000);
        let mut socket = Socket::new(io, pool);
        let first: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let second = b"after".to_vec();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        socket.write_all(&first).await.unwrap();
        socket.write_all(&second).await.unwrap();
        socket.flush().await.unwrap();
        socket.shutdown().await.unwrap();
        drop(socket);
        let all = reader.await.unwrap();
        assert_eq!(all, [first, second].concat());
    }
}
