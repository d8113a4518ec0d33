//! Known values that the native build and the wasm build of the protocol crate must both
//! produce, byte for byte.
//!
//! The same checks run natively (`tests/native.rs`, `cargo test -p distchan-worker-wasm`)
//! and as WebAssembly under Node (`tests/node.rs`, `wasm-pack test --node worker-wasm`),
//! against the same constants, so a difference between the two targets (serialization,
//! floating point, the palette's integer arithmetic) fails one of them. The hex strings
//! were produced by the native build and checked by hand against the MessagePack spec.
#![allow(dead_code)]

use distchan_protocol::{
    module::{self, Ending, Limits, ModuleIo, Run},
    payload,
    session::{Event, SessionConfig, WorkerSession},
    tasks::{self, Tile, TilePixels},
    transform::TransformChain,
    wire::{self, Job, JobResult, Refusal, RefusalCode, ToCoordinator, ToWorker, Welcome},
    JobId,
};

/// `Hello { version: 5, token: "t0k", capacity: 2, agent: "distchan-test", kind: Browser }`,
/// with field names.
pub const HELLO_FRAME: &str = "81a548656c6c6f85a776657273696f6e05a5746f6b656ea374306ba863617061\
6369747902a56167656e74ad646973746368616e2d74657374a46b696e64a742726f77736572";
/// `Welcome { worker_id: 7, task: "capitalize", heartbeat_ms: 5000, max_frame: 1024 }`.
pub const WELCOME_FRAME: &str = "81a757656c636f6d6584a9776f726b65725f696407a47461736baa63617069\
74616c697a65ac6865617274626561745f6d73cd1388a96d61785f6672616d65cd0400";
/// `Job { id: 42, payload: "why hello" }`, compact.
pub const JOB_FRAME: &str = "81a34a6f62922ac40aa97768792068656c6c6f";
/// `Jobs [{ id: 1, payload: "a" }, { id: 2, payload: "b" }]`, compact.
pub const JOBS_FRAME: &str = "81a44a6f6273929201c402a1619202c402a162";
/// `Results [{ id: 2, outcome: Ok("B") }, { id: 1, outcome: Ok("A") }]`, as a worker writes
/// it (the count as a 32-bit integer).
pub const RESULTS_FRAME: &str = "81a7526573756c7473dd00000002920281a24f6bc402a142920181a2\
4f6bc402a141";
/// `Result { id: 42, outcome: Ok("WHY HELLO") }`.
pub const RESULT_FRAME: &str = "81a6526573756c74922a81a24f6bc40aa95748592048454c4c4f";
/// `Result { id: 3, outcome: Err("boom") }`.
pub const ERROR_RESULT_FRAME: &str = "81a6526573756c74920381a3457272a4626f6f6d";
/// `Drain`.
pub const DRAIN_FRAME: &str = "a5447261696e";
/// `Pause { released: [] }`.
pub const PAUSE_FRAME: &str = "81a550617573659190";
/// `Unpause`.
pub const UNPAUSE_FRAME: &str = "a7556e7061757365";
/// `Cancel(42)`.
pub const CANCEL_FRAME: &str = "81a643616e63656c2a";
/// `EndOfWork`.
pub const END_OF_WORK_FRAME: &str = "a9456e644f66576f726b";
/// `Refused { code: BadToken, reason: "wrong access token" }`.
pub const REFUSED_FRAME: &str = "81a75265667573656482a4636f6465a8426164546f6b656ea6726561736f6eb2\
77726f6e672061636365737320746f6b656e";

/// The reference Mandelbrot tile, as its MessagePack payload (a map with field names).
pub const REFERENCE_TILE_PAYLOAD: &str = "8aa17820a17920a5776964746820a668656967687420ab696d61\
67655f776964746860ac696d6167655f68656967687440a963656e7465725f7265cbbfe7cbee43d12156a963656e\
7465725f696dcb3fc0dfabd5390a96a47370616ecb3f889374bc6a7efaa86d61785f69746572cd0190";
/// FNV-1a (64 bit) of the reference tile's RGBA pixels.
pub const REFERENCE_TILE_RGBA_FNV1A: u64 = 0x3976_ef3b_100f_de85;
/// FNV-1a (64 bit) of the reference tile's whole result payload (`tasks::run`'s output).
pub const REFERENCE_TILE_RESULT_FNV1A: u64 = 0xe369_53d7_687c_5560;
/// Length of that result payload.
pub const REFERENCE_TILE_RESULT_LEN: usize = 4126;

/// The reference tile: the middle tile of the second row of a 96x64 picture, 400 iterations.
pub fn reference_tile() -> Tile {
    tasks::tiles(96, 64, 32, 400)[4]
}

/// The session configuration whose hello is [`HELLO_FRAME`].
pub fn hello_config() -> SessionConfig {
    let mut config = SessionConfig::browser(2, "distchan-test");
    config.token = Some("t0k".into());
    config
}

/// FNV-1a, 64 bit: a tiny hash that needs no dependency.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Every frame a worker sends or receives, produced through the same session calls a worker
/// makes, equals its known bytes and decodes back to the same message.
pub fn check_frames() {
    let mut session = WorkerSession::new(hello_config(), TransformChain::new());
    assert_eq!(hex(&session.hello_frame().unwrap()), HELLO_FRAME, "hello");

    let welcome = ToWorker::Welcome(Welcome {
        worker_id: 7,
        task: Some("capitalize".into()),
        heartbeat_ms: 5000,
        max_frame: 1024,
        module: None,
        ..Default::default()
    });
    assert_eq!(
        hex(&wire::encode_to_worker(&welcome).unwrap()),
        WELCOME_FRAME,
        "welcome"
    );
    assert!(matches!(
        session.handle_frame(&unhex(WELCOME_FRAME)).unwrap(),
        Event::Welcomed(w) if w.worker_id == 7 && w.task.as_deref() == Some("capitalize")
    ));

    let job = ToWorker::Job(Job {
        id: JobId(42),
        payload: payload::to_msgpack("why hello").unwrap(),
    });
    assert_eq!(
        hex(&wire::encode_to_worker(&job).unwrap()),
        JOB_FRAME,
        "job"
    );
    let Event::Jobs(jobs) = session.handle_frame(&unhex(JOB_FRAME)).unwrap() else {
        panic!("a job frame must yield a job");
    };
    let [Job { id, payload: plain }] = &jobs[..] else {
        panic!("one job expected, got {jobs:?}");
    };
    assert_eq!(*id, JobId(42));
    let answer = tasks::run(tasks::CAPITALIZE, plain).unwrap();
    let result = session.result_frame(*id, Ok(answer)).unwrap();
    assert_eq!(hex(&result), RESULT_FRAME, "result");
    assert_eq!(
        wire::decode_to_coordinator(&result).unwrap(),
        ToCoordinator::Result(JobResult {
            id: JobId(42),
            outcome: Ok(payload::to_msgpack("WHY HELLO").unwrap()),
        })
    );

    let failed = ToCoordinator::Result(JobResult {
        id: JobId(3),
        outcome: Err("boom".into()),
    });
    assert_eq!(
        hex(&wire::encode_to_coordinator(&failed).unwrap()),
        ERROR_RESULT_FRAME,
        "error result"
    );
    let cancel = ToWorker::Cancel(JobId(42));
    assert_eq!(
        hex(&wire::encode_to_worker(&cancel).unwrap()),
        CANCEL_FRAME,
        "cancel"
    );
    assert_eq!(
        session.handle_frame(&unhex(CANCEL_FRAME)).unwrap(),
        Event::Cancel(JobId(42))
    );
    check_batches(&mut session);
    let pause = session.pause_frame(&[]).unwrap();
    assert_eq!(hex(&pause), PAUSE_FRAME, "pause");
    assert_eq!(
        wire::decode_to_coordinator(&pause).unwrap(),
        ToCoordinator::Pause { released: vec![] }
    );
    assert!(session.paused());
    let unpause = session.unpause_frame().unwrap();
    assert_eq!(hex(&unpause), UNPAUSE_FRAME, "unpause");
    assert_eq!(
        wire::decode_to_coordinator(&unpause).unwrap(),
        ToCoordinator::Unpause
    );
    assert_eq!(hex(&session.drain_frame().unwrap()), DRAIN_FRAME, "drain");
    assert_eq!(
        hex(&wire::encode_to_worker(&ToWorker::EndOfWork).unwrap()),
        END_OF_WORK_FRAME,
        "end of work"
    );
    let refused = ToWorker::Refused(Refusal::new(RefusalCode::BadToken, "wrong access token"));
    assert_eq!(
        hex(&wire::encode_to_worker(&refused).unwrap()),
        REFUSED_FRAME,
        "refusal"
    );
    assert_eq!(
        wire::decode_to_worker(&unhex(REFUSED_FRAME)).unwrap(),
        refused
    );
}

/// A batch of jobs is read into its jobs, and their results, pushed in the order they
/// finished, go out as one batch frame of known bytes.
fn check_batches(session: &mut WorkerSession) {
    let jobs: Vec<Job> = [(1, "a"), (2, "b")]
        .map(|(id, text)| Job {
            id: JobId(id),
            payload: payload::to_msgpack(text).unwrap(),
        })
        .into();
    assert_eq!(
        hex(&wire::encode_to_worker(&ToWorker::Jobs(jobs.clone())).unwrap()),
        JOBS_FRAME,
        "jobs"
    );
    let Event::Jobs(received) = session.handle_frame(&unhex(JOBS_FRAME)).unwrap() else {
        panic!("a batch of jobs expected");
    };
    assert_eq!(received, jobs);
    for job in received.iter().rev() {
        let answer = tasks::run(tasks::CAPITALIZE, &job.payload).unwrap();
        session.push_result(job.id, Ok(answer)).unwrap();
    }
    let frame = session.next_result_frame().expect("one frame for both");
    assert_eq!(hex(&frame), RESULTS_FRAME, "results");
    assert_eq!(session.next_result_frame(), None);
}

/// The built-in tasks give the known results: the Mandelbrot tile's pixels hash to the
/// same value on every target.
pub fn check_tasks() {
    let tile = reference_tile();
    let tile_payload = payload::to_msgpack(&tile).unwrap();
    assert_eq!(hex(&tile_payload), REFERENCE_TILE_PAYLOAD, "tile payload");

    let px = tasks::mandelbrot(&tile);
    assert_eq!(px.rgba.len(), 32 * 32 * 4);
    assert!(
        px.rgba.chunks(4).any(|p| p != &px.rgba[..4]),
        "the reference tile must not be flat"
    );
    assert_eq!(fnv1a64(&px.rgba), REFERENCE_TILE_RGBA_FNV1A, "tile pixels");

    let out = tasks::run(tasks::MANDELBROT, &tile_payload).unwrap();
    assert_eq!(out.len(), REFERENCE_TILE_RESULT_LEN);
    assert_eq!(
        fnv1a64(&out),
        REFERENCE_TILE_RESULT_FNV1A,
        "tile result payload"
    );
    assert_eq!(payload::from_msgpack::<TilePixels>(&out).unwrap(), px);

    let sum = tasks::run(tasks::ADD, &payload::to_msgpack(&(40i64, 2i64)).unwrap()).unwrap();
    assert_eq!(hex(&sum), "2a");
}

/// A job of a task module, `{"text": "naïve café", "n": -3, "x": 0.1}`, as the module reads
/// it (JSON text).
pub const MODULE_JSON_INPUT: &str = r#"{"text":"naïve café","n":-3,"x":0.1}"#;
/// The module's output `{"the": 2, "pi": 3.25, "list": [null, true]}` as the job's result
/// payload (MessagePack).
pub const MODULE_RESULT_PAYLOAD: &str = "83a374686502a27069cb400a000000000000a46c69737492c0c3";
/// SHA-256 of [`module_bytes`].
pub const MODULE_SHA256: &str = "d7f602df8d1cb581cc5c886a4ff8809793c50627e305ef45f6d770f27e0261cc";
/// [`module_bytes`] with its memory capped at 4 pages (256 KiB).
pub const MODULE_CAPPED: &str = "0061736d01000000050401010104";

/// A tiny module with one memory of 1 page and no maximum, and nothing else.
pub fn module_bytes() -> Vec<u8> {
    [&b"\0asm\x01\0\0\0"[..], &[5, 3, 1, 0, 1]].concat()
}

/// Task modules are fed, judged and prepared the same way on every target: JSON in,
/// MessagePack out, the same hash and the same memory cap.
pub fn check_module_conversions() {
    #[derive(serde::Serialize)]
    struct Job {
        text: &'static str,
        n: i64,
        x: f64,
    }
    let job = payload::to_msgpack(&Job {
        text: "naïve café",
        n: -3,
        x: 0.1,
    })
    .unwrap();
    let input = module::module_input(ModuleIo::Json, &job).unwrap();
    assert_eq!(String::from_utf8(input).unwrap(), MODULE_JSON_INPUT);
    let run = Run {
        ending: Ending::Exited(0),
        stdout: br#"{"the": 2, "pi": 3.25, "list": [null, true]}"#.to_vec(),
        stderr: Vec::new(),
    };
    let result = module::outcome(ModuleIo::Json, run, &Limits::default()).unwrap();
    assert_eq!(hex(&result), MODULE_RESULT_PAYLOAD, "module result");
    assert_eq!(module::sha256_hex(&module_bytes()), MODULE_SHA256);
    let capped = module::cap_memory(&module_bytes(), 4 * module::PAGE_SIZE).unwrap();
    assert_eq!(hex(&capped), MODULE_CAPPED, "capped module");
}
