//! Browser tests against real coordinators: `wasm-pack test --headless --chrome worker-wasm`.
//!
//! The coordinators' addresses are baked in at compile time by the test script
//! (`scripts/test-wasm.sh`), which starts them before and checks their exit codes after:
//!
//! - `DISTCHAN_TEST_URL`: `distchan-coordinator --demo capitalize --jobs 20 --verify`;
//! - `DISTCHAN_TEST_TOKEN_URL`: the same with `--token "$DISTCHAN_TEST_TOKEN"`;
//! - `DISTCHAN_TEST_MODULE_URL`: `distchan-coordinator pipe --module misbehave.wat` with 20
//!   jobs and `--max-retries 0`.
//!
//! Without them the tests that need a coordinator are skipped with a loud console message,
//! so a bare `wasm-pack test --chrome` still runs the rest; when the script sets
//! `DISTCHAN_TEST_REQUIRE_COORDINATOR=1` a missing address fails the test instead.
#![cfg(target_arch = "wasm32")]

use std::{
    cell::RefCell,
    rc::{Rc, Weak},
};

use distchan_worker_wasm::{BrowserWorker, State, Status};
use futures_util::future::join;
use js_sys::{Function, Reflect};
use wasm_bindgen::{prelude::Closure, JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// Jobs each test coordinator is started with (`--jobs`).
const JOBS: u64 = 20;

/// Returns the address or, when it was not given at compile time, skips (or fails when the
/// test script said coordinators are running).
fn coordinator(name: &str, value: Option<&'static str>) -> Option<&'static str> {
    if value.is_none() {
        if option_env!("DISTCHAN_TEST_REQUIRE_COORDINATOR").is_some() {
            panic!("{name} was not set when this test was compiled, but DISTCHAN_TEST_REQUIRE_COORDINATOR says a coordinator is running");
        }
        web_sys::console::warn_1(
            &format!("SKIPPED: {name} is not set; run scripts/test-wasm.sh to test against a real coordinator").into(),
        );
    }
    value
}

fn plain_url() -> Option<&'static str> {
    coordinator("DISTCHAN_TEST_URL", option_env!("DISTCHAN_TEST_URL"))
}

fn token_url() -> Option<&'static str> {
    coordinator(
        "DISTCHAN_TEST_TOKEN_URL",
        option_env!("DISTCHAN_TEST_TOKEN_URL"),
    )
}

fn module_url() -> Option<&'static str> {
    coordinator(
        "DISTCHAN_TEST_MODULE_URL",
        option_env!("DISTCHAN_TEST_MODULE_URL"),
    )
}

fn token() -> &'static str {
    option_env!("DISTCHAN_TEST_TOKEN").unwrap_or("s3cret")
}

fn options(json: &str) -> JsValue {
    js_sys::JSON::parse(json).unwrap()
}

fn get(value: &JsValue, key: &str) -> JsValue {
    Reflect::get(value, &key.into()).unwrap()
}

/// Every (state, reason) a worker reported, in order.
type Seen = Rc<RefCell<Vec<(String, String)>>>;

/// Records every status the worker reports; keep the closure alive while the worker runs.
fn record_statuses(worker: &BrowserWorker) -> (Seen, Closure<dyn Fn(JsValue)>) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let log = seen.clone();
    let callback = Closure::<dyn Fn(JsValue)>::new(move |status: JsValue| {
        let state = get(&status, "state").as_string().unwrap_or_default();
        let reason = get(&status, "reason").as_string().unwrap_or_default();
        log.borrow_mut().push((state, reason));
    });
    worker.on_status(Some(callback.as_ref().unchecked_ref::<Function>().clone()));
    (seen, callback)
}

#[wasm_bindgen_test]
async fn a_drained_worker_leaves_cleanly_and_another_finishes_the_work() {
    let Some(url) = plain_url() else { return };
    // Worker A leaves (drains) as soon as it is welcomed; worker B runs to end of work.
    let a =
        Rc::new(BrowserWorker::new(url, options(r#"{"capacity": 1, "agent": "test A"}"#)).unwrap());
    let weak: Weak<BrowserWorker> = Rc::downgrade(&a);
    let stop_when_welcomed = Closure::<dyn Fn(JsValue)>::new(move |status: JsValue| {
        if get(&status, "state").as_string().as_deref() == Some("connected") {
            if let Some(a) = weak.upgrade() {
                a.stop();
            }
        }
    });
    a.on_status(Some(
        stop_when_welcomed
            .as_ref()
            .unchecked_ref::<Function>()
            .clone(),
    ));
    let b = BrowserWorker::new(url, options(r#"{"capacity": 2, "agent": "test B"}"#)).unwrap();
    let (a_end, b_end) = join(a.run_to_end(), b.run_to_end()).await;

    let a_end: Status = a_end.expect("A leaves cleanly");
    assert_eq!(a_end.state, State::Closed);
    assert_eq!(a_end.reason.as_deref(), Some("worker left"));
    assert!(a_end.clean && a_end.outstanding == 0);
    assert_eq!(a_end.task.as_deref(), Some("capitalize"));

    let b_end = b_end.expect("B runs to the end of work");
    assert_eq!(b_end.reason.as_deref(), Some("end of work"));
    assert_eq!(b_end.jobs_failed, 0);
    assert!(b_end.worker_id.is_some() && b_end.idle_timeout_ms.is_some());
    // Every job answered once: the coordinator (--verify) checks the values themselves.
    assert_eq!(a_end.jobs_done + b_end.jobs_done, JOBS);
}

#[wasm_bindgen_test]
async fn refusals_reach_javascript_and_the_right_token_works_with_a_js_handler() {
    let Some(url) = token_url() else { return };

    // No token: the Rust face of run().
    let worker = BrowserWorker::new(url, JsValue::UNDEFINED).unwrap();
    let (seen, _keep) = record_statuses(&worker);
    let end = worker.run_to_end().await.expect_err("refused");
    assert_eq!(end.state, State::Refused);
    assert_eq!(
        end.reason.as_deref(),
        Some("bad token: an access token is required")
    );
    assert_eq!(
        seen.borrow().last().cloned(),
        Some((
            "refused".to_owned(),
            "bad token: an access token is required".to_owned()
        ))
    );

    // A wrong token, through the JavaScript API: run() rejects with an Error.
    let worker = BrowserWorker::new(url, options(r#"{"token": "not-the-token"}"#)).unwrap();
    let error = JsFuture::from(worker.run()).await.expect_err("refused");
    let message = get(&error, "message").as_string().unwrap();
    assert_eq!(message, "bad token: wrong access token");
    assert_eq!(get(&error, "refused").as_bool(), Some(true));
    assert_eq!(
        get(&get(&error, "status"), "state").as_string().as_deref(),
        Some("refused")
    );

    // The right token, and a JavaScript handler instead of the built-in task.
    let worker = BrowserWorker::new(
        url,
        options(&format!(r#"{{"token": "{}", "capacity": 3}}"#, token())),
    )
    .unwrap();
    let upper = Function::new_with_args(
        "job, info",
        "if (info.task !== 'capitalize') throw new Error('task ' + info.task); \
         return Promise.resolve(job.toUpperCase());",
    );
    worker.set_handler(Some(upper));
    let results = Rc::new(RefCell::new(Vec::new()));
    let log = results.clone();
    let on_result = Closure::<dyn Fn(JsValue, JsValue, JsValue)>::new(
        move |result: JsValue, job: JsValue, _id: JsValue| {
            log.borrow_mut()
                .push((job.as_string().unwrap(), result.as_string().unwrap()));
        },
    );
    worker.on_result(Some(on_result.as_ref().unchecked_ref::<Function>().clone()));
    let status = JsFuture::from(worker.run())
        .await
        .expect("runs to the end of work");
    assert_eq!(
        get(&status, "reason").as_string().as_deref(),
        Some("end of work")
    );
    assert_eq!(get(&status, "jobsDone").as_f64(), Some(JOBS as f64));
    assert_eq!(get(&status, "jobsFailed").as_f64(), Some(0.0));
    assert_eq!(results.borrow().len() as u64, JOBS);
    assert!(results
        .borrow()
        .iter()
        .all(|(job, result)| &job.to_uppercase() == result));
}

#[wasm_bindgen_test]
async fn an_unreachable_coordinator_is_a_clear_error() {
    // Port 9 (discard) on the loopback: nothing listens there.
    let worker =
        BrowserWorker::new("ws://127.0.0.1:9/ws", options(r#"{"reconnect": false}"#)).unwrap();
    let end = worker.run_to_end().await.expect_err("cannot connect");
    assert_eq!(end.state, State::Closed);
    let reason = end.reason.unwrap();
    assert!(
        reason.starts_with("could not connect to ws://127.0.0.1:9/ws"),
        "{reason}"
    );
    assert!(
        reason.contains(&distchan_worker_wasm::protocol_name()),
        "{reason}"
    );

    // Relative and http(s) URLs are accepted by browsers nowadays; other schemes are not.
    let worker = BrowserWorker::new("ftp://127.0.0.1/ws", JsValue::UNDEFINED).unwrap();
    let end = worker.run_to_end().await.expect_err("bad URL");
    let reason = end.reason.unwrap();
    assert!(
        reason.starts_with("cannot open a WebSocket to ftp://127.0.0.1/ws: SyntaxError"),
        "{reason}"
    );
    // A worker runs once.
    let again = worker.run_to_end().await.expect_err("second run");
    assert!(again.reason.unwrap().contains("already run"));
}

#[wasm_bindgen_test]
async fn a_lost_coordinator_is_tried_again_with_growing_delays_until_stopped() {
    let worker = Rc::new(BrowserWorker::new("ws://127.0.0.1:9/ws", JsValue::UNDEFINED).unwrap());
    // (attempt, retryInMs, reason) of every `reconnecting` status; the third stops the worker.
    let seen: Rc<RefCell<Vec<(u32, f64, String)>>> = Rc::default();
    let (log, weak) = (seen.clone(), Rc::downgrade(&worker));
    let callback = Closure::<dyn Fn(JsValue)>::new(move |status: JsValue| {
        if get(&status, "state").as_string().as_deref() != Some("reconnecting") {
            return;
        }
        let attempt = get(&status, "attempt").as_f64().unwrap() as u32;
        let wait = get(&status, "retryInMs").as_f64().unwrap();
        let reason = get(&status, "reason").as_string().unwrap();
        log.borrow_mut().push((attempt, wait, reason));
        if attempt == 3 {
            if let Some(worker) = weak.upgrade() {
                worker.stop();
            }
        }
    });
    worker.on_status(Some(callback.as_ref().unchecked_ref::<Function>().clone()));
    let end = worker
        .run_to_end()
        .await
        .expect("a stop while waiting is a clean end");
    assert_eq!(end.reason.as_deref(), Some("worker left"));
    let seen = seen.borrow();
    assert_eq!(
        seen.iter().map(|(a, ..)| *a).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for (attempt, wait, reason) in seen.iter() {
        // Full jitter under a ceiling of 250 ms doubling with each attempt.
        assert!(*wait <= 250.0 * f64::from(1 << (attempt - 1)), "{wait}");
        assert!(reason.starts_with("could not connect to"), "{reason}");
    }
}

#[wasm_bindgen_test]
async fn stop_before_the_connection_opens_ends_cleanly() {
    let worker = BrowserWorker::new("ws://127.0.0.1:9/ws", JsValue::UNDEFINED).unwrap();
    worker.stop();
    let end = worker.run_to_end().await.expect("a stop is a clean end");
    assert_eq!(end.reason.as_deref(), Some("worker left"));
    assert_eq!(end.jobs_done, 0);
}

#[wasm_bindgen_test]
async fn a_job_with_no_room_for_its_instance_waits_for_it_and_does_not_fail() {
    let Some(url) = module_url() else { return };
    // A task module runtime that, like a browser whose address space still holds the
    // memories of earlier instances, has no room for a new instance now and then: four of
    // the runs report `noRoom`; the others echo the job, as the module would.
    let runtime = Function::new_no_args(
        r#"
        const seen = { calls: 0, noRoom: 0 };
        const empty = new Uint8Array();
        return {
          seen,
          runCommand(module, stdin, maxOutput) {
            seen.calls += 1;
            if (seen.calls % 3 === 1 && seen.noRoom < 4) {
              seen.noRoom += 1;
              return { code: null, trap: "RangeError: Out of memory", noRoom: true,
                       outputTooLarge: false, stdout: empty, stderr: empty, memoryBytes: 0 };
            }
            return { code: 0, trap: null, noRoom: false, outputTooLarge: false,
                     stdout: stdin.slice(), stderr: empty, memoryBytes: 65536 };
          },
          startReactor() { throw new Error("this test's module is a command"); },
        };
        "#,
    )
    .call0(&JsValue::NULL)
    .unwrap();
    let opts = options(r#"{"capacity": 4, "agent": "no room"}"#);
    Reflect::set(&opts, &"moduleRuntime".into(), &runtime).unwrap();
    let worker = BrowserWorker::new(url, opts).unwrap();
    let end = worker.run_to_end().await.expect("runs to the end of work");
    assert_eq!(end.reason.as_deref(), Some("end of work"));
    assert_eq!(end.jobs_failed, 0, "a job without room is not a failed job");
    assert_eq!(end.jobs_done, JOBS);
    let seen = get(&runtime, "seen");
    assert_eq!(get(&seen, "noRoom").as_f64(), Some(4.0));
    assert_eq!(
        get(&seen, "calls").as_f64(),
        Some((JOBS + 4) as f64),
        "each job without room was run again, once it had room"
    );
}
