//! Tests that need WebAssembly but no browser: `wasm-pack test --node worker-wasm`.
//!
//! - the wasm build of the protocol crate produces the same frames and task results as the
//!   native build (the constants of `common`, also checked by `tests/native.rs`);
//! - MessagePack to JavaScript values and back;
//! - JavaScript handlers: values in and out, thrown errors and rejected promises become
//!   error results.
#![cfg(target_arch = "wasm32")]

mod common;

use distchan_protocol::{
    payload,
    tasks::{self, TilePixels},
    JobId,
};
use distchan_worker_wasm::{
    convert::{error_message, js_to_msgpack, msgpack_to_js},
    handler::{call_js, job_info},
    BrowserWorker, JobHandler, State,
};
use js_sys::{Function, Object, Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::wasm_bindgen_test;

fn get(value: &JsValue, key: &str) -> JsValue {
    Reflect::get(value, &key.into()).unwrap()
}

/// A JavaScript function from its parameters and body.
fn js_fn(params: &str, body: &str) -> Function {
    Function::new_with_args(params, body)
}

/// Evaluates a JavaScript expression.
fn js(expr: &str) -> JsValue {
    js_fn("", &format!("return ({expr});"))
        .call0(&JsValue::NULL)
        .unwrap()
}

#[wasm_bindgen_test]
fn frames_have_the_same_bytes_as_native() {
    common::check_frames();
}

#[wasm_bindgen_test]
fn tasks_give_the_same_results_as_native() {
    common::check_tasks();
}

#[wasm_bindgen_test]
fn task_modules_are_fed_and_judged_as_natively() {
    common::check_module_conversions();
}

#[wasm_bindgen_test]
fn a_tile_becomes_a_plain_object_with_a_uint8array() {
    let tile = common::reference_tile();
    let value = msgpack_to_js(&payload::to_msgpack(&tile).unwrap()).unwrap();
    assert_eq!(
        JsValue::from(Object::get_prototype_of(&value)),
        js("Object.prototype")
    );
    assert_eq!(get(&value, "x").as_f64(), Some(32.0));
    assert_eq!(get(&value, "max_iter").as_f64(), Some(400.0));
    assert_eq!(get(&value, "center_re").as_f64(), Some(tile.center_re));

    let px = tasks::mandelbrot(&tile);
    let value = msgpack_to_js(&payload::to_msgpack(&px).unwrap()).unwrap();
    let rgba = get(&value, "rgba").dyn_into::<Uint8Array>().unwrap();
    assert_eq!(rgba.to_vec(), px.rgba);
}

#[wasm_bindgen_test]
fn msgpack_round_trips_through_javascript_byte_for_byte() {
    #[derive(Serialize)]
    struct Nested {
        name: String,
        tags: Vec<String>,
        maybe: Option<u8>,
        flag: bool,
        ratio: f64,
        negative: i64,
        big: u64,
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
        pair: (u32, String),
    }
    let samples = [
        payload::to_msgpack("why hello there world").unwrap(),
        payload::to_msgpack(&(40i64, 2i64)).unwrap(),
        payload::to_msgpack(&common::reference_tile()).unwrap(),
        payload::to_msgpack(&tasks::mandelbrot(&common::reference_tile())).unwrap(),
        payload::to_msgpack(&Nested {
            name: "ünïcode ✓".into(),
            tags: vec!["a".into(), String::new()],
            maybe: None,
            flag: true,
            ratio: -1.5e-7,
            negative: -70_000,
            big: (1 << 53) - 1,
            blob: vec![0, 1, 254, 255],
            pair: (7, "seven".into()),
        })
        .unwrap(),
    ];
    for bytes in samples {
        let value = msgpack_to_js(&bytes).unwrap();
        assert_eq!(
            common::hex(&js_to_msgpack(&value).unwrap()),
            common::hex(&bytes),
            "{value:?}"
        );
    }
}

#[wasm_bindgen_test]
fn javascript_values_become_msgpack() {
    #[derive(Debug, PartialEq, Deserialize)]
    struct Shape {
        n: i64,
        f: f64,
        s: String,
        list: Vec<u32>,
        nothing: Option<u8>,
        gone: Option<u8>,
        map: std::collections::BTreeMap<String, bool>,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        big: i64,
    }
    let value = js(
        "{n: -3, f: 0.25, s: 'ok', list: [1, 2, 3], nothing: null, gone: undefined, \
         map: new Map([['yes', true]]), bytes: new Uint8Array([9, 8]), big: 12345678901234n}",
    );
    let bytes = js_to_msgpack(&value).unwrap();
    let back: Shape = payload::from_msgpack(&bytes).unwrap();
    assert_eq!(
        back,
        Shape {
            n: -3,
            f: 0.25,
            s: "ok".into(),
            list: vec![1, 2, 3],
            nothing: None,
            gone: None,
            map: [("yes".to_owned(), true)].into(),
            bytes: vec![9, 8],
            big: 12_345_678_901_234,
        }
    );
    let err = js_to_msgpack(&js("{f: () => 1}")).unwrap_err();
    assert!(err.contains("cannot be sent"), "{err}");
    // Beyond 2^53 a MessagePack integer has no JavaScript number.
    let err = msgpack_to_js(&payload::to_msgpack(&u64::MAX).unwrap()).unwrap_err();
    assert!(err.contains("cannot be given to JavaScript"), "{err}");
}

#[wasm_bindgen_test]
async fn a_javascript_handler_sees_the_job_and_its_result_is_sent() {
    let f = js_fn(
        "job, info",
        "return { x: job.x, y: job.y, width: job.width, height: job.height, \
                  rgba: new Uint8Array(job.width * job.height * 4).fill(info.id) };",
    );
    let tile = common::reference_tile();
    let info = job_info(JobId(7), Some(tasks::MANDELBROT));
    assert_eq!(
        get(&info, "task").as_string().as_deref(),
        Some("mandelbrot")
    );
    let out = call_js(&f, &payload::to_msgpack(&tile).unwrap(), &info)
        .await
        .unwrap();
    // What the coordinator decodes: the same type the built-in task returns.
    let px: TilePixels = payload::from_msgpack(&out).unwrap();
    assert_eq!((px.x, px.y, px.width, px.height), (32, 32, 32, 32));
    assert!(px.rgba.len() == 32 * 32 * 4 && px.rgba.iter().all(|&b| b == 7));
}

#[wasm_bindgen_test]
async fn async_handlers_are_awaited() {
    let f = js_fn("job", "return Promise.resolve(job.toUpperCase());");
    let out = call_js(&f, &payload::to_msgpack("abc").unwrap(), &JsValue::NULL)
        .await
        .unwrap();
    assert_eq!(payload::from_msgpack::<String>(&out).unwrap(), "ABC");
    let f = js_fn(
        "job",
        "return new Promise((ok) => setTimeout(() => ok(job + 1), 5));",
    );
    let out = call_js(&f, &payload::to_msgpack(&41).unwrap(), &JsValue::NULL)
        .await
        .unwrap();
    assert_eq!(payload::from_msgpack::<i64>(&out).unwrap(), 42);
    let f = js_fn("job", "return undefined;");
    let out = call_js(&f, &payload::to_msgpack("x").unwrap(), &JsValue::NULL)
        .await
        .unwrap();
    assert_eq!(payload::from_msgpack::<Option<u8>>(&out).unwrap(), None);
}

#[wasm_bindgen_test]
async fn a_throw_or_a_rejection_is_an_error_result() {
    let payload = payload::to_msgpack("x").unwrap();
    let thrown = js_fn("job", "throw new Error('boom: ' + job);");
    assert_eq!(
        call_js(&thrown, &payload, &JsValue::NULL)
            .await
            .unwrap_err(),
        "boom: x"
    );
    let typed = js_fn("job", "return job.no.such.field;");
    let err = call_js(&typed, &payload, &JsValue::NULL).await.unwrap_err();
    assert!(err.starts_with("TypeError: "), "{err}");
    let rejected = js_fn("job", "return Promise.reject(new RangeError('too far'));");
    assert_eq!(
        call_js(&rejected, &payload, &JsValue::NULL)
            .await
            .unwrap_err(),
        "RangeError: too far"
    );
    let string = js_fn("job", "throw 'plain string';");
    assert_eq!(
        call_js(&string, &payload, &JsValue::NULL)
            .await
            .unwrap_err(),
        "plain string"
    );
    let object = js_fn("job", "return Promise.reject({code: 7});");
    assert_eq!(
        call_js(&object, &payload, &JsValue::NULL)
            .await
            .unwrap_err(),
        r#"{"code":7}"#
    );
    let unsendable = js_fn("job", "return Symbol('no');");
    let err = call_js(&unsendable, &payload, &JsValue::NULL)
        .await
        .unwrap_err();
    assert!(err.contains("cannot be sent"), "{err}");
    assert_eq!(error_message(&JsValue::from_f64(3.0)), "3");
}

#[wasm_bindgen_test]
async fn handlers_are_chosen_like_the_native_worker_does() {
    let builtin = JobHandler::choose(None, Some(tasks::CAPITALIZE)).unwrap();
    let plain = payload::to_msgpack("why hello").unwrap();
    assert_eq!(
        builtin.handle(JobId(1), &plain).await,
        tasks::run(tasks::CAPITALIZE, &plain)
    );
    assert!(JobHandler::choose(None, Some("unheard-of"))
        .unwrap_err()
        .contains("does not know the task `unheard-of`"));
    assert!(JobHandler::choose(None, None)
        .unwrap_err()
        .contains("names no built-in task"));
    // A page's function wins over the built-in task and is told the task's name.
    let f = js_fn("job, info", "return info.task + ':' + info.id + ':' + job;");
    let js_handler = JobHandler::choose(Some(f), Some(tasks::CAPITALIZE)).unwrap();
    let out = js_handler.handle(JobId(9), &plain).await.unwrap();
    assert_eq!(
        payload::from_msgpack::<String>(&out).unwrap(),
        "capitalize:9:why hello"
    );
    let err = js_handler.handle(JobId(9), &[0xc1]).await.unwrap_err();
    assert!(err.contains("cannot be given to JavaScript"), "{err}");
    // A job the built-in task cannot read is an error result, not a dead worker.
    assert!(builtin
        .handle(JobId(2), &payload::to_msgpack(&[1, 2]).unwrap())
        .await
        .is_err());
}

#[wasm_bindgen_test]
fn options_are_checked_when_the_worker_is_made() {
    let worker = BrowserWorker::new("ws://127.0.0.1:1/ws", JsValue::UNDEFINED).unwrap();
    let status = worker.status();
    assert_eq!(status.state, State::Idle);
    assert_eq!(status.capacity, 2);
    let js_status = worker.status_js();
    assert_eq!(
        get(&js_status, "state").as_string().as_deref(),
        Some("idle")
    );
    assert!(get(&js_status, "reason").is_null());
    assert_eq!(get(&js_status, "jobsDone").as_f64(), Some(0.0));

    let worker = BrowserWorker::new("ws://h/ws", js("{capacity: 5, token: 'x'}")).unwrap();
    assert_eq!(worker.status().capacity, 5);
    assert!(BrowserWorker::new("ws://h/ws", js("{capacity: 0}")).is_err());
    assert!(BrowserWorker::new("ws://h/ws", js("{capacity: 'many'}")).is_err());
    assert!(BrowserWorker::new("ws://h/ws", js("{aesKey: 'abc'}")).is_err());
    assert!(BrowserWorker::new(
        "ws://h/ws",
        js(&format!("{{aesKey: '{}'}}", "ab".repeat(32)))
    )
    .is_ok());
}
