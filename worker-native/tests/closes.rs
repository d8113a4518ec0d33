//! How the worker reads a coordinator that ends the connection with only a close frame: a
//! policy close before the welcome is a refusal, read back from the close reason (the
//! refusal frame may be lost); a close after it ends the connection with the coordinator's
//! code and reason.

use std::time::Duration;

use distchan_protocol::{
    session::close_frame_for,
    wire::{self, Refusal, RefusalCode, ToCoordinator, ToWorker, Welcome, CLOSE_GOING_AWAY},
};
use distchan_worker::{Error, Options};
use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpListener, time::timeout};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    http::HeaderValue,
    protocol::{frame::coding::CloseCode, CloseFrame},
    Message,
};

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

/// A coordinator for one worker: reads its hello, sends the welcome when `welcome`, then a
/// close frame with `code` and `reason` and nothing else.
// The handshake callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
async fn closing_coordinator(welcome: bool, code: u16, reason: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let subprotocol = |_: &Request, mut response: Response| {
            response.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&wire::subprotocol(wire::PROTOCOL_VERSION)).unwrap(),
            );
            Ok(response)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, subprotocol)
            .await
            .unwrap();
        let Some(Ok(Message::Binary(hello))) = ws.next().await else {
            panic!("no hello");
        };
        assert!(matches!(
            wire::decode_to_coordinator(&hello),
            Ok(ToCoordinator::Hello(_))
        ));
        if welcome {
            let welcome = ToWorker::Welcome(Welcome {
                worker_id: 1,
                task: None,
                heartbeat_ms: 0,
                max_frame: 1 << 20,
                module: None,
                ..Default::default()
            });
            let frame = wire::encode_to_worker(&welcome).unwrap();
            ws.send(Message::Binary(frame)).await.unwrap();
        }
        let close = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        ws.send(Message::Close(Some(close))).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    format!("ws://{addr}/ws")
}

#[tokio::test]
async fn a_policy_close_before_the_welcome_is_the_refusal_it_names() {
    let refusal = Refusal::new(RefusalCode::BadToken, "wrong access token");
    let (code, reason) = close_frame_for(&Error::Refused(refusal.clone()));
    let url = closing_coordinator(false, code, reason).await;
    let refused = timeout(
        LIMIT,
        distchan_worker::connect::<String, String>(&url, Options::default()),
    )
    .await
    .unwrap();
    match refused {
        Err(Error::Refused(r)) => assert_eq!(r, refusal),
        other => panic!("expected the refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_close_after_the_welcome_ends_the_connection_with_its_code_and_reason() {
    let url = closing_coordinator(
        true,
        CLOSE_GOING_AWAY,
        "the coordinator is shutting down".into(),
    )
    .await;
    let (mut jobs, _results, client) =
        distchan_worker::connect::<String, String>(&url, Options::default())
            .await
            .unwrap();
    assert!(timeout(LIMIT, jobs.recv()).await.unwrap().is_none());
    let err = timeout(LIMIT, client.done()).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::Disconnected { code: CLOSE_GOING_AWAY, reason, clean: true } if reason == "the coordinator is shutting down"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the coordinator closed the connection: the coordinator is shutting down"
    );
}
