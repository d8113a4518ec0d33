//! The coordinator's side of task modules: the module is served at an immutable URL named
//! by its hash (behind the access token when there is one), named in every welcome, and a
//! module no worker could run is refused when it is loaded.

mod common;

use std::time::Duration;

use common::LIMIT;
use distchan_coordinator::{Config, Coordinator, TaskModule};
use distchan_protocol::{
    module::{self, Limits, ModuleIo},
    wire::{self, ToCoordinator, ToWorker},
};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tokio_tungstenite::tungstenite::Message;

const ECHO: &str = r#"(module
    (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
    (memory (export "memory") 1)
    (func (export "_start")))"#;

/// A bare HTTP/1.0 GET with extra header lines; returns the status line, the head (in
/// lower case) and the body.
async fn get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (String, String, Vec<u8>) {
    request(addr, "GET", path, headers).await
}

/// A bare HTTP/1.0 request, as [`get`].
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (String, String, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("{method} {path} HTTP/1.0\r\nHost: test\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    timeout(LIMIT, tcp.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    let status = head.lines().next().unwrap_or("").to_owned();
    (status, head, response[split + 4..].to_vec())
}

async fn serving(config: Config, module: TaskModule) -> Coordinator {
    let (coordinator, _jobs, _results) = Coordinator::builder()
        .config(config)
        .module(module)
        .bind::<u64, u64>("127.0.0.1:0")
        .await
        .unwrap();
    coordinator
}

#[tokio::test]
async fn the_module_is_served_immutable_under_its_hash() {
    let module = TaskModule::from_bytes("echo.wat", ECHO).unwrap();
    let coordinator = serving(Config::default(), module.clone()).await;
    let addr = coordinator.local_addr();
    let path = module::module_path(module.sha256());
    let (status, head, body) = get(addr, &path, "").await;
    assert!(status.contains(" 200"), "{status}");
    assert_eq!(body, module.bytes().to_vec());
    assert_eq!(module::sha256_hex(&body), module.sha256());
    assert!(head.contains("content-type: application/wasm"), "{head}");
    assert!(
        head.contains("immutable") && head.contains("public"),
        "{head}"
    );
    assert_eq!(coordinator.stats().module_downloads, 1);

    let other = module::module_path(&"0".repeat(64));
    for missing in [other.as_str(), "/modules/nothing.wasm", "/modules/"] {
        let (status, _, _) = get(addr, missing, "").await;
        assert!(status.contains(" 404"), "{missing}: {status}");
    }
    assert_eq!(
        coordinator.stats().module_downloads,
        1,
        "misses are not downloads"
    );
}

/// A coordinator that wants the access token `token`, serving the echo module.
async fn serving_with_token(token: &str) -> (Coordinator, TaskModule) {
    let module = TaskModule::from_bytes("echo.wat", ECHO).unwrap();
    let config = Config {
        token: Some(token.into()),
        ..Config::default()
    };
    (serving(config, module.clone()).await, module)
}

#[tokio::test]
async fn with_an_access_token_the_module_needs_it_too() {
    let (coordinator, module) = serving_with_token("s3cret").await;
    let addr = coordinator.local_addr();
    let path = module::module_path(module.sha256());
    let (status, _, _) = get(addr, &path, "").await;
    assert!(status.contains(" 401"), "{status}");
    let (status, _, _) = get(addr, &path, "Authorization: Bearer wrong\r\n").await;
    assert!(status.contains(" 401"), "{status}");
    let (status, head, body) = get(addr, &path, "Authorization: Bearer s3cret\r\n").await;
    assert!(status.contains(" 200"), "{status}");
    assert!(head.contains("private"), "not for shared caches: {head}");
    assert_eq!(body, module.bytes().to_vec());
    let (status, _, _) = get(addr, &format!("{path}?token=s3cret"), "").await;
    assert!(
        status.contains(" 200"),
        "the page may pass it as a parameter: {status}"
    );
}

#[tokio::test]
async fn a_page_of_another_origin_may_fetch_the_module_with_the_token() {
    let (coordinator, module) = serving_with_token("s3cret").await;
    let addr = coordinator.local_addr();
    let path = module::module_path(module.sha256());
    let origin = "Origin: http://volunteers.example\r\n";
    // The browser's preflight for a GET with an Authorization header.
    let (status, head, _) = request(
        addr,
        "OPTIONS",
        &path,
        &format!(
            "{origin}Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\n"
        ),
    )
    .await;
    assert!(status.contains(" 200"), "{status}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(
        head.contains("access-control-allow-headers: authorization"),
        "{head}"
    );
    let (status, head, body) = get(
        addr,
        &path,
        &format!("{origin}Authorization: Bearer s3cret\r\n"),
    )
    .await;
    assert!(status.contains(" 200"), "{status}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert_eq!(body, module.bytes().to_vec());
    // Any origin, but never without the token.
    let (status, _, _) = get(addr, &path, origin).await;
    assert!(status.contains(" 401"), "{status}");
}

#[tokio::test]
async fn the_welcome_names_the_module_with_its_limits() {
    let module = TaskModule::from_bytes("echo.wat", ECHO)
        .unwrap()
        .io(ModuleIo::Bytes);
    let limits = Limits {
        memory_bytes: 8 << 20,
        timeout_ms: 1234,
        max_output: 99,
    };
    let config = Config {
        module_limits: limits,
        heartbeat: Duration::ZERO,
        ..Config::default()
    };
    let coordinator = serving(config, module.clone()).await;
    let mut ws = common::open(&coordinator.ws_url(), &[]).await;
    let hello = wire::encode_to_coordinator(&ToCoordinator::Hello(common::hello())).unwrap();
    ws.send(Message::Binary(hello)).await.unwrap();
    let Some(Ok(Message::Binary(frame))) = timeout(LIMIT, ws.next()).await.unwrap() else {
        panic!("expected the welcome");
    };
    let ToWorker::Welcome(welcome) = wire::decode_to_worker(&frame).unwrap() else {
        panic!("expected the welcome");
    };
    assert_eq!(welcome.task, None);
    let spec = welcome.module.expect("the welcome names the module");
    assert_eq!(spec.sha256, module.sha256());
    assert_eq!(spec.name, "echo.wat");
    assert_eq!(spec.size, module.bytes().len() as u64);
    assert_eq!(spec.path, module::module_path(module.sha256()));
    assert_eq!(spec.io, ModuleIo::Bytes);
    assert_eq!(spec.limits, limits);
}

#[tokio::test]
async fn a_task_and_a_module_together_are_refused() {
    let module = TaskModule::from_bytes("echo.wat", ECHO).unwrap();
    let config = Config {
        task: Some("capitalize".into()),
        ..Config::default()
    };
    let err = Coordinator::builder()
        .config(config)
        .module(module)
        .bind::<u64, u64>("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
}

#[tokio::test]
async fn a_module_that_cannot_fit_its_memory_limit_is_refused_at_start() {
    let module = TaskModule::from_bytes(
        "big.wat",
        r#"(module (memory (export "memory") 64) (func (export "_start")))"#,
    )
    .unwrap();
    let config = Config {
        module_limits: Limits {
            memory_bytes: 1 << 20,
            ..Limits::default()
        },
        ..Config::default()
    };
    let err = Coordinator::builder()
        .config(config)
        .module(module)
        .bind::<u64, u64>("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("more than the limit of 1 MiB"),
        "{err}"
    );
}
