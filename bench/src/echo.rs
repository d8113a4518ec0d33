//! The ceiling: the same messages through plain tokio-tungstenite connections, no scheduler.
//!
//! The server runs in the bench process (where the coordinator runs in the other
//! measurements); K `--echo-client` children each hold one connection. Each connection is
//! driven by one task that keeps W messages unanswered: it feeds as many frames as it has
//! credit for, flushes once, then reads at least one echo and every other echo already
//! there, which gives the credit back. That is what a good implementation of the same
//! work does, with nothing else on the path.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{
    stream::{SplitSink, SplitStream},
    SinkExt, StreamExt,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
    time::{timeout, Instant},
};
use tokio_tungstenite::{accept_async, tungstenite::Message, WebSocketStream};

use crate::{
    children::{cpu_secs, Children},
    BenchResult, Latency, Throughput,
};

/// One server-side echo connection.
type Conn = WebSocketStream<TcpStream>;
/// Its two halves, so that reading and writing go on at the same time.
type Halves = (SplitSink<Conn, Message>, SplitStream<Conn>);

/// Starts `k` echo clients and accepts their connections.
async fn connect(k: usize) -> BenchResult<(Vec<Halves>, Children)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/", listener.local_addr()?);
    let mut children = Children::new("echo-client");
    for _ in 0..k {
        children.spawn(&["--echo-client".into(), url.clone()])?;
    }
    let accept_all = async {
        let mut conns = Vec::with_capacity(k);
        for _ in 0..k {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            conns.push(accept_async(stream).await?.split());
        }
        BenchResult::Ok(conns)
    };
    let conns = timeout(Duration::from_secs(30), children.watch(accept_all))
        .await
        .map_err(|_| "the echo clients did not connect within 30 s")???;
    Ok((conns, children))
}

/// Closes every connection and waits for the clients to exit.
async fn finish(conns: Vec<Halves>, mut children: Children) -> BenchResult<()> {
    for (mut sink, mut stream) in conns {
        let _ = timeout(Duration::from_secs(5), async {
            let _ = sink.close().await;
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
    children.wait_all(Duration::from_secs(10)).await
}

/// Sends `n` copies of `msg` through one connection with at most `window` unanswered, and
/// checks that `n` echoes of the same length come back.
///
/// The writer feeds every frame it has credit for and flushes once; the reader, running at
/// the same time, gives one credit back per echo.
async fn pump(halves: Halves, msg: Bytes, n: u64, window: usize) -> BenchResult<Halves> {
    let (mut sink, mut stream) = halves;
    let credit = Semaphore::new(window.max(1));
    let len = msg.len();
    let writer = async {
        let mut sent = 0u64;
        while sent < n {
            credit.acquire().await?.forget();
            sink.feed(Message::Binary(msg.clone())).await?;
            sent += 1;
            while sent < n {
                let Ok(permit) = credit.try_acquire() else {
                    break;
                };
                permit.forget();
                sink.feed(Message::Binary(msg.clone())).await?;
                sent += 1;
            }
            sink.flush().await?;
        }
        BenchResult::Ok(())
    };
    let reader = async {
        let mut received = 0u64;
        while received < n {
            match stream.next().await.ok_or("an echo client hung up")?? {
                Message::Binary(b) if b.len() == len => {
                    received += 1;
                    credit.add_permits(1);
                }
                Message::Binary(b) => {
                    return Err(format!("echo of {} bytes for {len}", b.len()).into())
                }
                _ => {}
            }
        }
        BenchResult::Ok(())
    };
    tokio::try_join!(writer, reader)?;
    Ok((sink, stream))
}

/// Echoes `n` messages of `msg`'s size through `k` connections, `window` unanswered per
/// connection; the clock runs from the first send to the last echo.
pub async fn throughput(k: usize, window: usize, msg: Bytes, n: u64) -> BenchResult<Throughput> {
    let (conns, mut children) = connect(k).await?;
    let (cpu_here, cpu_children) = (cpu_secs(None), children.cpu_secs());
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (i, halves) in conns.into_iter().enumerate() {
        let share = n / k as u64 + u64::from((i as u64) < n % k as u64);
        set.spawn(pump(halves, msg.clone(), share, window));
    }
    let mut conns = Vec::with_capacity(k);
    let joined = children
        .watch(async {
            while let Some(r) = set.join_next().await {
                conns.push(r??);
            }
            BenchResult::Ok(())
        })
        .await;
    let secs = start.elapsed().as_secs_f64();
    let cpu_here = cpu_secs(None) - cpu_here;
    let cpu_children = children.cpu_secs() - cpu_children;
    joined??;
    finish(conns, children).await?;
    Ok(Throughput {
        items: n,
        secs,
        cpu_here,
        cpu_children,
    })
}

/// Round trips of one message at a time through one connection: `warmup` unrecorded, then
/// `n` recorded.
pub async fn latency(msg: Bytes, warmup: usize, n: usize) -> BenchResult<Latency> {
    let (mut conns, mut children) = connect(1).await?;
    let (mut sink, mut stream) = conns.pop().ok_or("no echo connection")?;
    let mut samples = Vec::with_capacity(n);
    children
        .watch(async {
            for i in 0..warmup + n {
                let start = Instant::now();
                sink.send(Message::Binary(msg.clone())).await?;
                loop {
                    match stream.next().await.ok_or("the echo client hung up")?? {
                        Message::Binary(b) if b.len() == msg.len() => break,
                        Message::Binary(_) => return Err("echo of the wrong length".into()),
                        _ => {}
                    }
                }
                if i >= warmup {
                    samples.push(start.elapsed());
                }
            }
            BenchResult::Ok(())
        })
        .await??;
    finish(vec![(sink, stream)], children).await?;
    Ok(Latency::from_samples(samples))
}
