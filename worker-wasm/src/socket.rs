//! The browser's WebSocket, as a value that owns its event handlers.
//!
//! [`Socket`] opens a `web_sys::WebSocket` with binary frames delivered as `ArrayBuffer`s and
//! turns its four callbacks into [`SocketEvent`]s handed to one sink function. The closures
//! live inside the [`Socket`]; dropping it detaches them from the WebSocket first and then
//! frees them, so a page that runs for hours leaks nothing (no `Closure::forget`).
//!
//! Browsers only let a page send the close codes 1000 and 3000–4999, so the protocol's
//! codes for errors (1001, 1002, 1008, 1009) are sent as 4001, 4002, 4008 and 4009: see
//! [`browser_close_code`].

use distchan_protocol::{session::truncate_reason, wire::CLOSE_NORMAL};
use js_sys::{ArrayBuffer, Uint8Array};
use wasm_bindgen::{closure::Closure, JsCast, JsValue};
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

/// Something the WebSocket reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent {
    /// The connection is open (the subprotocol was agreed).
    Open,
    /// A binary message.
    Binary(Vec<u8>),
    /// A text message (not part of the protocol).
    Text,
    /// The browser reported an error; a [`SocketEvent::Closed`] always follows.
    Error,
    /// The connection is closed.
    Closed {
        /// The close code (1006 when the connection failed or dropped without a close frame).
        code: u16,
        /// The peer's close reason (empty when it gave none).
        reason: String,
        /// True when the closing handshake completed.
        clean: bool,
    },
}

/// An open (or opening) WebSocket together with the closures that handle its events.
pub struct Socket {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_error: Closure<dyn FnMut(Event)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Socket {
    /// Starts connecting to `url`, offering the WebSocket subprotocol `subprotocol`; every
    /// event goes to `sink`.
    ///
    /// Fails at once for a URL the browser rejects (not `ws:`/`wss:`, malformed); a
    /// coordinator that cannot be reached shows up later as [`SocketEvent::Closed`].
    pub fn open(
        url: &str,
        subprotocol: &str,
        sink: impl Fn(SocketEvent) + 'static,
    ) -> Result<Socket, String> {
        let ws = WebSocket::new_with_str(url, subprotocol)
            .map_err(|e| format!("cannot open a WebSocket to {url}: {}", js_error(&e)))?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let sink = std::rc::Rc::new(sink);

        let s = sink.clone();
        let on_open = Closure::<dyn FnMut(Event)>::new(move |_: Event| s(SocketEvent::Open));
        let s = sink.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let data = e.data();
            if let Some(buf) = data.dyn_ref::<ArrayBuffer>() {
                s(SocketEvent::Binary(Uint8Array::new(buf).to_vec()));
            } else {
                s(SocketEvent::Text);
            }
        });
        let s = sink.clone();
        let on_error = Closure::<dyn FnMut(Event)>::new(move |_: Event| s(SocketEvent::Error));
        let s = sink;
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            s(SocketEvent::Closed {
                code: e.code(),
                reason: e.reason(),
                clean: e.was_clean(),
            })
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Socket {
            ws,
            _on_open: on_open,
            _on_message: on_message,
            _on_error: on_error,
            _on_close: on_close,
        })
    }

    /// Sends one binary message.
    pub fn send(&self, frame: &[u8]) -> Result<(), String> {
        self.ws
            .send_with_u8_array(frame)
            .map_err(|e| format!("could not send: {}", js_error(&e)))
    }

    /// The subprotocol the coordinator agreed to (empty before the connection is open).
    pub fn protocol(&self) -> String {
        self.ws.protocol()
    }

    /// Starts the closing handshake with a protocol close code (mapped with
    /// [`browser_close_code`]) and a reason cut to what a close frame can carry.
    /// Closing an already closing socket does nothing.
    pub fn close(&self, code: u16, reason: &str) {
        let state = self.ws.ready_state();
        if state == WebSocket::CLOSING || state == WebSocket::CLOSED {
            return;
        }
        let reason = truncate_reason(reason);
        if self
            .ws
            .close_with_code_and_reason(browser_close_code(code), &reason)
            .is_err()
        {
            let _ = self.ws.close();
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // Detach the handlers before their closures are freed, then let the socket go.
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onerror(None);
        self.ws.set_onclose(None);
        self.close(CLOSE_NORMAL, "worker stopped");
    }
}

/// The close code a browser may send for a protocol close code.
///
/// `close()` accepts only 1000 and 3000–4999; the protocol's error codes 1001–1015 are
/// sent in the private range as `4000 + (code - 1000)`, so 1008 (policy) becomes 4008 and
/// the last digits still say what happened.
pub fn browser_close_code(code: u16) -> u16 {
    match code {
        1000 | 3000..=4999 => code,
        1001..=1999 => 4000 + (code - 1000),
        _ => 4000,
    }
}

/// A readable message for a JavaScript exception thrown by a WebSocket method.
fn js_error(e: &JsValue) -> String {
    crate::convert::error_message(e)
}
