//! Jobs and results as JSON text, for the modes whose jobs arrive as JSON (pipe and serve):
//! the text is transcoded straight into a job's MessagePack and out of a result's, with no
//! JSON tree built in between.

use distchan_coordinator::Error;
use distchan_protocol::tasks;
use serde::{Deserialize, Serialize};

use crate::ServerArgs;

/// A job: one input line's JSON text, streamed into the job's MessagePack as it is encoded
/// (no JSON tree is built).
pub struct JsonText(pub String);

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut de = serde_json::Deserializer::from_str(&self.0);
        serde_transcode::Transcoder::new(&mut de).serialize(serializer)
    }
}

/// A result: its MessagePack streamed into JSON text as it is decoded.
pub struct ResultJson(pub String);

impl<'de> Deserialize<'de> for ResultJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut out = Vec::with_capacity(64);
        serde_transcode::transcode(deserializer, &mut serde_json::Serializer::new(&mut out))
            .map_err(serde::de::Error::custom)?;
        // serde_json writes valid UTF-8.
        Ok(ResultJson(
            String::from_utf8(out).map_err(serde::de::Error::custom)?,
        ))
    }
}

/// The built-in task named, or "" when a task module runs.
pub fn task_of<'a>(server: &ServerArgs, task: Option<&'a str>) -> Result<&'a str, Error> {
    match (task, &server.module) {
        (Some(task), None) => Ok(task),
        (None, Some(_)) => Ok(""),
        (Some(_), Some(_)) => Err(Error::config(
            "--task and --module are exclusive: a run uses a built-in task or a task module",
        )),
        (None, None) => Err(Error::config(format!(
            "name what the workers run: --task ({}) or --module FILE.wasm",
            tasks::ALL.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_of_lines_are_json_text_both_ways() {
        let job = rmp_serde::to_vec_named(&JsonText(r#"{"a": [1, "é", null]}"#.into())).unwrap();
        let back: serde_json::Value = rmp_serde::from_slice(&job).unwrap();
        assert_eq!(back, serde_json::json!({"a": [1, "é", null]}));
        let result: ResultJson = rmp_serde::from_slice(&job).unwrap();
        assert_eq!(result.0, r#"{"a":[1,"é",null]}"#);
    }
}
