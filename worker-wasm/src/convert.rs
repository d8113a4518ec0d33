//! MessagePack bytes to plain JavaScript values and back, for jobs and results handled by a
//! JavaScript function.
//!
//! Both directions stream one value into the other with `serde-transcode`, with
//! `serde-wasm-bindgen` on the JavaScript side and `rmp-serde` on the MessagePack side, so no
//! intermediate tree is built. The mapping:
//!
//! | MessagePack                  | JavaScript                                            |
//! |------------------------------|-------------------------------------------------------|
//! | nil                          | `null` (`undefined` also becomes nil)                 |
//! | bool, string                 | boolean, string                                       |
//! | integer within ±2^53         | number (a JS number that is a safe integer becomes an integer) |
//! | integer beyond ±2^53         | error (a JS `BigInt` becomes an integer)              |
//! | float                        | number                                                |
//! | bin                          | `Uint8Array` (an `ArrayBuffer` also becomes bin)      |
//! | array                        | `Array`                                               |
//! | map with string keys         | plain object (a JS `Map` also becomes a map)          |
//! | map with other keys          | error                                                 |
//!
//! Rust structs travel as maps with field names (the protocol crate's
//! [`payload::to_msgpack`](distchan_protocol::payload::to_msgpack) writes them so), hence
//! plain objects on the JavaScript side.

use bytes::Bytes;
use wasm_bindgen::{JsCast, JsValue};

/// The serializer settings used for every MessagePack to JavaScript conversion: `null` for
/// nil, plain objects for maps, `Uint8Array` for binary data.
fn js_serializer() -> serde_wasm_bindgen::Serializer {
    serde_wasm_bindgen::Serializer::new()
        .serialize_missing_as_null(true)
        .serialize_maps_as_objects(true)
}

/// Converts one MessagePack value (a job's plain payload) into a JavaScript value.
///
/// Fails with a message fit for an error result when the value has no JavaScript form
/// (see the [module docs](self)) or the bytes are not MessagePack.
pub fn msgpack_to_js(bytes: &[u8]) -> Result<JsValue, String> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    serde_transcode::transcode(&mut de, &js_serializer())
        .map_err(|e| format!("the job cannot be given to JavaScript: {e}"))
}

/// Converts a JavaScript value (a handler's result) into one MessagePack value.
///
/// Fails with a message fit for an error result for values MessagePack cannot carry
/// (functions, symbols, typed arrays other than `Uint8Array`).
pub fn js_to_msgpack(value: &JsValue) -> Result<Bytes, String> {
    let de = serde_wasm_bindgen::Deserializer::from(value.clone());
    let mut out = Vec::new();
    let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
    serde_transcode::transcode(de, &mut ser)
        .map_err(|e| format!("the handler's result cannot be sent: {e}"))?;
    Ok(out.into())
}

/// Turns anything a JavaScript handler may throw (an `Error`, a string, any value) into a
/// readable message.
pub fn error_message(thrown: &JsValue) -> String {
    if let Some(error) = thrown.dyn_ref::<js_sys::Error>() {
        let name = String::from(error.name());
        let message = String::from(error.message());
        return if name.is_empty() || name == "Error" {
            message
        } else {
            format!("{name}: {message}")
        };
    }
    if let Some(text) = thrown.as_string() {
        return text;
    }
    // Any other value: let JavaScript's String() describe it.
    match js_sys::JSON::stringify(thrown) {
        Ok(json) if json.is_string() => String::from(json),
        _ => format!("{thrown:?}"),
    }
}
