//! Who answers a job: a built-in task compiled into the module, the coordinator's task
//! module, or a JavaScript function given by the page.
//!
//! Either way the outcome is a [`wire::Outcome`](distchan_protocol::wire::Outcome): plain
//! MessagePack bytes, or an error message that the coordinator reports as that job's
//! failure. Nothing a handler does (a thrown exception, a rejected promise, a result
//! MessagePack cannot carry) ends the connection.

use std::rc::Rc;

use bytes::Bytes;
use distchan_protocol::{tasks, wire::Outcome, JobId};
use gloo_timers::future::TimeoutFuture;
use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;

use crate::{
    convert::{error_message, js_to_msgpack, msgpack_to_js},
    module::{LoadedModule, NoRoom, RoomWaits},
};

/// How the jobs of one connection are answered.
#[derive(Debug, Clone)]
pub enum JobHandler {
    /// A built-in task of [`distchan_protocol::tasks`], by the name the coordinator's welcome
    /// gave; it runs exactly the code the native worker runs.
    Builtin(Rc<str>),
    /// The task module the coordinator named, compiled for this thread.
    Module(Rc<LoadedModule>),
    /// A JavaScript function called as `handler(job, {id, task})`; it returns the result or
    /// a promise of it.
    Js {
        /// The page's function.
        function: Function,
        /// The task named in the welcome, passed on to the function.
        task: Option<Rc<str>>,
    },
}

impl JobHandler {
    /// Picks the handler for a connection: the page's function if it gave one, otherwise
    /// the built-in task named by the coordinator.
    ///
    /// Fails, with a message fit to show the volunteer, when there is no function and the
    /// coordinator names no task this module knows.
    pub fn choose(js: Option<Function>, task: Option<&str>) -> Result<JobHandler, String> {
        match (js, task) {
            (Some(function), task) => Ok(JobHandler::Js {
                function,
                task: task.map(Rc::from),
            }),
            (None, Some(task)) if tasks::ALL.contains(&task) => {
                Ok(JobHandler::Builtin(task.into()))
            }
            (None, Some(task)) => Err(format!(
                "this worker does not know the task `{task}` and the page gave no handler"
            )),
            (None, None) => Err(
                "the coordinator names no built-in task and the page gave no handler".to_owned(),
            ),
        }
    }

    /// True when every job creates an instance of its own (a command-ABI task module).
    pub fn instance_per_job(&self) -> bool {
        matches!(self, JobHandler::Module(m) if m.abi() == distchan_protocol::module::Abi::Command)
    }

    /// Answers one job at once when this handler does not wait (a built-in task, a task
    /// module); `None` for a page's function, which [`JobHandler::handle`] awaits.
    /// [`NoRoom`] when a task module's job could not have its instance just now: the caller
    /// tries it again later (see [`RoomWaits`]).
    pub fn handle_now(&self, payload: &[u8]) -> Option<Result<Outcome, NoRoom>> {
        match self {
            JobHandler::Builtin(task) => Some(Ok(tasks::run(task, payload))),
            JobHandler::Module(module) => Some(module.run(payload)),
            JobHandler::Js { .. } => None,
        }
    }

    /// Answers one job whose plain MessagePack payload is `payload` (a task module's job
    /// that has no room for its instance waits for it, see [`RoomWaits`]).
    pub async fn handle(&self, id: JobId, payload: &[u8]) -> Outcome {
        match self {
            JobHandler::Builtin(task) => tasks::run(task, payload),
            JobHandler::Module(module) => {
                let mut waits = RoomWaits::default();
                loop {
                    match module.run(payload) {
                        Ok(outcome) => break outcome,
                        Err(NoRoom) => match waits.next_wait() {
                            Some(ms) => TimeoutFuture::new(ms).await,
                            None => break Err(RoomWaits::gave_up()),
                        },
                    }
                }
            }
            JobHandler::Js { function, task } => {
                call_js(function, payload, &job_info(id, task.as_deref())).await
            }
        }
    }
}

/// The second argument given to a JavaScript handler: `{id, task}`.
pub fn job_info(id: JobId, task: Option<&str>) -> JsValue {
    let info = Object::new();
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(&info, &"id".into(), &JsValue::from_f64(id.0 as f64));
    let _ = Reflect::set(
        &info,
        &"task".into(),
        &task.map_or(JsValue::NULL, JsValue::from_str),
    );
    info.into()
}

/// Calls `function(job, info)` with the job converted to a JavaScript value, waits for the
/// promise if it returns one, and converts the result back to MessagePack.
///
/// A thrown exception, a rejected promise or an unconvertible result becomes `Err` with a
/// readable message.
pub async fn call_js(function: &Function, payload: &[u8], info: &JsValue) -> Outcome {
    let job = msgpack_to_js(payload)?;
    let returned = function
        .call2(&JsValue::NULL, &job, info)
        .map_err(|thrown| error_message(&thrown))?;
    let value = if is_thenable(&returned) {
        JsFuture::from(Promise::resolve(&returned))
            .await
            .map_err(|rejected| error_message(&rejected))?
    } else {
        returned
    };
    js_to_msgpack(&value)
}

/// Converts a successful result back into a JavaScript value for the page's `onResult`
/// callback (for example to draw a Mandelbrot tile).
pub fn result_to_js(result: &Bytes) -> Result<JsValue, String> {
    msgpack_to_js(result)
}

fn is_thenable(value: &JsValue) -> bool {
    value.is_object() && Reflect::get(value, &"then".into()).is_ok_and(|then| then.is_function())
}
