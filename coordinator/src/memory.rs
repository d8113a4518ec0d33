//! An in-memory transport for tests: a listener the coordinator serves on and a connector
//! workers dial, joined by in-process byte pipes instead of sockets.
//!
//! Nothing waits on the operating system, so tests using tokio's paused time (heartbeat and
//! lease expiry) are deterministic.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), distchan_coordinator::Error> {
//! use distchan_coordinator::{memory, Coordinator};
//!
//! let (listener, connector) = memory::channel();
//! let (coordinator, _jobs, _results) = Coordinator::builder().listen_on::<_, String, String>(listener)?;
//! let _pipe = connector.connect()?; // hand this to `distchan_worker::connect_io`
//! # drop(coordinator); Ok(()) }
//! ```

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicU16, Ordering},
};

use tokio::{io::DuplexStream, sync::mpsc};

/// Bytes each direction of a pipe buffers before the writer waits.
const PIPE_BUFFER: usize = 256 * 1024;

/// The coordinator's side: accepts pipes made by a [`MemoryConnector`].
#[derive(Debug)]
pub struct MemoryListener {
    rx: mpsc::UnboundedReceiver<(DuplexStream, SocketAddr)>,
}

/// The workers' side: each [`MemoryConnector::connect`] makes a new connection.
#[derive(Debug, Clone)]
pub struct MemoryConnector {
    tx: mpsc::UnboundedSender<(DuplexStream, SocketAddr)>,
}

/// A connected listener and connector.
pub fn channel() -> (MemoryListener, MemoryConnector) {
    let (tx, rx) = mpsc::unbounded_channel();
    (MemoryListener { rx }, MemoryConnector { tx })
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(1);

impl MemoryConnector {
    /// Opens a new connection; fails once the listener is gone.
    pub fn connect(&self) -> io::Result<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        let peer = SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            NEXT_PORT.fetch_add(1, Ordering::Relaxed),
        ));
        self.tx.send((theirs, peer)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the memory listener is gone",
            )
        })?;
        Ok(ours)
    }
}

impl axum::serve::Listener for MemoryListener {
    type Io = DuplexStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(pair) => pair,
            // Every connector is gone: no connection will ever come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}
