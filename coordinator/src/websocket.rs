//! A worker's WebSocket as its connection sees it: whole messages in, whole frames out.
//!
//! [`WebSocket`] owns the write path of the frames the coordinator sends. Each one is
//! queued whole, header and payload together, on the [`Socket`] underneath (the payload
//! from the memory it was encoded in), and everything queued is written before the next
//! read, many frames at a time, so reading never waits for writing. What tungstenite
//! writes itself (pongs, the close, a message sent with [`WebSocket::send`]) goes behind
//! what is queued, so frames never interleave.

use std::{
    io,
    task::{Context, Poll},
};

use bytes::Bytes;
use distchan_protocol::wire::FramePart;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    tungstenite::{
        self,
        protocol::{
            frame::{
                coding::{Data, OpCode},
                FrameHeader,
            },
            Role, WebSocketConfig,
        },
        Message,
    },
    WebSocketStream,
};

use crate::socket::Socket;

/// A message read from the WebSocket: `None` once the stream has ended.
pub(crate) type Read = Option<Result<Message, tungstenite::Error>>;

/// The server side of a worker's WebSocket over `S`; see the [module docs](self).
pub(crate) struct WebSocket<S> {
    /// The WebSocket protocol over the socket that queues frames.
    ws: WebSocketStream<Socket<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// The server side of a WebSocket whose opening handshake is done, over `socket`.
    pub async fn server(socket: Socket<S>, config: WebSocketConfig) -> Self {
        WebSocket {
            ws: WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await,
        }
    }

    /// Waits for the next message.
    pub async fn next(&mut self) -> Read {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    /// The next message: a large one the socket read past the WebSocket first (it came
    /// before anything the WebSocket holds), else the WebSocket's.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        match self.ws.get_mut().take_large_message() {
            Some(large) => Poll::Ready(Some(Ok(Message::Binary(large)))),
            None => self.ws.poll_next_unpin(cx),
        }
    }

    /// Sends one message now, behind every queued frame, and waits until it is written.
    pub async fn send(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(msg).await
    }

    /// Queues a binary message carrying `payload`, to be written before the next read.
    pub fn queue_binary(&mut self, payload: Bytes) {
        self.queue_frame(OpCode::Data(Data::Binary), payload);
    }

    /// Queues one binary message of `len` bytes made of `head` (copied) and then `parts`
    /// (each copied, or shared bytes gathered or shared as [`Socket::queue`] decides),
    /// without joining them first.
    pub fn queue_binary_parts<'a>(
        &mut self,
        head: &[u8],
        parts: impl Iterator<Item = FramePart<'a>>,
        len: usize,
    ) {
        let socket = self.queue_header(OpCode::Data(Data::Binary), len);
        socket.gather(head);
        let mut written = head.len();
        for part in parts {
            written += part.len();
            match part {
                FramePart::Copy(bytes) => socket.gather(bytes),
                FramePart::Shared(bytes) => socket.queue(bytes),
            }
        }
        debug_assert_eq!(written, len, "the parts add up to the announced length");
    }

    /// Queues one whole, final, unmasked frame (what a server sends) carrying `payload`.
    fn queue_frame(&mut self, opcode: OpCode, payload: Bytes) {
        self.queue_header(opcode, payload.len()).queue(payload);
    }

    /// Queues the header of a whole, final, unmasked frame of `len` bytes; its payload must
    /// follow on the socket returned.
    fn queue_header(&mut self, opcode: OpCode, len: usize) -> &mut Socket<S> {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        // A server frame's header takes at most 10 bytes.
        let mut head = [0u8; 10];
        let mut cursor = io::Cursor::new(&mut head[..]);
        header
            .format(len as u64, &mut cursor)
            .expect("a frame header fits in 10 bytes");
        let used = cursor.position() as usize;
        let socket = self.ws.get_mut();
        socket.gather(&head[..used]);
        socket
    }

    /// True while queued bytes wait to be written, or written ones to be flushed.
    pub fn has_queued(&self) -> bool {
        self.ws.get_ref().has_queued()
    }

    /// Writes what is queued; ready once nothing is.
    pub fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.get_mut().poll_write_queued(cx)
    }

    /// Writes what is queued, then reads the next message; fails only when writing does.
    pub fn poll_write_then_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Read>> {
        let socket = self.ws.get_mut();
        if socket.has_queued() {
            if let Poll::Ready(Err(e)) = socket.poll_write_queued(cx) {
                return Poll::Ready(Err(e));
            }
        }
        self.poll_message(cx).map(Ok)
    }

    /// Reads the next message if it is there already.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        self.poll_message(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use distchan_protocol::read_ahead::ReadPool;

    #[tokio::test]
    async fn queued_frames_arrive_whole_and_in_order_before_a_message_sent_after_them() {
        let (io, peer) = tokio::io::duplex(1 << 20);
        let socket = Socket::new(io, Arc::new(ReadPool::new(1)));
        let mut server = WebSocket::server(socket, WebSocketConfig::default()).await;
        let mut client = WebSocketStream::from_raw_socket(peer, Role::Client, None).await;
        let small = Bytes::from_static(b"small job");
        let large = Bytes::from(vec![7u8; 70_000]); // queued as it is, not gathered
        server.queue_binary(small.clone());
        server.queue_binary(Bytes::new());
        server.queue_binary(large.clone());
        let parts = [
            FramePart::Shared(small.clone()),
            FramePart::Shared(large.clone()),
            FramePart::Copy(b"copied"),
            FramePart::Shared(small.clone()),
        ];
        let len = 4 + parts.iter().map(FramePart::len).sum::<usize>();
        let batch = [&b"head"[..], &small, &large, b"copied", &small].concat();
        server.queue_binary_parts(b"head", parts.iter().cloned(), len);
        server.send(Message::Binary("after".into())).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(client.next().await.unwrap().unwrap());
        }
        assert_eq!(
            got,
            [
                Message::Binary(small),
                Message::Binary(Bytes::new()),
                Message::Binary(large),
                Message::Binary(batch.into()),
                Message::Binary("after".into()),
            ]
        );
    }
}
