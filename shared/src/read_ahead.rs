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
//! A large binary message would still be copied out of the read-ahead buffer a few KiB at a
//! time into the WebSocket's buffer (zero-filled first), and from there into a buffer of its
//! own. Told which end of the WebSocket it reads for ([`ReadAhead::read_large_messages`]),
//! a [`ReadAhead`] follows the frames as they pass and reads every whole, unfragmented
//! binary message of [`LARGE_MESSAGE`] bytes or more itself, straight from the socket into a
//! buffer of the [`pool`], unmasking it there. The WebSocket never sees it: its
//! reader asks for it with [`ReadAhead::take_large_message`] before each message it reads
//! from the WebSocket, and gets the messages in the order they came. Every other frame
//! (control frames, text, fragments, a frame over the size limit or with the wrong masking)
//! goes to the WebSocket, which checks and refuses what it must.
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
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pool;

/// Size of a read-ahead buffer: the most one read of the socket takes.
pub const READ_AHEAD: usize = 64 * 1024;

/// The WebSocket read buffer to pair with [`ReadAhead`]: small, as the library zero-fills
/// it before every read.
pub const WEBSOCKET_READ_BUFFER: usize = 2 * 1024;

/// Binary messages of this size or more are read past the WebSocket by a [`ReadAhead`]
/// that follows the frames (see [`ReadAhead::read_large_messages`]): the size from which
/// the [`pool`] keeps buffers for reuse. Smaller ones would each take memory from the
/// allocator, and from 128 KiB on its memory is newly mapped each time, a page fault per
/// 4 KiB: for 64 KiB to 256 KiB messages that cost more than the copies saved.
pub const LARGE_MESSAGE: usize = pool::LARGE;

/// The end of the WebSocket a [`ReadAhead`] reads for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server (the coordinator): the stream starts with the first frame, and every frame
    /// comes masked.
    Server,
    /// The client (a worker): the stream starts with the server's HTTP response, and frames
    /// come unmasked.
    Client,
}

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
    /// The frames followed, once told which end this is.
    frames: Option<Box<Frames>>,
}

impl<S> ReadAhead<S> {
    /// Wraps `io`, lending read-ahead buffers from `pool`.
    pub fn new(io: S, pool: Arc<ReadPool>) -> Self {
        ReadAhead {
            io,
            pool,
            ahead: None,
            frames: None,
        }
    }

    /// Follows the WebSocket's frames from the start of the stream, for the `end` given,
    /// and reads binary messages of [`LARGE_MESSAGE`] bytes or more, up to `max` bytes,
    /// past the WebSocket (see the [module docs](self)). Whoever reads the WebSocket must
    /// then ask [`ReadAhead::take_large_message`] before each of its reads.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::{pin::Pin, task::Poll};
    /// use distchan_protocol::read_ahead::{End, ReadAhead, ReadPool, LARGE_MESSAGE};
    /// use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let (mut peer, io) = tokio::io::duplex(1 << 20);
    /// let mut socket = ReadAhead::new(io, Arc::new(ReadPool::new(4)))
    ///     .read_large_messages(End::Client, 1 << 20);
    /// let payload = vec![7u8; LARGE_MESSAGE];
    /// let response = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
    /// peer.write_all(response).await?;
    /// peer.write_all(&[0x89, 0x00]).await?; // a ping: for the WebSocket
    /// peer.write_all(&[0x82, 127]).await?; // a large binary message: read past it
    /// peer.write_all(&(LARGE_MESSAGE as u64).to_be_bytes()).await?;
    /// peer.write_all(&payload).await?;
    /// let mut read = [0u8; 36];
    /// socket.read_exact(&mut read).await?;
    /// assert_eq!(&read, response);
    /// let mut ping = [0u8; 2];
    /// socket.read_exact(&mut ping).await?;
    /// assert_eq!(ping, [0x89, 0x00]);
    /// assert!(socket.take_large_message().is_none(), "not read yet");
    /// // What the WebSocket's reader does: take a large message first, else read.
    /// let large = std::future::poll_fn(|cx| match socket.take_large_message() {
    ///     Some(large) => Poll::Ready(large),
    ///     None => {
    ///         let mut byte = [0u8; 1];
    ///         let mut byte = ReadBuf::new(&mut byte);
    ///         let _ = Pin::new(&mut socket).poll_read(cx, &mut byte);
    ///         assert!(byte.filled().is_empty(), "none of it reaches the WebSocket");
    ///         Poll::Pending // woken at once when the message is there
    ///     }
    /// })
    /// .await;
    /// assert_eq!(large, payload);
    /// # Ok::<(), std::io::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn read_large_messages(mut self, end: End, max: usize) -> Self {
        self.frames = Some(Box::new(Frames::new(end, max)));
        self
    }

    /// The large binary message read past the WebSocket, if one waits: it came before
    /// anything the WebSocket has not returned yet. While one waits, reading the socket
    /// stops (the read is woken again at once, so that its caller takes this first): a
    /// reader that never asks would spin. A large message that comes after a close frame
    /// is read like any other (the WebSocket would refuse it); both of our readers stop
    /// at the close.
    pub fn take_large_message(&mut self) -> Option<Bytes> {
        self.frames.as_mut()?.ready.take()
    }

    fn release(&mut self) {
        if let Some((buf, _, _)) = self.ahead.take() {
            self.pool.give_back(buf);
        }
    }
}

/// The frames a [`ReadAhead`] follows, and the large message it reads past the WebSocket.
#[derive(Debug)]
struct Frames {
    end: End,
    /// The largest message read past the WebSocket.
    max: u64,
    /// For a client still passing the HTTP response on: where the bytes passed so far end
    /// in the search for its end, a line break followed by an empty line.
    http: Option<HttpEnd>,
    /// Bytes of the frame being passed to the WebSocket that are still to pass.
    pass: u64,
    /// A fragmented message is being passed: its frames all go to the WebSocket.
    fragmented: bool,
    /// The large message being read: its mask, its bytes so far, its length.
    large: Option<(Option<[u8; 4]>, Vec<u8>, usize)>,
    /// A large message read, for [`ReadAhead::take_large_message`].
    ready: Option<Bytes>,
}

/// Where the search for the end of an HTTP response stands: its head ends with a line
/// break (`\n`, or `\r\n`) followed by an empty line (`\n` or `\r\n`), as the WebSocket
/// library's HTTP parser reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpEnd {
    /// Inside a line.
    InLine,
    /// Right after a line break.
    LineEnd,
    /// After a line break and a `\r`.
    LineEndCr,
    /// The response is over: frames follow.
    Found,
}

impl HttpEnd {
    fn next(self, byte: u8) -> HttpEnd {
        match (self, byte) {
            (HttpEnd::LineEnd | HttpEnd::LineEndCr, b'\n') => HttpEnd::Found,
            (_, b'\n') => HttpEnd::LineEnd,
            (HttpEnd::LineEnd, b'\r') => HttpEnd::LineEndCr,
            _ => HttpEnd::InLine,
        }
    }
}

/// A frame header's facts.
#[derive(Debug, Clone, Copy)]
struct Header {
    /// The first byte: FIN, RSV1-3, opcode.
    first: u8,
    mask: Option<[u8; 4]>,
    /// Bytes of the header.
    size: usize,
    /// Bytes of the payload.
    len: u64,
}

impl Header {
    const FIN: u8 = 0x80;
    const RSV: u8 = 0x70;
    const CONTINUATION: u8 = 0x0;
    const BINARY: u8 = 0x2;

    /// The header at the start of `bytes`; `None` while it is incomplete.
    fn parse(bytes: &[u8]) -> Option<Header> {
        let (first, second) = (*bytes.first()?, *bytes.get(1)?);
        let (len, mut size) = match second & 0x7f {
            126 => (
                u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as u64,
                4,
            ),
            127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 10),
            n => (n as u64, 2),
        };
        let mask = match second & 0x80 {
            0 => None,
            _ => {
                let key = bytes.get(size..size + 4)?.try_into().ok()?;
                size += 4;
                Some(key)
            }
        };
        Some(Header {
            first,
            mask,
            size,
            len,
        })
    }

    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    fn fin(&self) -> bool {
        self.first & Self::FIN != 0
    }
}

impl Frames {
    fn new(end: End, max: usize) -> Self {
        Frames {
            end,
            max: max as u64,
            http: (end == End::Client).then_some(HttpEnd::InLine),
            pass: 0,
            fragmented: false,
            large: None,
            ready: None,
        }
    }

    /// Whether the frame `h` begins is a large message to read past the WebSocket.
    fn takes(&self, h: &Header) -> bool {
        !self.fragmented
            && h.first & (Header::FIN | Header::RSV) == Header::FIN
            && h.opcode() == Header::BINARY
            && h.mask.is_some() == (self.end == End::Server)
            && (LARGE_MESSAGE as u64..=self.max).contains(&h.len)
    }

    /// Notes that the frame `h` begins goes to the WebSocket.
    fn passes(&mut self, h: &Header) {
        self.pass = (h.size as u64).saturating_add(h.len);
        if h.opcode() <= Header::BINARY {
            if !h.fin() {
                self.fragmented = true;
            } else if h.opcode() == Header::CONTINUATION {
                self.fragmented = false;
            }
        }
    }

    /// How many bytes at the start of `bytes`, at most `room`, may go to the WebSocket now;
    /// a large message found at a frame's start is begun instead (its header consumed:
    /// `consumed` grows by its size).
    fn passable(&mut self, bytes: &[u8], room: usize, consumed: &mut usize) -> usize {
        let mut n = 0;
        while n < room && n < bytes.len() {
            let rest = &bytes[n..];
            if let Some(at) = &mut self.http {
                let mut i = 0;
                while i < rest.len().min(room - n) && *at != HttpEnd::Found {
                    *at = at.next(rest[i]);
                    i += 1;
                }
                n += i;
                if *at == HttpEnd::Found {
                    self.http = None;
                }
                continue;
            }
            if self.pass > 0 {
                let k = (rest.len().min(room - n) as u64).min(self.pass);
                self.pass -= k;
                n += k as usize;
                continue;
            }
            let Some(h) = Header::parse(rest) else { break };
            if self.takes(&h) {
                if n == 0 {
                    *consumed += h.size;
                    let buf = pool::take(h.len as usize);
                    self.large = Some((h.mask, buf, h.len as usize));
                }
                break;
            }
            self.passes(&h);
        }
        n
    }
}

/// Unmasks `payload` (the start of a frame's payload) with `key`.
fn unmask(payload: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

impl<S> Drop for ReadAhead<S> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S: AsyncRead + Unpin> ReadAhead<S> {
    /// Reads more of the socket behind the unread bytes, which move to the buffer's start:
    /// `Ok(0)` at the end of the stream. A buffer left empty goes back to the pool when
    /// the socket has nothing (more) to give.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let (mut buf, from, to) = match self.ahead.take() {
            Some(lent) => lent,
            None => (self.pool.take(), 0, 0),
        };
        let kept = to - from;
        buf.copy_within(from..to, 0);
        let mut filled = ReadBuf::new(&mut buf[kept..]);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut filled);
        let n = filled.filled().len();
        match polled {
            Poll::Ready(Ok(())) if n > 0 => {
                self.ahead = Some((buf, 0, kept + n));
                Poll::Ready(Ok(n))
            }
            // End of stream, an error, or nothing yet.
            other => {
                if kept > 0 {
                    self.ahead = Some((buf, 0, kept));
                } else {
                    self.pool.give_back(buf);
                }
                other.map_ok(|()| 0)
            }
        }
    }

    /// Reads the large message begun, from what is read ahead and then straight from the
    /// socket: `Ok(true)` once it is whole (and waits in `ready`), `Ok(false)` if the
    /// stream ended first.
    fn poll_large(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let ReadAhead {
            io,
            pool,
            ahead,
            frames,
        } = self;
        let frames = frames.as_mut().expect("only called when following frames");
        let (_, buf, len) = frames.large.as_mut().expect("a large message is begun");
        if let Some((lent, from, to)) = ahead {
            let k = (*len - buf.len()).min(*to - *from);
            buf.extend_from_slice(&lent[*from..*from + k]);
            *from += k;
            if from == to && buf.len() < *len {
                // The rest is read straight from the socket: the buffer is not needed.
                if let Some((lent, _, _)) = ahead.take() {
                    pool.give_back(lent);
                }
            }
        }
        while buf.len() < *len {
            let want = *len - buf.len();
            let mut read = ReadBuf::uninit(&mut buf.spare_capacity_mut()[..want]);
            let start = read.filled().as_ptr();
            match Pin::new(&mut *io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {}
                other => return other.map_ok(|()| false),
            }
            let n = read.filled().len();
            assert_eq!(start, read.filled().as_ptr(), "the read kept its buffer");
            if n == 0 {
                return Poll::Ready(Ok(false));
            }
            // SAFETY: the read initialised the first `n` bytes of the spare capacity: they
            // are the filled part of the `ReadBuf` over it, which still points there.
            unsafe { buf.set_len(buf.len() + n) };
        }
        let (mask, mut buf, _) = frames.large.take().expect("a large message is begun");
        if let Some(key) = mask {
            unmask(&mut buf, key);
        }
        frames.ready = Some(pool::share(buf));
        Poll::Ready(Ok(true))
    }

    /// [`AsyncRead::poll_read`] while following the frames: hands the WebSocket every byte
    /// up to the next large message, and reads that one itself.
    fn poll_read_frames(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let frames = self
                .frames
                .as_mut()
                .expect("only called when following frames");
            if frames.large.is_some() {
                match self.poll_large(cx) {
                    Poll::Ready(Ok(true)) => {}
                    // The stream ended inside the message: for the WebSocket, it ends here.
                    Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                    other => return other.map_ok(|_| ()),
                }
            }
            let frames = self
                .frames
                .as_mut()
                .expect("only called when following frames");
            if frames.ready.is_some() {
                // Its reader takes it before reading the WebSocket again.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some((buf, from, to)) = &mut self.ahead {
                let mut consumed = 0;
                let n = frames.passable(&buf[*from..*to], out.remaining(), &mut consumed);
                out.put_slice(&buf[*from..*from + n]);
                *from += n + consumed;
                if n > 0 {
                    return Poll::Ready(Ok(()));
                }
                if frames.large.is_some() {
                    continue;
                }
            }
            // Nothing buffered, or only the start of a frame's header.
            match ready!(self.poll_more(cx)) {
                Ok(0) => {
                    // The stream ended: what is left (part of a header) is the WebSocket's.
                    if let Some((buf, from, to)) = &mut self.ahead {
                        let n = (*to - *from).min(out.remaining());
                        out.put_slice(&buf[*from..*from + n]);
                        *from += n;
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.frames.is_some() {
            return this.poll_read_frames(cx, out);
        }
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
            match ready!(this.poll_more(cx)) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
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
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::{
        tungstenite::{
            self,
            protocol::{frame::coding::CloseCode, Role, WebSocketConfig},
            Message,
        },
        WebSocketStream,
    };

    type Ws = WebSocketStream<ReadAhead<DuplexStream>>;

    /// What a reader of `ws` gets next, and whether it was read past the WebSocket.
    async fn next(ws: &mut Ws) -> Option<(Result<Message, tungstenite::Error>, bool)> {
        std::future::poll_fn(|cx| {
            if let Some(large) = ws.get_mut().take_large_message() {
                return Poll::Ready(Some((Ok(Message::Binary(large)), true)));
            }
            ws.poll_next_unpin(cx).map(|m| m.map(|m| (m, false)))
        })
        .await
    }

    fn bytes(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// A server's WebSocket over a `ReadAhead` following its frames (messages up to
    /// `max`), and its client.
    async fn server(max: usize) -> (Ws, WebSocketStream<DuplexStream>) {
        let (io, peer) = tokio::io::duplex(1 << 16);
        let io =
            ReadAhead::new(io, Arc::new(ReadPool::new(2))).read_large_messages(End::Server, max);
        let config = WebSocketConfig::default()
            .read_buffer_size(WEBSOCKET_READ_BUFFER)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let client = WebSocketStream::from_raw_socket(peer, Role::Client, None).await;
        (ws, client)
    }

    #[tokio::test]
    async fn large_messages_from_a_client_are_read_past_the_websocket_in_order() {
        let (mut ws, mut client) = server(4 << 20).await;
        let sent = vec![
            Message::Binary(bytes(10, 1)),
            Message::Binary(bytes(LARGE_MESSAGE, 2)),
            Message::Ping(bytes(3, 3)),
            Message::Binary(bytes(3 << 20, 4)),
            Message::Binary(bytes(LARGE_MESSAGE - 1, 5)),
            Message::Binary(bytes(LARGE_MESSAGE + 13, 6)),
            Message::Binary(bytes(0, 7)),
        ];
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for m in sent {
                    client.send(m).await.unwrap();
                }
                client
            })
        };
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            let (msg, past) = next(&mut ws).await.unwrap();
            got.push((msg.unwrap(), past));
        }
        let _client = writer.await.unwrap();
        let want: Vec<_> = sent
            .into_iter()
            .map(|m| {
                let past = matches!(&m, Message::Binary(b) if b.len() >= LARGE_MESSAGE);
                (m, past)
            })
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn fragments_and_frames_over_the_limit_or_unmasked_go_to_the_websocket() {
        // A large message in fragments arrives whole, through the WebSocket.
        let (mut ws, client) = server(1 << 20).await;
        let mut raw = client.into_inner();
        let payload = bytes(2 * LARGE_MESSAGE, 9);
        let (first, second) = payload.split_at(LARGE_MESSAGE);
        let mut frames = Vec::new();
        for (head, part) in [(0x02u8, first), (0x80, second)] {
            frames.extend_from_slice(&[head, 0x80 | 127]);
            frames.extend_from_slice(&(part.len() as u64).to_be_bytes());
            frames.extend_from_slice(&[0; 4]); // a zero mask: the bytes stay as they are
            frames.extend_from_slice(part);
        }
        let writer = tokio::spawn(async move {
            raw.write_all(&frames).await.unwrap();
            raw
        });
        let (msg, past) = next(&mut ws).await.unwrap();
        let mut raw = writer.await.unwrap();
        assert_eq!((msg.unwrap(), past), (Message::Binary(payload), false));

        // A frame over the limit is the WebSocket's to refuse.
        let mut frame = vec![0x82u8, 0x80 | 127];
        frame.extend_from_slice(&((1u64 << 20) + 1).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        raw.write_all(&frame).await.unwrap();
        let (msg, past) = next(&mut ws).await.unwrap();
        assert!(!past);
        assert!(
            matches!(msg, Err(tungstenite::Error::Capacity(_))),
            "{msg:?}"
        );

        // So is an unmasked frame from a client.
        let (mut ws, client) = server(1 << 20).await;
        let mut raw = client.into_inner();
        let mut frame = vec![0x82u8, 127];
        frame.extend_from_slice(&(LARGE_MESSAGE as u64).to_be_bytes());
        frame.extend_from_slice(&bytes(LARGE_MESSAGE, 1));
        let _writer = tokio::spawn(async move { raw.write_all(&frame).await });
        let (msg, past) = next(&mut ws).await.unwrap();
        assert!(!past);
        assert!(
            matches!(msg, Err(tungstenite::Error::Protocol(_))),
            "{msg:?}"
        );
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_large_message_ends_without_it() {
        let (mut ws, client) = server(1 << 20).await;
        let mut raw = client.into_inner();
        let mut frame = vec![0x82u8, 0x80 | 127];
        frame.extend_from_slice(&(LARGE_MESSAGE as u64).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&bytes(1000, 1));
        raw.write_all(&frame).await.unwrap();
        drop(raw);
        let ended = next(&mut ws).await;
        assert!(
            matches!(
                ended,
                Some((
                    Err(tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                    )),
                    false
                ))
            ),
            "the connection is lost, with no message from the cut frame: {ended:?}"
        );
        assert!(ws.get_mut().take_large_message().is_none());
    }

    #[tokio::test]
    async fn a_client_follows_frames_from_the_end_of_the_http_response() {
        let (io, peer) = tokio::io::duplex(1 << 16);
        let sent = vec![
            Message::Binary(bytes(LARGE_MESSAGE, 1)),
            Message::Binary(bytes(5, 2)),
            Message::Binary(bytes(LARGE_MESSAGE * 3, 3)),
            Message::Close(Some(tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            })),
        ];
        let server = {
            let sent = sent.clone();
            tokio::spawn(async move {
                // Everything goes out at once, right behind the handshake's response.
                let mut ws = tokio_tungstenite::accept_async(peer).await.unwrap();
                for m in sent {
                    ws.feed(m).await.unwrap();
                }
                ws.flush().await.unwrap();
                ws
            })
        };
        let io = ReadAhead::new(io, Arc::new(ReadPool::new(2)))
            .read_large_messages(End::Client, 1 << 20);
        let (mut ws, _) = tokio_tungstenite::client_async("ws://localhost/", io)
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            let (msg, past) = next(&mut ws).await.unwrap();
            got.push((msg.unwrap(), past));
        }
        let _server = server.await.unwrap();
        let past: Vec<bool> = got.iter().map(|(_, past)| *past).collect();
        assert_eq!(past, [true, false, true, false]);
        assert_eq!(got.into_iter().map(|(m, _)| m).collect::<Vec<_>>(), sent);
    }

    /// A client's frame: `first` (FIN, opcode), masked with `key`.
    fn client_frame(first: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![first];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        frame
    }

    #[tokio::test]
    async fn frames_that_arrive_together_come_out_in_order() {
        let (mut ws, client) = server(4 << 20).await;
        let mut raw = client.into_inner();
        let key = [0x0f, 0xf0, 0x55, 0xaa];
        let (small, large, larger) = (bytes(9, 1), bytes(LARGE_MESSAGE + 3, 2), bytes(3 << 20, 3));
        let (part1, part2) = (bytes(100, 4), bytes(200_000, 5));
        let mut all = Vec::new();
        all.extend(client_frame(0x82, &small, key));
        all.extend(client_frame(0x89, b"ping", key));
        all.extend(client_frame(0x02, &part1, key)); // a fragmented message...
        all.extend(client_frame(0x8a, b"pong", key)); // ...with a control frame inside it
        all.extend(client_frame(0x80, &part2, key));
        all.extend(client_frame(0x82, &large, key));
        all.extend(client_frame(0x82, &larger, [0; 4]));
        all.extend(client_frame(0x82, &small, key));
        let writer = tokio::spawn(async move {
            raw.write_all(&all).await.unwrap();
            raw
        });
        let mut got = Vec::new();
        for _ in 0..7 {
            let (msg, past) = next(&mut ws).await.unwrap();
            got.push((msg.unwrap(), past));
        }
        let _raw = writer.await.unwrap();
        let whole: Bytes = [&part1[..], &part2[..]].concat().into();
        assert_eq!(
            got,
            [
                (Message::Binary(small.clone()), false),
                (Message::Ping("ping".into()), false),
                (Message::Pong("pong".into()), false),
                (Message::Binary(whole), false),
                (Message::Binary(large), true),
                (Message::Binary(larger), true),
                (Message::Binary(small), false),
            ]
        );
    }

    #[test]
    fn the_http_response_ends_at_an_empty_line_after_either_line_break() {
        let end_of = |response: &[u8]| {
            let mut at = HttpEnd::InLine;
            response.iter().position(|&b| {
                at = at.next(b);
                at == HttpEnd::Found
            })
        };
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket";
        for (ending, len) in [
            (&b"\r\n\r\n"[..], 4),
            (b"\n\n", 2),
            (b"\r\n\n", 3),
            (b"\n\r\n", 3),
        ] {
            let response = [&head[..], ending, b"\x82\x0d\r\n\r\n"].concat();
            assert_eq!(end_of(&response), Some(head.len() + len - 1), "{ending:?}");
        }
        assert_eq!(end_of(b"HTTP/1.1 101 OK\r\nA: b\r\n"), None, "not over yet");
    }

    #[test]
    fn unmasking_matches_the_byte_by_byte_rule() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in [0, 1, 3, 4, 7, 8, 9, 17, 64, 1001] {
            let data = bytes(len, 5);
            let mut fast = data.to_vec();
            unmask(&mut fast, key);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(fast, slow, "{len} bytes");
        }
    }

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
